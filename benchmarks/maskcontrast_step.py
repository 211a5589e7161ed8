#!/usr/bin/env python
"""MaskContrast's training-step throughput (images/s): one `Learner.train_step` of `MaskContrastMethod` in its
contrastive stage on a batch of random views already on the device (data loading and the saliency prior excluded).

A step is everything MaskContrast does per batch: the momentum update of the key encoder (backbone and DeepLab head),
the key view through it (no gradient), the query view through the query encoder, both outputs upsampled to the view,
the E-Net-weighted InfoNCE over every foreground pixel against the batch's prototypes and the queue, the saliency
head's balanced BCE, backward through the whole network, SGD on the head and the backbone, the poly schedule and the
queue update. Random backbone weights (the cost does not depend on them); each view's mask is a random rectangle
covering a third of it, so the number of anchors is that of a typical salient object.

    python benchmarks/maskcontrast_step.py                                   # CPU, the CPU setting (EfficientNet-Lite0 s8, batch 8, 128 px)
    python benchmarks/maskcontrast_step.py --setting voc2012 --batch-size 4  # the paper's network (dilated ResNet-50) on a CPU: slow
    python benchmarks/maskcontrast_step.py --setting voc2012 --device cuda --dtype fp32 bf16   # on a GPU: batch 64, 224 px

Writes benchmarks/results/maskcontrast_step_<setting>_<device>.json (one entry per dtype).
"""
import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

import usseg  # noqa: F401  (compat shim before timm)
from usseg.backbones import load_backbone
from usseg.core import default_device, set_seed, set_threads
from usseg.learner import Learner, TrainConfig
from usseg.methods.maskcontrast import MaskContrastConfig, MaskContrastMethod

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, time_train_steps, write  # noqa: E402

SETTINGS = ('voc2012', 'voc2012_unsupervised', 'camvid', 'smoke')


def random_views(batch:int, size:int, seed:int=0) -> dict:
    "Two random views and their masks: a rectangle of a third of the view, at a random place per image and view."
    g = torch.Generator().manual_seed(seed)
    out = {'img': torch.randn(batch, 3, size, size, generator=g), 'img_key': torch.randn(batch, 3, size, size, generator=g)}
    side = max(int(size*3**-0.5), 1)
    for k in ('saliency', 'saliency_key'):
        m = torch.zeros(batch, size, size)
        for b in range(batch):
            y, x = (int(v) for v in torch.randint(0, size - side + 1, (2,), generator=g))
            m[b, y:y + side, x:x + side] = 1
        out[k] = m
    return out


def measure(cfg:MaskContrastConfig, device, dtype:str, batch:int, size:int, steps:int, warmup:int) -> dict:
    set_seed(0)
    bb = load_backbone(cfg.backbone, weights='random')
    task = MaskContrastMethod.build(bb, cfg.n_classes, cfg)
    task.stage, task.steps_per_epoch, task.total_steps = 'train', 1000, 10**6
    data = [{'img': torch.zeros(3, size, size)}]*batch                      # the learner's sampler needs a length only
    with tempfile.TemporaryDirectory() as d:
        tcfg = TrainConfig(max_steps=10**6, batch_size=batch, precision=dtype, device=str(device), progress='none', n_samples=0)
        learner = Learner(task, data, d, tcfg).setup()
        b = {k: v.to(learner.device) for k, v in random_views(batch, size).items()}
        timed = time_train_steps(learner, b, warmup, steps)
    dt = timed.pop('sec_per_step')
    res = {'dtype': dtype, 'img_per_s': round(batch/dt, 3), 'sec_per_step': round(dt, 3), 'steps_timed': steps, 'warmup_steps': warmup, **timed}
    print(res, flush=True)
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--setting', default='camvid', choices=SETTINGS, help='a MaskContrastConfig factory (its backbone, batch, views, queue)')
    p.add_argument('--device', default='cpu', help='cpu, cuda, cuda:N')
    p.add_argument('--dtype', nargs='+', default=['fp32'], choices=['fp32', 'bf16', 'fp16'], help='training precision(s): autocast for bf16/fp16')
    p.add_argument('--batch-size', type=int, default=None, help="default: the setting's")
    p.add_argument('--image-size', type=int, default=None, help="the views' side (default: the setting's crop_size)")
    p.add_argument('--steps', type=int, default=3)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--threads', type=int, default=1, help='CPU threads (1 is fastest on a shared machine)')
    p.add_argument('--out', default=None, help='JSON path (default: benchmarks/results/maskcontrast_step_<setting>_<device>.json)')
    a = p.parse_args(argv)
    set_threads(a.threads)
    device = default_device(a.device)
    cfg = getattr(MaskContrastConfig, a.setting)()
    batch, size = a.batch_size or cfg.batch_size, a.image_size or cfg.crop_size
    if cfg.queue_size % batch: cfg = replace(cfg, queue_size=2*batch)       # K a multiple of the batch, as MaskContrast needs
    results = [measure(cfg, device, dt, batch, size, a.steps, a.warmup) for dt in a.dtype]
    write(a.out or f'maskcontrast_step_{a.setting}_{device.type}', {
        'benchmark': 'MaskContrast training step (Learner.train_step, contrastive stage)', 'setting': a.setting, 'config': cfg.source,
        'backbone': f'{cfg.backbone}, random weights, trains ({", ".join(cfg.backbone_train) or "all"}; BatchNorm {"trains" if cfg.backbone_bn else "frozen"})',
        'batch_size': batch, 'image_size': size, 'queue_size': cfg.queue_size, 'paper_batch_size': cfg.batch_size,
        'device': str(device), 'threads': torch.get_num_threads(), 'results': results, 'machine': machine(),
        'gpu': torch.cuda.get_device_name() if device.type == 'cuda' else 'none available where this was run'})


if __name__ == '__main__':
    main()
