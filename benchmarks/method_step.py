#!/usr/bin/env python
"""Training-step throughput (images/s) of a method at the paper's batch size and resolution: a frozen ViT-S/8 with
random weights, the method's task built from its paper configuration (`default_config('cocostuff27', 'dino_vits8')`),
one `Learner.train_step` per step on a batch already on the device (data loading excluded).

    python benchmarks/method_step.py --method stego                          # CPU, fp32: batch 16, 224 px
    python benchmarks/method_step.py --method hp --steps 1 --warmup 0        # CPU: HP's batch 64 is slow
    python benchmarks/method_step.py --method stego --device cuda --precision fp32 bf16

A step is everything `Learner.train_step` does: the frozen forward passes (STEGO: the images and their
neighbours; HP: the images with attention, and their photometric view), the head, the loss, backward, the
optimisers, clipping and the EMA update. HP's reference pools are filled with random unit vectors before timing;
their renewal (every `renew_interval` iterations, `pool_size` images through the backbone and the EMA head) is
timed separately on a few images and reported per image and amortised per training step. SmooSeg: the image, the
projection, the smoothness energy and the teacher's EMA; EAGLE: the keys of the image and of its second view (here a
scaled copy standing in for the blur), EiCue's eigendecomposition of both views, and the three losses.
Writes benchmarks/results/method_step_<method>_<device>.json (one entry per precision).
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import usseg  # noqa: F401  (compat shim before timm)
from usseg.backbones import load_backbone
from usseg.core import default_device, set_seed
from usseg.learner import Learner, TrainConfig
from usseg.methods import get_method

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, time_train_steps, write  # noqa: E402


class RandomImages(torch.utils.data.Dataset):
    "Random normalised images and labels of one size (what the pools and the learner's bookkeeping read)."
    transform = None                                     # HP's `training_data` wraps the split's transform
    def __init__(self, n, size, n_classes): self.n, self.size, self.k = n, size, n_classes
    def __len__(self): return self.n
    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        img = torch.randn(3, self.size, self.size, generator=g)
        return {'img': img, 'img_pos': img.roll(1, -1), 'img_aug': img*0.9,
                'label': torch.randint(0, self.k, (self.size, self.size), generator=g), 'index': i}


def measure(method, device, precision, batch, size, steps, warmup):
    set_seed(0)
    M = get_method(method)
    bb = load_backbone('dino_vits8', weights='random')
    cfg = M.default_config('cocostuff27', 'dino_vits8')
    task = M.build(bb, cfg.n_classes, cfg)
    data = RandomImages(batch, size, cfg.n_classes)
    extra = {}
    if method == 'hp':                                   # pools: random unit vectors; renewal timed on its own
        task.training_data(data, {'train': {'batch_size': batch, 'max_steps': cfg.max_steps}})
        task.pool_ag.copy_(F.normalize(torch.randn_like(task.pool_ag), dim=1))
        task.pool_sp.copy_(F.normalize(torch.randn_like(task.pool_sp), dim=1))
        task.pool_step.fill_(0)
    with tempfile.TemporaryDirectory() as d:
        tcfg = TrainConfig(max_steps=10**6, batch_size=batch, precision=precision, device=str(device), progress='none', n_samples=0,
                           clip_grad_norm=getattr(cfg, 'clip_grad_norm', getattr(cfg, 'grad_norm', None)))   # HP: 10 (the field was grad_norm before the configs moved to usseg.methods)
        learner = Learner(task, data, d, tcfg).setup()
        keys = {'stego': ('img', 'img_pos', 'label'), 'hp': ('img', 'img_aug', 'label'),
                'eagle': ('img', 'img_aug', 'label')}.get(method, ('img', 'label'))   # EAGLE: img_aug stands in for the blurred view
        items = [data[i] for i in range(batch)]
        b = {k: torch.stack([it[k] for it in items]).to(learner.device) for k in keys}
        timed = time_train_steps(learner, b, warmup, steps)
        dt = timed.pop('sec_per_step')
        if method == 'hp':
            n = min(16, cfg.pool_size)
            small = {'pool_size': cfg.pool_size}
            task.cfg = type(cfg)(**{**vars(cfg), 'pool_size': n, 'batch_size': n})
            task.pool_ag, task.pool_sp = task.pool_ag[:n].clone(), task.pool_sp[:n].clone()
            tp = time.perf_counter(); task.fill_pools(1, ('sp',))
            if device.type == 'cuda': torch.cuda.synchronize()
            per_img = (time.perf_counter() - tp)/n
            extra = {'pool_renewal_s_per_image': round(per_img, 4), 'pool_size': small['pool_size'], 'renew_interval': cfg.renew_interval,
                     'pool_renewal_s_per_step_amortised': round(per_img*small['pool_size']/cfg.renew_interval, 3)}
    res = {'precision': precision, 'img_per_s': round(batch/dt, 3), 'sec_per_step': round(dt, 3), 'steps_timed': steps,
           'warmup_steps': warmup, **timed, **extra}
    print(res, flush=True)
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--method', required=True, help='a registry name: stego, hp, smooseg, eagle')
    p.add_argument('--device', default='cpu')
    p.add_argument('--precision', nargs='+', default=['fp32'], choices=['fp32', 'bf16', 'fp16'])
    p.add_argument('--batch-size', type=int, default=None, help="default: the paper's (STEGO 16, HP 64, SmooSeg 32, EAGLE 32)")
    p.add_argument('--image-size', type=int, default=224)
    p.add_argument('--steps', type=int, default=2)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--out', default=None, help='JSON path (default: benchmarks/results/method_step_<method>_<device>.json)')
    a = p.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    device = default_device(a.device)
    cfg = get_method(a.method).default_config('cocostuff27', 'dino_vits8')
    batch = a.batch_size or cfg.batch_size
    results = [measure(a.method, device, pr, batch, a.image_size, a.steps, a.warmup) for pr in a.precision]
    write(a.out or f'method_step_{a.method}_{device.type}', {
        'benchmark': 'method training step (Learner.train_step)', 'method': a.method, 'config': getattr(cfg, 'source', f'{type(cfg).__name__}.cocostuff27()'),
        'backbone': 'dino_vits8 (vit_small_patch8_224), random weights, frozen', 'batch_size': batch, 'image_size': a.image_size,
        'paper_batch_size': cfg.batch_size, 'device': str(device), 'results': results, 'machine': machine(),
        'gpu': torch.cuda.get_device_name() if device.type == 'cuda' else 'none available where this was run'})


if __name__ == '__main__':
    main()
