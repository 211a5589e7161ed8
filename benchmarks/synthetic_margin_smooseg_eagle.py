#!/usr/bin/env python
"""SmooSeg and EAGLE against k-means on the same frozen random backbone, on synthetic scenes, over seeds.

    python benchmarks/synthetic_margin_smooseg_eagle.py --method smooseg [--seeds 0 1 2] [--crf] [--steps N]
    python benchmarks/synthetic_margin_smooseg_eagle.py --method eagle   [--seeds 0 1 2] [--crf]

For each seed s: synthetic scenes drawn with seed s (train and val splits, `SmooSegConfig.synthetic()` /
`EagleConfig.synthetic()` sizes), a randomly initialised `vit_tiny8` seeded with s, and
  - the baseline: k-means (K = classes, cosine) on the backbone's frozen last-block tokens, fitted on the
    train split and scored on the val split (`usseg.evaluate.baseline`); for EAGLE also k-means on the
    method's own input (the keys of the last blocks, concatenated);
  - the method: `usseg.methods.train(METHOD, 'synthetic', ...)` with the synthetic configuration and seed s
    (the same backbone: same name, same seed), then `Run.evaluate` on the val split.
Both are scored with the usseg protocol (Hungarian matching over the split; for EAGLE the upstream
drop-extra numbers are recorded too). The margin is the method's cluster mIoU (and accuracy) minus the
k-means baseline's. The hyperparameters of the synthetic configurations were chosen on seed 100 (scenes
and backbone), never on the reported seeds. Writes benchmarks/results/synthetic_margin_<method>.json.
"""
import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

import usseg  # noqa: F401  (the compat shim first)
from _common import machine, write
from usseg.backbones import load_backbone
from usseg.data import get_dataset
from usseg.data.transforms import EvalTransform
from usseg.evaluate import baseline
from usseg.methods import get_method, train


def _scores(res) -> dict:
    c = res.cluster
    out = {'acc': round(c['acc'], 2), 'miou': round(c['miou'], 2)}
    if res.settings.get('extra_clusters', 0) > 0:
        out.update(acc_upstream_drop=round(c['acc_upstream_drop'], 2), miou_upstream_drop=round(c['miou_upstream_drop'], 2))
    if res.linear is not None: out.update(linear_acc=round(res.linear['acc'], 2), linear_miou=round(res.linear['miou'], 2))
    return out


def one_seed(method:str, seed:int, work:Path, cfg, steps:int, crf:bool) -> dict:
    kw = dict(n_images=cfg_images(cfg), n_classes=cfg.n_classes, seed=seed)
    size, root = cfg.image_size, work/'data'
    ds = lambda split: get_dataset('synthetic', root, split, transform=EvalTransform(size), size=size, **kw)
    fit, val = ds('train'), ds('val')
    bb = load_backbone(cfg.backbone, weights='random', seed=seed)
    out = {'seed': seed}
    t = time.time()
    out['kmeans'] = _scores(baseline(bb, fit, val, seed=seed, device='cpu'))
    if crf: out['kmeans_crf'] = _scores(baseline(bb, fit, val, seed=seed, device='cpu', crf='pydensecrf'))
    if method == 'eagle':
        n = cfg.n_blocks
        keys = lambda img: torch.cat(bb.features(img, n, ('keys',))['keys'], 1)
        out['kmeans_keys'] = _scores(baseline(keys, fit, val, seed=seed, device='cpu'))
    out['kmeans_seconds'] = round(time.time() - t, 1)
    t = time.time()
    run = train(method, 'synthetic', root, work/f'run_{seed}', backbone=cfg.backbone, weights='random', steps=steps, device='cpu',
                seed=seed, smoke=False, progress='none', save_every=0, dataset_kw=kw)
    out['train_seconds'] = round(time.time() - t, 1)
    t = time.time()
    out['method'] = _scores(run.evaluate())
    if crf: out['method_crf'] = _scores(run.evaluate(crf=True))
    out['eval_seconds'] = round(time.time() - t, 1)
    out['margin'] = {k: round(out['method'][k] - out['kmeans'][k], 2) for k in ('acc', 'miou')}
    if crf: out['margin_crf'] = {k: round(out['method_crf'][k] - out['kmeans_crf'][k], 2) for k in ('acc', 'miou')}
    if method == 'eagle': out['margin_vs_kmeans_keys'] = {k: round(out['method'][k] - out['kmeans_keys'][k], 2) for k in ('acc', 'miou')}
    print(json.dumps(out), flush=True)
    return out


def cfg_images(cfg) -> int: return 200


def summary(rows:list, key:str) -> dict:
    out = {}
    for k in ('acc', 'miou'):
        v = [r[key][k] for r in rows]
        out[k] = {'mean': round(statistics.mean(v), 2), 'std': round(statistics.stdev(v), 2) if len(v) > 1 else 0.0, 'values': v}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--method', required=True, choices=['smooseg', 'eagle'])
    ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    ap.add_argument('--steps', type=int, default=None, help="default: the synthetic configuration's max_steps")
    ap.add_argument('--crf', action='store_true', help='also score both with the dense CRF')
    ap.add_argument('--threads', type=int, default=2)
    a = ap.parse_args(argv)
    if 100 in a.seeds: raise SystemExit('seed 100 is the tuning seed: report other seeds')
    torch.set_num_threads(a.threads)
    M = get_method(a.method)
    cfg = M.Config.synthetic()
    steps = a.steps or cfg.max_steps
    work = Path(tempfile.mkdtemp(prefix=f'margin_{a.method}_'))
    t0 = time.time()
    try: rows = [one_seed(a.method, s, work, cfg, steps, a.crf) for s in a.seeds]
    finally: shutil.rmtree(work, ignore_errors=True)
    res = {'benchmark': 'synthetic_margin', 'method': a.method, 'seeds': a.seeds,
           'setting': {'dataset': 'synthetic', 'n_images_per_split': cfg_images(cfg), 'n_classes': cfg.n_classes, 'image_size': cfg.image_size,
                       'backbone': f'{cfg.backbone} (random weights, seeded with the seed)', 'steps': steps, 'batch_size': cfg.batch_size,
                       'config': f'{M.Config.__name__}.synthetic()', 'evaluation': 'val split, usseg protocol, flip TTA, no CRF'
                       + (' (and with CRF)' if a.crf else ''), 'baseline': 'k-means (K = classes, cosine) on the frozen last-block tokens, '
                       'fitted on the train split', 'tuning': 'hyperparameters chosen on seed 100 only (other scenes, other backbone draw)'},
           'margin_miou': summary(rows, 'margin')['miou'], 'margin_acc': summary(rows, 'margin')['acc'],
           'method_miou': summary(rows, 'method')['miou'], 'kmeans_miou': summary(rows, 'kmeans')['miou'],
           'per_seed': rows, 'seconds': round(time.time() - t0, 1), 'machine': machine()}
    if a.crf: res['margin_crf_miou'] = summary(rows, 'margin_crf')['miou']
    if a.method == 'eagle': res['margin_vs_kmeans_keys_miou'] = summary(rows, 'margin_vs_kmeans_keys')['miou']
    write(f'synthetic_margin_{a.method}', res)


if __name__ == '__main__': main()
