#!/usr/bin/env python
"""CPU time of one training step's head + loss work, with random tensors in place of backbone features.
Writes benchmarks/results/stego_hp_step_cpu.json.

    python benchmarks/stego_hp_step_cpu.py [--batch 16] [--grid 28] [--repeats 3] [--threads N] [--hp]

STEGO: `StegoHead(384, 70)` (training mode) on the features of the images and of their KNN partners, then
`stego_loss` with the COCO-Stuff ViT-S/8 setting, then backward: the part of a STEGO step that is not the
frozen backbone (batch 16, 224 px: a 28x28 grid). With `--hp` also HP's step at the same batch:
`StegoHead(384, 512)`, the EMA head, local propagation, `ProjectionHead`, `hp_loss` with both terms and the
consistency term, then backward (HP's real batch is 64; memory and time grow with its square).
Wall and process CPU seconds are both recorded, with the machine and the load average: on a shared, loaded
machine the wall time of multi-threaded tiny kernels can be many times the CPU time (use `--threads 1`).
"""
import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import usseg  # noqa: F401
from usseg.core import atomic_write_text
from usseg.losses.hp import consistency_loss, hp_loss, lhp_attention, propagate_code
from usseg.losses.stego import stego_loss
from usseg.learner.schedules import ema_update_
from usseg.models.heads import ProjectionHead, StegoHead, flatten_pixels

sys.path.insert(0, str(Path(__file__).parent))
from _common import cpu_model  # noqa: E402

OUT = Path(__file__).resolve().parent/'results'/'stego_hp_step_cpu.json'


def timed(fn, repeats):
    "Wall and process-CPU seconds of `repeats` calls after one warm-up call."
    fn()                                                                  # warm-up
    ts, cs = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time(); fn()
        ts.append(time.perf_counter() - t); cs.append(time.process_time() - c)
    return ts, cs


def stego_step(batch, grid, repeats):
    cfg = StegoConfig.cocostuff27()
    head = StegoHead(cfg.in_dim, cfg.dim).train()
    feats, feats_pos = torch.randn(batch, cfg.in_dim, grid, grid), torch.randn(batch, cfg.in_dim, grid, grid)
    parts = {}

    def step():
        t0 = time.perf_counter()
        f, code = head(feats, return_feats=True)
        fp, code_pos = head(feats_pos, return_feats=True)
        t1 = time.perf_counter()
        loss, _ = stego_loss(f, fp, code, code_pos, **cfg.loss_kwargs())
        t2 = time.perf_counter()
        head.zero_grad(); loss.backward()
        t3 = time.perf_counter()
        for k, v in (('head_forward_s', t1 - t0), ('loss_forward_s', t2 - t1), ('backward_s', t3 - t2)): parts.setdefault(k, []).append(v)
    ts, cs = timed(step, repeats)
    return {'config': 'StegoConfig.cocostuff27()', 'in_dim': cfg.in_dim, 'dim': cfg.dim, 'wall_s': [round(t, 3) for t in ts],
            'mean_wall_s': round(sum(ts) / len(ts), 3), 'mean_cpu_s': round(sum(cs) / len(cs), 3),
            **{'wall_' + k: round(sum(v[1:]) / len(v[1:]), 3) for k, v in parts.items()}}


def hp_step(batch, grid, repeats):
    cfg = HpConfig.cocostuff27()
    head, proj = StegoHead(cfg.in_dim, cfg.dim).train(), ProjectionHead(cfg.dim)
    ema = copy.deepcopy(head).requires_grad_(False)
    drop = torch.nn.Dropout2d(cfg.dropout)
    N = grid * grid
    feats, feats_aug = torch.randn(batch, cfg.in_dim, grid, grid), torch.randn(batch, cfg.in_dim, grid, grid)
    attn = torch.randn(batch, 6, N + 1, N + 1)                            # pre-softmax attention logits
    pool_ag = F.normalize(torch.randn(cfg.pool_size, cfg.in_dim), dim=1)
    pool_sp = F.normalize(torch.randn(cfg.pool_size, cfg.dim), dim=1)

    def step():
        f, code = head(feats, return_feats=True)
        code_ema = drop(ema(feats)).detach()
        code_lhp = drop(propagate_code(code, lhp_attention(attn, **cfg.attention_kwargs())))
        z, z_lhp = proj(flatten_pixels(code)), proj(flatten_pixels(code_lhp))
        z_aug = proj(flatten_pixels(head(feats_aug)))
        loss, _ = hp_loss(z, F.normalize(flatten_pixels(f), dim=1).detach(), F.normalize(flatten_pixels(code_ema), dim=1),
                          pool_ag, pool_sp, z_lhp=z_lhp, patches_per_image=N, lmbd=0.5, **cfg.loss_kwargs())
        loss = loss + cfg.consistency_weight * consistency_loss(z, z_aug)
        head.zero_grad(); proj.zero_grad(); loss.backward()
        ema_update_(ema, head, cfg.ema_m)
    ts, cs = timed(step, repeats)
    return {'config': 'HpConfig.cocostuff27()', 'in_dim': cfg.in_dim, 'dim': cfg.dim, 'wall_s': [round(t, 3) for t in ts],
            'mean_wall_s': round(sum(ts) / len(ts), 3), 'mean_cpu_s': round(sum(cs) / len(cs), 3)}


def main(batch=16, grid=28, repeats=3, hp=False, threads=None, out=OUT):
    if threads: torch.set_num_threads(threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()
    res = {'what': 'head + loss forward/backward, random tensors as backbone features (backbone not included)',
           'batch': batch, 'grid': [grid, grid], 'stego': stego_step(batch, grid, repeats)}
    if hp: res['hp'] = hp_step(batch, grid, repeats)
    res.update(torch=torch.__version__, threads=torch.get_num_threads(), cpu=cpu_model(), cpu_count=os.cpu_count(),
               loadavg_before=[round(v, 2) for v in load_before], loadavg_after=[round(v, 2) for v in os.getloadavg()],
               date=time.strftime('%Y-%m-%d %H:%M:%S'))
    atomic_write_text(out, json.dumps(res, indent=1) + '\n')
    print(json.dumps(res, indent=1))
    return res


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--batch', type=int, default=16); ap.add_argument('--grid', type=int, default=28)
    ap.add_argument('--repeats', type=int, default=3); ap.add_argument('--hp', action='store_true')
    ap.add_argument('--threads', type=int, default=None, help="torch threads (default: torch's choice)")
    a = ap.parse_args()
    main(a.batch, a.grid, a.repeats, a.hp, a.threads)
