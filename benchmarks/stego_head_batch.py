#!/usr/bin/env python
"""Where STEGO's CPU step loses to the reference (issue 19): the head on the concatenated batch.

usseg's `StegoMethod.training_step` runs `StegoHead` once on the images and their neighbours together (2B
feature maps); the reference (`STEGO:src/train_segmentation.py::training_step`) calls its featurizer twice, on B
each. With the COCO-Stuff settings (B = 16, 384 x 28 x 28 features) every activation of the head is 37 MiB on
2B maps and 18 MiB on B: above and below glibc's default `mmap` threshold (32 MiB at most), so under glibc's
defaults each of usseg's activations is a fresh `mmap`, paid in page faults, where the reference's come back
from the heap. This script measures exactly that, on the head alone, forward and backward:

  * `cat`: one call on the 2B maps (usseg today);
  * `two`: two calls on B maps each (the reference's shape), with the same three Dropout2d masks (drawn once for
    the 2B maps, then sliced), so that the forward pass is the same computation;

alternating, in one worker process per malloc setting (glibc's defaults; `usseg.core.reuse_freed_memory`),
minor page faults and wall time per step, and the difference between the two sides' outputs and gradients.

    python benchmarks/stego_head_batch.py [--batch 16] [--repeats 7]

Results: benchmarks/results/stego_head_batch_cpu.json.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, write  # noqa: E402


def faults() -> int: return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def step(head, x, mode, masks):
    "Forward and backward of the head on `x` (2B maps), as one call or two, with the given Dropout2d masks."
    head.zero_grad(set_to_none=True)
    parts = [slice(None)] if mode == 'cat' else [slice(0, len(x)//2), slice(len(x)//2, None)]
    outs = []
    for s in parts:
        f = x[s]
        code = head.linear(f*masks[0][s]) + head.nonlinear(f*masks[1][s])
        feats = f*masks[2][s]                       # what the loss reads (no gradient: the backbone is frozen)
        code.square().sum().backward()              # the two halves' losses add up to the whole batch's
        outs.append(code.detach()); del feats
    return torch.cat(outs), {n: p.grad.clone() for n, p in head.named_parameters()}


def worker(args):
    from usseg.core import reuse_freed_memory
    from usseg.models.heads import StegoHead
    torch.set_num_threads(args.threads)
    if args.malloc == 'reuse': reuse_freed_memory()
    torch.manual_seed(0)
    head = StegoHead(384, 70).train()
    x = torch.randn(2*args.batch, 384, args.grid, args.grid)
    masks = [F.dropout2d(torch.ones(2*args.batch, 384, 1, 1), 0.1, training=True) for _ in range(3)]
    a, ga = step(head, x, 'cat', masks)
    b, gb = step(head, x, 'two', masks)
    check = {'code_bit_identical': bool(torch.equal(a, b)),
             'grad_max_rel_diff': max(float((ga[n] - gb[n]).abs().max()/ga[n].abs().max()) for n in ga)}
    res = {m: {'s': [], 'faults': []} for m in ('cat', 'two')}
    for r in range(args.repeats + 1):
        for m in (('cat', 'two') if r % 2 else ('two', 'cat')):
            f0, t0 = faults(), time.perf_counter()
            step(head, x, m, masks)
            if r: res[m]['s'].append(time.perf_counter() - t0); res[m]['faults'].append(faults() - f0)
    print(json.dumps({'check': check, 'steps': res}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--batch', type=int, default=16, help='B: images per side (the maps are 2B)')
    p.add_argument('--grid', type=int, default=28)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--repeats', type=int, default=7)
    p.add_argument('--out', default='stego_head_batch_cpu', help='result name or .json path (default: results/stego_head_batch_cpu.json)')
    p.add_argument('--malloc', default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.malloc: return worker(a)
    out = {'benchmark': __doc__.split('\n\n')[0], 'batch': a.batch, 'grid': a.grid, 'threads': a.threads,
           'mib_per_activation': {'cat': round(2*a.batch*384*a.grid**2*4/2**20, 1), 'two': round(a.batch*384*a.grid**2*4/2**20, 1)},
           'load_average_before': [round(x, 2) for x in os.getloadavg()], 'malloc': {}}
    for malloc in ('glibc', 'reuse'):
        cmd = [sys.executable, __file__, '--batch', str(a.batch), '--grid', str(a.grid), '--threads', str(a.threads),
               '--repeats', str(a.repeats), '--malloc', malloc]
        env = {**os.environ, 'USSEG_REUSE_FREED_MEMORY': '1'}
        r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout.strip().splitlines()[-1])
        st = r['steps']
        ratios = [c/t for c, t in zip(st['cat']['s'], st['two']['s'])]
        out['malloc'][malloc] = {
            'check': r['check'],
            **{m: {'median_s': round(statistics.median(st[m]['s']), 4), 'median_faults': int(statistics.median(st[m]['faults']))} for m in st},
            'cat_over_two': {'median': round(statistics.median(ratios), 3), 'min': round(min(ratios), 3), 'max': round(max(ratios), 3)}}
        print(malloc, json.dumps(out['malloc'][malloc]), flush=True)
    out['load_average_after'] = [round(x, 2) for x in os.getloadavg()]
    out['machine'] = machine()
    write(a.out, out)


if __name__ == '__main__':
    main()
