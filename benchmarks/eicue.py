#!/usr/bin/env python
"""Time EAGLE's EiCue (`usseg.losses.eagle.eicue`) for one training batch and write the result as JSON.

usage: python benchmarks/eicue.py [--device cpu|cuda] [--batch 32] [--grid 28] [--dim 512] [--repeats 3]

Defaults match EAGLE's training step (batch 32 of 224 px crops, ViT patch 8 -> 28 x 28 patches, D = 512).
Reports the median wall time of the whole call and of its two parts: building the graph (affinities and
Laplacian) and the batched `torch.linalg.eigh`. Writes benchmarks/results/eicue_{device}.json.
"""
import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import usseg  # noqa: F401  (compat shim first)
from usseg.core import atomic_write_text, normalize
from usseg.losses.eagle import code_affinity, colour_affinity, eicue, normalized_laplacian, patch_colours, smallest_eigenvectors


def timed(fn, device, repeats, warmup=True):
    "Median seconds of `repeats` calls (after one warm-up call if `warmup`), and all the times."
    def sync():
        if device.type == 'cuda': torch.cuda.synchronize()
    if warmup: fn(); sync()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); sync(); ts.append(time.perf_counter() - t)
    return statistics.median(ts), ts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--batch', type=int, default=32)
    ap.add_argument('--grid', type=int, default=28)
    ap.add_argument('--dim', type=int, default=512)
    ap.add_argument('--k', type=int, default=4)
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--dtype', default='float32', choices=['float32', 'float64'])
    ap.add_argument('--out', type=Path, default=None)
    a = ap.parse_args(argv)
    dev, dt = torch.device(a.device), getattr(torch, a.dtype)
    torch.manual_seed(0)
    code = torch.randn(a.batch, a.dim, a.grid, a.grid, device=dev, dtype=dt)
    img = normalize(torch.rand(a.batch, 3, 8 * a.grid, 8 * a.grid, device=dev, dtype=dt))
    load0 = os.getloadavg()[0] if hasattr(os, 'getloadavg') else None
    total, runs = timed(lambda: eicue(code, img, k=a.k), dev, a.repeats)
    W = code_affinity(code) + colour_affinity(patch_colours(img, (a.grid, a.grid)))
    graph, _ = timed(lambda: normalized_laplacian(code_affinity(code) + colour_affinity(patch_colours(img, (a.grid, a.grid)))),
                     dev, a.repeats, warmup=False)
    L = normalized_laplacian(W)
    eig, _ = timed(lambda: smallest_eigenvectors(L, a.k), dev, a.repeats, warmup=False)
    load1 = os.getloadavg()[0] if hasattr(os, 'getloadavg') else None
    res = dict(benchmark='eicue', batch=a.batch, grid=a.grid, n_patches=a.grid ** 2, dim=a.dim, k=a.k, dtype=a.dtype,
               device=str(dev), device_name=torch.cuda.get_device_name(dev) if dev.type == 'cuda' else platform.processor() or platform.machine(),
               torch=torch.__version__, threads=torch.get_num_threads(), repeats=a.repeats,
               seconds_total=round(total, 4), seconds_total_runs=[round(t, 4) for t in runs],
               seconds_graph=round(graph, 4), seconds_eigh=round(eig, 4),
               ms_per_image=round(1000 * total / a.batch, 2),
               load_average_1min=[load0, load1], cpu_count=os.cpu_count(),
               note='medians; one warm-up call before the total; the CPU may be shared with other jobs (see load_average_1min)')
    out = a.out or Path(__file__).parent/'results'/f'eicue_{dev.type}.json'
    atomic_write_text(out, json.dumps(res, indent=2) + '\n')
    print(json.dumps(res, indent=2)); print(f'wrote {out}')


if __name__ == '__main__': main()
