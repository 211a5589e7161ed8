#!/usr/bin/env python
"""How `StegoConfig.demo()` was chosen: STEGO against k-means on synthetic scenes with the offline ImageNet `efficientnet_lite0`.

For each seed (scene and training seed: the tuning seeds 100 and 101, never the demo's 0-2), on the same frozen
features and 96 scenes per split: `usseg.evaluate.baseline` (k-means, K = 8, flip) fitted on `train` and scored on
`val`, and STEGO trained on `train` with the weights, shifts and D of an upstream block (`--block`: a `StegoConfig`
factory) at `--size` px for `--steps` steps of 16 (cached backbone outputs), scored on `val` with flip. Prints one
JSON line per seed: k-means and STEGO mIoU / accuracy, the gain, seconds and the load average.

    python benchmarks/demo_tuning.py --block cocostuff27 --size 96 --steps 300 --seeds 100 101
    python benchmarks/demo_tuning.py --block synthetic --size 96 --steps 300 --seeds 100 101   # the random ViT's shifts

The grid that chose the demo's setting (the lines it printed) is in `results/demo_cpu.json`; `usseg demo` itself is
timed with the shell (`time usseg demo`), and its `demo.json` records its own seconds.
"""
import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

import usseg  # noqa: F401  (compat shim before timm)
from usseg.backbones import load_backbone
from usseg.data import get_dataset
from usseg.data.transforms import EvalTransform
from usseg.evaluate import baseline
from usseg.methods import train
from usseg.methods.stego import StegoConfig


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--block', default='cocostuff27', help='the StegoConfig factory whose weights, shifts and D are used')
    p.add_argument('--size', type=int, default=96); p.add_argument('--steps', type=int, default=300)
    p.add_argument('--n-images', type=int, default=96); p.add_argument('--n-classes', type=int, default=8)
    p.add_argument('--batch-size', type=int, default=16); p.add_argument('--seeds', type=int, nargs='+', default=[100, 101])
    p.add_argument('--work', default=None, help='scratch folder (default: a temporary one)')
    a = p.parse_args()
    torch.set_num_threads(1)
    b = getattr(StegoConfig, a.block)()
    config = {k: getattr(b, k) for k in [*b.loss_kwargs(), 'dim']}
    bb = load_backbone('efficientnet_lite0')
    work = Path(a.work or tempfile.mkdtemp())
    for seed in a.seeds:
        t0 = time.time()
        root = work/f'data_{a.n_images}_{a.size}_{a.n_classes}_{seed}'
        kw = dict(n_images=a.n_images, size=a.size, n_classes=a.n_classes, seed=seed)
        fit_ds, ev = (get_dataset('synthetic', root, s, transform=EvalTransform(a.size), **kw) for s in ('train', 'val'))
        km = baseline(bb, fit_ds, ev, a.n_classes, seed=seed, flip=True, fit_split='train', device='cpu', progress=False)
        t_km, t1 = time.time() - t0, time.time()
        shutil.rmtree(work/'run', ignore_errors=True)
        run = train('stego', 'synthetic', root, work/'run', backbone=bb, seed=seed, steps=a.steps, batch_size=a.batch_size,
                    image_size=a.size, device='cpu', smoke=False, progress='none', save_every=0, config=config,
                    dataset_kw={'n_images': a.n_images, 'n_classes': a.n_classes, 'seed': seed}, cache_features=True, eval_images=4)
        t_train, t2 = time.time() - t1, time.time()
        st = run.evaluate(device='cpu', flip=True, save=False)
        print(json.dumps({'block': a.block, 'size': a.size, 'steps': a.steps, 'seed': seed, 'kmeans_miou': round(km.miou, 2),
                          'kmeans_acc': round(km.acc, 2), 'stego_miou': round(st.miou, 2), 'stego_acc': round(st.acc, 2),
                          'gain_miou': round(st.miou - km.miou, 2), 'gain_acc': round(st.acc - km.acc, 2),
                          'seconds': {'kmeans': round(t_km, 1), 'train': round(t_train, 1), 'evaluate': round(time.time() - t2, 1)},
                          'load_average_1': round(os.getloadavg()[0], 2)}), flush=True)


if __name__ == '__main__':
    main()
