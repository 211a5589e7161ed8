#!/usr/bin/env python
"""Issue 18: STEGO's CPU training step on CamVid photos at 352 x 480, before and after, as ratios measured interleaved.

The setting of the issue: a frozen ImageNet EfficientNet-Lite0 (stride 16, the offline weights from pip), STEGO's
configuration for CamVid (`default_config('camvid', backbone)`, batch 16), real CamVid photos (the val split) resized
to 352 x 480, their labels at that size. Four variants of the same step (`Learner.train_step` on the same batch):

  * the linear-probe diagnostic scored as STEGO does (`linear_probe_labels='upsample'`: logits upsampled to the
    labels) or on the patch grid (`'nearest'`, usseg's default);
  * the backbone run on the images and their neighbours every step, or its outputs read from the store computed once
    (`cache_outputs`, what `train(cache_features='auto')` does for STEGO).

'before' is (upsample, computed), what the issue measured; 'after' is (nearest, cached), what `train()` does now. The
variants run in turn, in a rotated order, round after round in one process, so that the load of a shared machine falls
on all of them alike; the ratios are taken per round (paired) and summarised by their median and range.

    python benchmarks/stego_step_camvid.py                        # writes benchmarks/results/stego_step_camvid_cpu.json
    python benchmarks/stego_step_camvid.py --rounds 2 --batch-size 4 --out /tmp/x.json
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import default_collate

import usseg  # noqa: F401  (compat shim before timm)
from usseg.core import set_threads
from usseg.data import shared_data
from usseg.learner import Learner, TrainConfig
from usseg.methods import RunSpec, get_method

sys.path.insert(0, str(Path(__file__).parent))
from _common import cpu_model, machine, write  # noqa: E402

VARIANTS = [('upsample', False), ('nearest', False), ('upsample', True), ('nearest', True)]
name = lambda v: f"{v[0]}, {'cached' if v[1] else 'computed'}"


def build(spec, bb, ds, how, cached, batch_size, store_dir, work):
    "A STEGO task with the probe scored `how`, its learner, and a training batch (with cached outputs when `cached`)."
    M = get_method('stego')
    cfg = M.default_config('camvid', bb).override({'linear_probe_labels': how, 'batch_size': batch_size})
    torch.manual_seed(0)
    task = M.build(bb, ds.n_classes, cfg)
    sd = {**spec.__dict__, 'train': {'device': 'cpu', 'progress': 'none', 'batch_size': batch_size}}
    items = task.training_data(ds, sd)
    if cached: items = task.cache_outputs(items, ds, True, store_dir, batch_size=batch_size, device='cpu')
    tcfg = TrainConfig(max_steps=10**6, batch_size=batch_size, device='cpu', progress='none', n_samples=0)
    learner = Learner(task, items, work/f'{how}-{cached}', tcfg).setup()
    batch = default_collate([items[i] for i in range(batch_size)])
    return learner, batch


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data-root', default=None, help='a CamVid copy (default: the shared one)')
    p.add_argument('--split', default='val')
    p.add_argument('--backbone', default='efficientnet_lite0')
    p.add_argument('--weights', default='pretrained')
    p.add_argument('--size', type=int, nargs=2, default=[352, 480], metavar=('H', 'W'))
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--out', default='stego_step_camvid_cpu')
    a = p.parse_args(argv)
    root = a.data_root or shared_data('camvid_segnet')
    if root is None: raise SystemExit('no CamVid copy: pass --data-root')
    set_threads(a.threads)
    spec = RunSpec('stego', 'camvid', str(root), backbone=a.backbone, weights=a.weights, image_size=tuple(a.size), train_split=a.split)
    bb = spec.build_backbone()
    ds = spec.split_dataset(a.split, train=True)
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        t0 = time.perf_counter()
        runs = {v: build(spec, bb, ds, *v, a.batch_size, work/'store', work) for v in VARIANTS}
        setup_s = time.perf_counter() - t0
        for v, (learner, batch) in runs.items(): learner.train_step(batch)          # warm-up, each once
        times = {v: [] for v in VARIANTS}
        loads = [os.getloadavg()[0]]
        for r in range(a.rounds):
            order = VARIANTS[r % 4:] + VARIANTS[:r % 4]
            for v in order:
                learner, batch = runs[v]
                t = time.perf_counter(); learner.train_step(batch); times[v].append(time.perf_counter() - t)
            loads.append(os.getloadavg()[0])
            print(f'round {r}: ' + ', '.join(f'{name(v)} {times[v][-1]:.2f} s' for v in VARIANTS) + f' (load {loads[-1]:.2f})', flush=True)
        cache_info = runs[('nearest', True)][0].task.cache_info
    def ratio(num, den):
        rs = [x/y for x, y in zip(times[num], times[den])]
        return {'median': round(statistics.median(rs), 2), 'min': round(min(rs), 2), 'max': round(max(rs), 2)}
    res = {
        'what': 'STEGO training step on CPU at 352x480 (issue 18): linear-probe diagnostic upsample vs nearest, backbone computed vs cached',
        'setting': {'dataset': f'CamVid {a.split} ({len(ds)} photos, resized to {a.size[0]}x{a.size[1]}, labels at that size)',
                    'backbone': f'{bb.name} ({bb.weights}), stride {bb.patch_size}, {bb.embed_dim} channels, frozen',
                    'config': "StegoMethod.default_config('camvid', backbone)", 'batch_size': a.batch_size, 'threads': a.threads,
                    'rounds': a.rounds, 'order': 'the four variants in turn, order rotated every round, after one warm-up step each',
                    'cache': cache_info},
        'sec_per_step': {name(v): {'median': round(statistics.median(ts), 3), 'min': round(min(ts), 3), 'all': [round(t, 3) for t in ts]}
                         for v, ts in times.items()},
        'ratios_paired_per_round': {
            'probe: upsample / nearest (backbone computed)': ratio(('upsample', False), ('nearest', False)),
            'probe: upsample / nearest (backbone cached)': ratio(('upsample', True), ('nearest', True)),
            'backbone: computed / cached (probe nearest)': ratio(('nearest', False), ('nearest', True)),
            'backbone: computed / cached (probe upsample)': ratio(('upsample', False), ('upsample', True)),
            'before / after: (upsample, computed) / (nearest, cached)': ratio(('upsample', False), ('nearest', True))},
        'load_average_1min_per_round': [round(x, 2) for x in loads], 'setup_seconds': round(setup_s, 1),
        'cpu': cpu_model(), 'machine': machine()}
    for k, v in res['ratios_paired_per_round'].items(): print(f'{k}: {v["median"]}x ({v["min"]}-{v["max"]})')
    write(a.out, res)


if __name__ == '__main__':
    main()
