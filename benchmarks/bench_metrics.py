#!/usr/bin/env python
"""Throughput of UnsupervisedMetrics.update (a bincount) and the cost of compute() (Hungarian).

    python benchmarks/bench_metrics.py

A batch is 16 x 320 x 320 predictions with 27 classes + 5 extra clusters (EAGLE on COCO-Stuff), 5% of
the pixels ignored. Writes results/metrics.json.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import usseg  # noqa: E402,F401
from _common import machine, timeit, write  # noqa: E402
from usseg.metrics import UnsupervisedMetrics  # noqa: E402


def main():
    g = torch.Generator().manual_seed(0)
    B, H, W, C, E = 16, 320, 320, 27, 5
    target = torch.randint(0, C, (B, H, W), generator=g); target[torch.rand(B, H, W, generator=g) < 0.05] = -1
    preds = torch.randint(0, C + E, (B, H, W), generator=g)
    m = UnsupervisedMetrics(C, extra_clusters=E)
    t = timeit(lambda: m.update(preds, target), repeat=10, warmup=2)
    res = {'machine': machine(), 'batch': [B, H, W], 'classes': C, 'extra_clusters': E,
           'update_cpu': {**t, 'megapixels_per_s': round(B*H*W/t['median_s']/1e6, 1)},
           'compute_cpu': timeit(m.compute, repeat=10)}
    if torch.cuda.is_available():
        pc, tc = preds.cuda(), target.cuda(); mc = UnsupervisedMetrics(C, extra_clusters=E)
        def upd(): mc.update(pc, tc); torch.cuda.synchronize()
        tg = timeit(upd, repeat=20, warmup=3)
        res['update_cuda'] = {**tg, 'megapixels_per_s': round(B*H*W/tg['median_s']/1e6, 1)}
    print(res)
    write('metrics', res)


if __name__ == '__main__': main()
