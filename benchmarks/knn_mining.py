#!/usr/bin/env python
"""Nearest-neighbour mining (usseg.data.prepare) on synthetic images with a randomly initialised ViT-S/8, on the CPU.

    python benchmarks/knn_mining.py [--n-images 1000] [--size 64] [--threads 2] [--batch-size 50] [--k 30] [--device cpu]

Renders the synthetic scenes to a temporary data root (timed separately), extracts the L2-normalised
global-average-pooled patch features of every image (eval mode, no grad), takes the cosine top-k (self
first) and writes the neighbour file, as `compute_neighbours` does. Reports wall time per stage and peak
memory: the process's peak resident set size (`resource.getrusage`, includes PyTorch's allocations and
the libraries) and the peak of Python-level allocations (`tracemalloc`, which does not see PyTorch's
tensor memory). Writes benchmarks/results/knn_mining_<device>.json.
"""
import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import usseg
import timm
from usseg.core import atomic_write, atomic_write_text, default_device
from usseg.data import get_dataset
from usseg.data.prepare import _ids, _transform_of, knn_file, knn_from_features, pooled_features


class ViTGrid(nn.Module):
    "A timm ViT returning its patch tokens as a (B, C, h, w) grid."
    def __init__(self, vit):
        super().__init__(); self.vit, self.patch_size = vit, vit.patch_embed.patch_size[0]
    def forward(self, x):
        t = self.vit.forward_features(x)[:, self.vit.num_prefix_tokens:]
        return t.transpose(1, 2).reshape(len(x), -1, x.shape[-2]//self.patch_size, x.shape[-1]//self.patch_size)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024   # Linux: KiB


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--n-images', type=int, default=1000)
    p.add_argument('--size', type=int, default=64, help='image side in pixels (the ViT sees (size/8)^2 patches)')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--batch-size', type=int, default=50)
    p.add_argument('--k', type=int, default=30)
    p.add_argument('--device', default='cpu', help='cpu or cuda (GPU memory is not measured)')
    p.add_argument('--out', default=None, help='default: benchmarks/results/knn_mining_<device>.json')
    a = p.parse_args(argv)
    default_device(a.device)                  # a GPU asked for and missing: fail now, not after rendering the scenes
    a.out = a.out or str(Path(__file__).parent/'results'/f'knn_mining_{a.device.split(":")[0]}.json')
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ds = get_dataset('synthetic', tmp, 'train', n_images=a.n_images, size=a.size)
        t_render = time.perf_counter() - t0
        model = ViTGrid(timm.create_model('vit_small_patch8_224', pretrained=False, num_classes=0, dynamic_img_size=True)).eval()
        rss_before = rss_mb()
        tracemalloc.start()
        t0 = time.perf_counter()
        g = pooled_features(model, _transform_of(ds, a.size, 'bilinear'), a.batch_size, a.device, verbose=False)
        t_feats = time.perf_counter() - t0
        t0 = time.perf_counter()
        nns = knn_from_features(g, a.k, device=a.device)
        t_knn = time.perf_counter() - t0
        t0 = time.perf_counter()
        path = knn_file(tmp, 'vit_small_patch8_224-random', ds.stego_name, 'train', None, a.size)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f: np.savez_compressed(f, nns=nns.numpy(), ids=_ids(ds))
        t_save = time.perf_counter() - t0
        _, py_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert nns.shape == (a.n_images, a.k) and bool((nns[:, 0] == torch.arange(a.n_images)).all())
        file_kb = path.stat().st_size/1024
    res = {
        'benchmark': 'knn_mining', 'device': a.device, 'threads': a.threads, 'cpu_count': os.cpu_count(),
        'n_images': a.n_images, 'image_size': a.size, 'patches_per_image': (a.size//8)**2,
        'backbone': 'timm vit_small_patch8_224, random init (seed 0), eval mode, no grad', 'feature_dim': int(g.shape[1]),
        'batch_size': a.batch_size, 'k': a.k,
        'seconds': {'render_scenes': round(t_render, 2), 'features': round(t_feats, 2), 'knn_topk': round(t_knn, 3),
                    'save': round(t_save, 3), 'mining_total': round(t_feats + t_knn + t_save, 2)},
        'images_per_second_features': round(a.n_images/t_feats, 1),
        'memory_mb': {'peak_rss_process': round(rss_mb(), 1), 'rss_before_mining': round(rss_before, 1),
                      'python_peak_tracemalloc': round(py_peak/2**20, 2)},
        'neighbour_file_kb': round(file_kb, 1),
        'torch': torch.__version__, 'timm': timm.__version__, 'usseg': usseg.__version__, 'python': platform.python_version(),
        'machine': platform.machine(), 'date': datetime.now(timezone.utc).isoformat(timespec='seconds'),
        'load_average_1min': {'start': round(load_start, 2), 'end': round(os.getloadavg()[0], 2)},
        'note': 'wall-clock times on a shared machine: compare runs only at similar load',
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(a.out, json.dumps(res, indent=1) + '\n')
    print(json.dumps(res, indent=1))
    return res


if __name__ == '__main__':
    main()
