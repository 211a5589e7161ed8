#!/usr/bin/env python
"""Training-step throughput of SmooSeg and EAGLE at the papers' batch and resolution, on the CPU, with a random ViT.

    python benchmarks/smooseg_eagle_step_cpu.py [--method smooseg eagle] [--batch 32] [--size 224] [--repeats 2] [--threads 2]

One full optimisation step of the real task (`usseg.methods.smooseg.SmooSegMethod` with `SmooSegConfig.cityscapes27()`,
`usseg.methods.eagle.EagleMethod` with `EagleConfig.cocostuff27()`): the frozen backbone, the method's forward,
backward, every optimiser step and `after_step`, on a batch of synthetic 224 px scenes (EAGLE: with their blurred
views), with a randomly initialised DINO ViT-S/8 (`dino_vits8`, the papers' backbone for these settings; random
weights give the same cost). The backbone's forward pass alone is timed too (EAGLE runs it twice per step: the
image and its blurred view). Reported: the wall and process-CPU seconds per step (after one warm-up step) and
images per second. Writes benchmarks/results/smooseg_eagle_step_cpu.json. These CPUs are shared: the load average
is recorded with the numbers.
"""
import argparse
import os
import time

import torch

import usseg  # noqa: F401  (the compat shim first)
from _common import machine, write
from usseg.backbones import load_backbone
from usseg.data.synthetic import SyntheticScenes
from usseg.methods import get_method

CONFIGS = {'smooseg': 'cityscapes27', 'eagle': 'cocostuff27'}


def timed(fn, repeats:int):
    "Wall and process-CPU seconds of `repeats` calls after one warm-up call."
    fn()
    ws, cs = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time(); fn()
        ws.append(time.perf_counter() - t); cs.append(time.process_time() - c)
    return ws, cs


def bench(method:str, batch:int, size:int, repeats:int) -> dict:
    M = get_method(method)
    cfg = getattr(M.Config, CONFIGS[method])()
    bb = load_backbone('dino_vits8', weights='random', seed=0)
    task = M.build(bb, cfg.n_classes, cfg).train()
    data = task.training_data(SyntheticScenes('train', n_images=batch, size=size, n_classes=8, seed=0), {})
    items = [data[i] for i in range(batch)]
    b = {k: torch.stack([it[k] for it in items]) for k in items[0] if torch.is_tensor(items[0][k]) and items[0][k].ndim > 0}
    opts = task.configure_optimizers()
    step = [cfg.max_steps // 2]   # past EAGLE's step schedule: every term of the loss is on

    def one_step():
        for o in opts.values(): o.zero_grad(set_to_none=True)
        out = task.training_step(b, step[0])
        out['loss'].backward()
        for o in opts.values(): o.step()
        task.after_step(step[0])

    load0 = os.getloadavg()
    ws, cs = timed(one_step, repeats)
    fwd = (lambda: task.keys(b['img'])) if method == 'eagle' else (lambda: task.features(b['img']))
    fws, _ = timed(fwd, repeats)
    n_fwd = 2 if method == 'eagle' else 1
    w = min(ws)
    return {'method': method, 'config': f'{M.Config.__name__}.{CONFIGS[method]}()', 'backbone': 'dino_vits8 (random weights)',
            'batch': batch, 'image_size': size, 'grid': size // 8, 'code_dim': cfg.dim,
            'step_wall_s': [round(x, 2) for x in ws], 'step_cpu_s': [round(x, 2) for x in cs],
            'min_step_wall_s': round(w, 2), 'images_per_s': round(batch / w, 2),
            'backbone_forward_wall_s': round(min(fws), 2), 'backbone_forwards_per_step': n_fwd,
            'rest_of_step_wall_s': round(w - n_fwd * min(fws), 2), 'loadavg_before': [round(x, 2) for x in load0],
            'loadavg_after': [round(x, 2) for x in os.getloadavg()]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--method', nargs='+', default=['smooseg', 'eagle'], choices=list(CONFIGS))
    ap.add_argument('--batch', type=int, default=32, help='SmooSeg and EAGLE train with batch 32')
    ap.add_argument('--size', type=int, default=224)
    ap.add_argument('--repeats', type=int, default=2)
    ap.add_argument('--threads', type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    res = {'benchmark': 'smooseg_eagle_train_step_cpu', 'results': [bench(m, a.batch, a.size, a.repeats) for m in a.method],
           'note': 'one warm-up step, then the min over repeats; wall time on a shared CPU (see the load averages)', 'machine': machine()}
    for r in res['results']: print(r)
    write('smooseg_eagle_step_cpu', res)


if __name__ == '__main__': main()
