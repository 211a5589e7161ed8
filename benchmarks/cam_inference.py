#!/usr/bin/env python
"""CAM inference time per image: multi-scale (0.5, 1, 1.5, 2) + flip, as HSC's `inference.py` (8 forwards and the
aggregation), against one forward at scale 1, measured interleaved, plus the two pseudo-label CRFs.

    python benchmarks/cam_inference.py [--backbones vit_tiny8 resnet50_dilated] [--size 224] [--n-images 4]
                                       [--repeats 3] [--device cpu] [--threads N] [--out PATH]

Random backbone weights (the cost does not depend on them), a `CamClassifier` with 20 classes and a background
map (the 'eps' convention), images of `size` x `4/3 size` (VOC's usual aspect), batch 1 as upstream. For every
image and repeat the script times the multi-scale + flip CAMs and the single forward back to back, so their ratio
is measured under the same load, and a third time with the network's outputs replayed (what the image pyramid
and the aggregation cost on their own); the JSON keeps the median and minimum of each, the median ratio, and the
load average before and after. `--crf` adds pydensecrf's CAM CRF (`crf_cams`, t = 8) at the image size and the in-loop
label CRF (`crf_labels`) on a 16 x 16 map. Writes benchmarks/results/cam_inference_<device>.json (or `--out`).
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import usseg  # noqa: E402,F401  (its compatibility shims first)
from usseg.backbones import ViTBackbone, load_backbone  # noqa: E402
from usseg.core import set_threads  # noqa: E402
from usseg.priors.cam import CamClassifier, crf_cams, crf_labels, ms_flip_cams  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _common import cpu_model, machine, write  # noqa: E402


def _sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize()


def bench_backbone(name, size, n_images, repeats, dev):
    bb = load_backbone(name, weights='random', device=dev)
    clf = CamClassifier(bb, 20, background=True).to(dev).eval()
    multiple = bb.patch_size if isinstance(bb, ViTBackbone) else 1
    H, W = size, round(size * 4 / 3)
    if multiple > 1: H, W = H // multiple * multiple, W // multiple * multiple
    g = torch.Generator().manual_seed(0)
    imgs = torch.randn(n_images, 3, H, W, generator=g).to(dev)
    labels = (torch.rand(n_images, 20, generator=g) < 0.15).float().to(dev)
    labels[:, 0] = 1
    msf, one, ratio, rest = [], [], [], []
    seen = {}
    def recording(x):   # the network, its outputs kept by input shape
        out = clf.cams(x); seen[tuple(x.shape)] = out
        return out
    replay = lambda x: seen[tuple(x.shape)]   # the same outputs without the network: what the rest costs
    with torch.no_grad():
        ms_flip_cams(recording, imgs[:1], labels[:1], multiple=multiple); clf.cams(imgs[:1]); _sync(dev)   # warm-up
        for _ in range(repeats):
            for i in range(n_images):
                x, y = imgs[i:i + 1], labels[i:i + 1]
                t = time.perf_counter(); cams = ms_flip_cams(recording, x, y, multiple=multiple); _sync(dev)
                a = time.perf_counter() - t
                t = time.perf_counter(); c1 = clf.cams(x); _sync(dev)
                b = time.perf_counter() - t
                t = time.perf_counter(); ms_flip_cams(replay, x, y, multiple=multiple); _sync(dev)
                rest.append(time.perf_counter() - t)
                msf.append(a); one.append(b); ratio.append(a / b)
    return {'backbone': name, 'image_size': [H, W], 'feature_grid': list(c1.shape[-2:]), 'cam_shape': list(cams.shape),
            'n_images': n_images, 'repeats': repeats,
            'msf_s_per_image_median': round(statistics.median(msf), 4), 'msf_s_per_image_min': round(min(msf), 4),
            'single_forward_s_median': round(statistics.median(one), 4), 'single_forward_s_min': round(min(one), 4),
            'msf_over_single_median': round(statistics.median(ratio), 2),
            'pyramid_and_aggregation_s_median': round(statistics.median(rest), 4)}, cams


def bench_crf(cams, labels_row, repeats):
    "pydensecrf: the CAM CRF at the image size (t = 8, alpha = 7) and the in-loop label CRF on 16 x 16."
    u8 = (torch.rand(*cams.shape[-2:], 3, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    t_cam, t_lab = [], []
    lab16 = torch.randint(0, 21, (16, 16), generator=torch.Generator().manual_seed(2))
    u16 = u8[:16, :16].contiguous()
    for _ in range(repeats):
        t = time.perf_counter(); crf_cams(u8, cams[0].cpu().clamp(0, 1), labels_row.cpu()); t_cam.append(time.perf_counter() - t)
        t = time.perf_counter(); crf_labels(u16, lab16, 21); t_lab.append(time.perf_counter() - t)
    return {'crf_cams_s_median': round(statistics.median(t_cam), 4), 'crf_cams_note': 'random-noise image (worst case for the lattice)',
            'crf_labels_16x16_s_median': round(statistics.median(t_lab), 5)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--backbones', nargs='+', default=['vit_tiny8', 'resnet50_dilated'])
    ap.add_argument('--size', type=int, default=224)
    ap.add_argument('--n-images', type=int, default=4)
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--threads', default=None, help="torch threads (default: usseg's auto choice for a shared machine)")
    ap.add_argument('--crf', action='store_true', help='also time the two pseudo-label CRFs (pydensecrf, CPU)')
    ap.add_argument('--out', default=None)
    a = ap.parse_args()
    dev = torch.device(a.device)
    if dev.type == 'cuda' and not torch.cuda.is_available(): sys.exit('--device cuda asked for, but no GPU is visible')
    set_threads(a.threads)
    info = machine()
    info['cpu'] = cpu_model()
    load_before = [round(x, 2) for x in os.getloadavg()]
    rows = []
    for name in a.backbones:
        row, cams = bench_backbone(name, a.size, a.n_images, a.repeats, dev)
        if a.crf:
            lab = torch.zeros(20); lab[0] = 1; lab[5] = 1
            row.update(bench_crf(cams, lab, a.repeats))
        rows.append(row)
        print(row, flush=True)
    res = {'benchmark': 'cam_inference', 'scales': [0.5, 1.0, 1.5, 2.0], 'flip': True, 'convention': 'eps',
           'n_classes': 20, 'device': str(dev), 'results': rows, 'machine': info,
           'load_average_before': load_before, 'load_average_after': [round(x, 2) for x in os.getloadavg()]}
    write(a.out or f'cam_inference_{dev.type}', res)


if __name__ == '__main__':
    main()
