#!/usr/bin/env python
"""Forward time of a frozen backbone on the CPU: DINO ViT-S/8 (random weights: same cost as pretrained),
224 x 224, batch 16, no autograd. Writes benchmarks/results/backbone_forward_cpu.json.

    python benchmarks/backbone_forward_cpu.py [--backbone dino_vits8] [--batch 16] [--size 224] [--repeats 2]

One warm-up forward, then `--repeats` timed forwards (mean and min: on a shared machine the min is the
least disturbed). The JSON records the machine (CPU model, threads,
load average before and after) because on a shared machine the load changes the number.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

import usseg
from usseg.backbones import load_backbone
from usseg.core import atomic_write_text

sys.path.insert(0, str(Path(__file__).parent))
from _common import cpu_model  # noqa: E402

OUT = Path(__file__).resolve().parent/'results'/'backbone_forward_cpu.json'


def main(backbone='dino_vits8', batch=16, size=224, repeats=2, out=OUT):
    bb = load_backbone(backbone, weights='random', device='cpu')
    x = torch.randn(batch, 3, size, size)
    load_before = os.getloadavg()
    t = time.perf_counter(); y = bb(x); warm = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); bb(x); times.append(time.perf_counter() - t)
    res = {'backbone': backbone, 'weights': 'random', 'batch': batch, 'size': [size, size], 'output_shape': list(y.shape),
           'warmup_s': round(warm, 3), 'times_s': [round(s, 3) for s in times], 'mean_s': round(sum(times)/len(times), 3), 'min_s': round(min(times), 3),
           'images_per_s': round(batch*len(times)/sum(times), 2), 'torch': torch.__version__, 'threads': torch.get_num_threads(),
           'cpu': cpu_model(), 'cpu_count': os.cpu_count(), 'loadavg_before': [round(v, 2) for v in load_before],
           'loadavg_after': [round(v, 2) for v in os.getloadavg()], 'date': time.strftime('%Y-%m-%d %H:%M:%S')}
    atomic_write_text(out, json.dumps(res, indent=1) + '\n')
    print(json.dumps(res, indent=1))
    return res


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--backbone', default='dino_vits8'); ap.add_argument('--batch', type=int, default=16)
    ap.add_argument('--size', type=int, default=224); ap.add_argument('--repeats', type=int, default=2)
    a = ap.parse_args()
    main(a.backbone, a.batch, a.size, a.repeats)
