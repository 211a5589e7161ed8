#!/usr/bin/env python
"""Training-step throughput (images/s) of each training stage of HSC, and of the plain CAM baseline's classifier stage.

One `Learner.train_step` per step on a batch already on the device (data loading excluded); the stages are timed in
turn within each round, so that a shared machine's load falls on all of them alike (the median per stage), for:
  * `cam (hsc)`: HSC's classifier stage: two views through the classifier (backbone, CAMs, PCM, two projectors),
    HSC's whole loss (classification, EPS, ER, ECR, ROI / class / pixel contrast) with the in-loop dense CRF on
    view 2's pseudo-labels (pydensecrf, on the CPU, image by image), backward, SGD;
  * `cam (hsc, no in-loop CRF)`: the same without the CRF (`label_crf=False`), what the CRF costs;
  * `cam (plain)`: the plain CAM classifier (one view, the multi-label loss);
  * `segmenter`: the DeepLab-style network on pseudo-labels, with the course's two probes.
The `pseudo_labels` stage trains nothing; its cost per image is `benchmarks/cam_inference.py`'s (multi-scale + flip
CAMs) plus one CRF. The backbone trains in every stage (weights: `--weights`, random by default).

    python benchmarks/hsc_step.py                                           # CPU, fp32, HSCConfig.synthetic() sizes
    python benchmarks/hsc_step.py --setting voc2012 --backbone resnet50_dilated --device cuda --dtype bf16   # the GPU run

Writes benchmarks/results/hsc_step_<device>.json.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

import usseg  # noqa: F401  (compat shim before timm)
from usseg.backbones import load_backbone
from usseg.core import default_device, set_seed
from usseg.learner import Learner, TrainConfig
from usseg.methods.hsc import HSCConfig, HSCMethod

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, write  # noqa: E402

STAGES = {'cam (hsc)': ('cam', {}), 'cam (hsc, no in-loop CRF)': ('cam', {'label_crf': False}),
          'cam (plain)': ('cam', {'plain_cam': True}), 'segmenter': ('segmenter', {})}


class Batch(torch.utils.data.Dataset):
    "Random normalised images, each with one or two foreground classes, a saliency map and a pseudo-label map."
    def __init__(self, n, size, n_classes, n_fg):
        self.n, self.size, self.k, self.fg = n, size, n_classes, n_fg
    def __len__(self): return self.n
    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        H, W = self.size
        cls = torch.zeros(self.fg); cls[i % self.fg] = 1; cls[(i * 7 + 3) % self.fg] = 1
        return {'img': torch.randn(3, H, W, generator=g), 'label': torch.randint(0, self.k, (H, W), generator=g), 'index': i,
                'cls': cls, 'saliency': torch.rand(1, H, W, generator=g), 'pseudo': torch.randint(0, self.fg + 1, (H, W), generator=g)}


def build(name, cfg, backbone, weights, device, precision, batch, d):
    "A learner in stage `name`'s state, and its batch on the device."
    stage, change = STAGES[name]
    set_seed(0)
    c = replace(cfg, **change)
    task = HSCMethod.build(load_backbone(backbone, weights=weights), c.n_classes, c)
    task.stage = stage
    size = c.image_size if isinstance(c.image_size, tuple) else (c.image_size, c.image_size)
    data = Batch(batch, size, c.n_classes, c.n_fg)
    tcfg = TrainConfig(max_steps=10**6, batch_size=batch, precision=precision, device=str(device), progress='none', n_samples=0)
    learner = Learner(task, data, Path(d)/name.replace(' ', '_'), tcfg).setup()
    keys = ('img', 'label', 'cls', 'saliency') if stage == 'cam' else ('img', 'label', 'pseudo')
    return learner, {k: torch.stack([data[i][k] for i in range(batch)]).to(learner.device) for k in keys}


def measure(names, cfg, backbone, weights, device, precision, batch, steps, warmup):
    "Seconds per step of each stage, the stages timed in turn within each round (interleaved: the load hits them alike)."
    with tempfile.TemporaryDirectory() as d:
        runs = {n: build(n, cfg, backbone, weights, device, precision, batch, d) for n in names}
        for n, (learner, b) in runs.items():
            for _ in range(warmup): learner.train_step(b)
        times, losses, loads = {n: [] for n in names}, {}, []
        for _ in range(steps):
            loads.append(round(os.getloadavg()[0], 2))
            for n, (learner, b) in runs.items():
                if device.type == 'cuda': torch.cuda.synchronize()
                t = time.perf_counter(); logs = learner.train_step(b)
                if device.type == 'cuda': torch.cuda.synchronize()
                times[n].append(time.perf_counter() - t); losses[n] = round(logs['loss'], 4)
    out = []
    for n in names:
        dt = statistics.median(times[n])
        out.append({'stage': n, 'precision': precision, 'img_per_s': round(batch / dt, 3), 'sec_per_step': round(dt, 4),
                    'sec_per_step_all': [round(t, 4) for t in times[n]], 'steps_timed': steps, 'warmup_steps': warmup,
                    'final_loss': losses[n], 'load_average_1min_per_round': loads})
        print(out[-1], flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--setting', default='synthetic', choices=['synthetic', 'camvid', 'voc2012', 'smoke'])
    p.add_argument('--backbone', default='efficientnet_lite0_s8')
    p.add_argument('--weights', default='random')
    p.add_argument('--device', default='cpu')
    p.add_argument('--dtype', nargs='+', default=['fp32'], choices=['fp32', 'bf16', 'fp16'], help='autocast precision(s)')
    p.add_argument('--stages', nargs='+', default=list(STAGES), choices=list(STAGES))
    p.add_argument('--batch-size', type=int, default=None, help="default: the setting's (the classifier's for every stage)")
    p.add_argument('--steps', type=int, default=3)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--out', default=None, help='JSON path (default: benchmarks/results/hsc_step_<device>.json)')
    a = p.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    device = default_device(a.device)
    cfg = getattr(HSCConfig, a.setting)()
    batch = a.batch_size or cfg.batch_size
    skipped = {}
    try: import pydensecrf.densecrf  # noqa: F401  (the in-loop CRF of 'cam (hsc)')
    except ImportError:
        skipped = {'cam (hsc)': 'pydensecrf is not installed here (the in-loop CRF needs it)'}
        a.stages = [s for s in a.stages if s not in skipped]
        print(f'skipped: {skipped}', flush=True)
    results = [r for pr in a.dtype for r in measure(a.stages, cfg, a.backbone, a.weights, device, pr, batch, a.steps, a.warmup)]
    write(a.out or f'hsc_step_{device.type}', {
        'benchmark': 'HSC training step per stage (Learner.train_step)', 'setting': f'HSCConfig.{a.setting}()', 'backbone': f'{a.backbone} ({a.weights} weights), trained',
        'batch_size': batch, 'image_size': cfg.image_size, 'view2_size': cfg.view2_size, 'device': str(device), 'results': results,
        'skipped': skipped, 'machine': machine(), 'gpu': torch.cuda.get_device_name() if device.type == 'cuda' else 'none available where this was run'})


if __name__ == '__main__':
    main()
