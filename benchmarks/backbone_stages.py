"""Which stages of EfficientNet-Lite0 make the dense features: measured on CamVid val only.

    python benchmarks/backbone_stages.py                       # data from USSEG_SHARED_DATA or ../shared/data
    python benchmarks/backbone_stages.py --data-root DIR --seeds 0 1 2

The candidates are registry names, so any of them can be used (and this table rerun) from the command line:
the last stride-8 stage (`efficientnet_lite0_s8`: blocks.2, 40 channels), the last stride-16 stage
(`efficientnet_lite0_s16`: blocks.4, 112 channels) and their hypercolumn (`efficientnet_lite0_hc`: both, the
stride-16 map upsampled bilinearly, 152 channels at stride 8). Weights: ImageNet, from the pip package.

Protocol. CamVid val (101 frames of one drive) is cut in two halves in time (frames 0-49 and 50-100). Each
measure is fitted on one half and scored on the other, both ways, so that no frame is scored by what was fitted
on it and nothing touches the test split:
- k-means (K = 11, cosine, `usseg.evaluate.baseline`) on the frozen features, seeds as given: cluster mIoU and
  accuracy after Hungarian matching, extra clusters none;
- a linear probe fitted to convergence (full-batch L-BFGS logistic regression on 60k labelled pixels,
  `fit_linear_probe` of benchmarks/synthetic_margin.py): mIoU and accuracy.
Native 360x480 images, no flip, no CRF, CPU. The rule, fixed before the run: the default `efficientnet_lite0`
takes the stages with the best mean k-means mIoU (what the unsupervised methods build on); the probe is the
ceiling of what the features hold linearly. Writes benchmarks/results/backbone_stages.json.
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import usseg  # noqa: F401  (before timm: the torchvision shim)
from usseg.backbones import BACKBONES, load_backbone
from usseg.core import atomic_write_text
from usseg.data import get_dataset, shared_data
from usseg.evaluate import baseline, evaluate
from synthetic_margin import fit_linear_probe

CANDIDATES = ('efficientnet_lite0_s8', 'efficientnet_lite0_s16', 'efficientnet_lite0_hc')


class Half(torch.utils.data.Dataset):
    "Frames `idx` of a dataset, keeping what the evaluation reads (`n_classes`, `class_names`, a split name)."
    def __init__(self, ds, idx, tag):
        self.ds, self.idx, self.split = ds, list(idx), f'{ds.split}[{tag}]'
        self.n_classes, self.class_names, self.ignore_index = ds.n_classes, ds.class_names, -1
    def __len__(self): return len(self.idx)
    def __getitem__(self, i): return self.ds[self.idx[i]]
    def __repr__(self): return f'camvid {self.split}'


def stats(xs): return {'mean': round(statistics.mean(xs), 2), 'sd': round(statistics.stdev(xs), 2) if len(xs) > 1 else 0.0,
                       'values': [round(x, 2) for x in xs]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data-root', default=None, help='folder holding CamVid/val (default: the shared copy)')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2], help='k-means seeds')
    p.add_argument('--candidates', nargs='+', default=list(CANDIDATES))
    p.add_argument('--out', default=str(Path(__file__).resolve().parent/'results'/'backbone_stages.json'))
    a = p.parse_args(argv)
    root = Path(a.data_root) if a.data_root else shared_data('camvid_segnet')
    if root is None or not (root/'CamVid'/'val').is_dir(): raise SystemExit('CamVid val not found: pass --data-root DIR (DIR/CamVid/val)')
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '1')))
    val = get_dataset('camvid', root, 'val')
    n = len(val)
    halves = [Half(val, range(n//2), f':{n//2}'), Half(val, range(n//2, n), f'{n//2}:')]
    folds = [(halves[0], halves[1]), (halves[1], halves[0])]
    rows, t_all = {}, time.time()
    for name in a.candidates:
        bb = load_backbone(name)
        t0 = time.time()
        km = [baseline(bb, fit, ev, 11, seed=s, device='cpu') for fit, ev in folds for s in a.seeds]
        probes = []
        for fit, ev in folds:
            head = fit_linear_probe(bb, fit, val.n_classes, seed=0)
            probes.append(evaluate(bb, ev, linear_head=head, device='cpu').linear)
        rows[name] = {'stages': list(bb.out), 'stride': bb.patch_size, 'channels': bb.embed_dim,
                      'kmeans_miou': stats([r.miou for r in km]), 'kmeans_acc': stats([r.acc for r in km]),
                      'probe_miou': stats([r['miou'] for r in probes]), 'probe_acc': stats([r['acc'] for r in probes]),
                      'seconds': round(time.time() - t0, 1), 'loadavg_1min': round(os.getloadavg()[0], 2)}
        print(f"{name:24} k-means mIoU {rows[name]['kmeans_miou']['mean']:5.1f} ± {rows[name]['kmeans_miou']['sd']:.1f}   "
              f"probe mIoU {rows[name]['probe_miou']['mean']:5.1f}   ({rows[name]['seconds']:.0f} s, load {rows[name]['loadavg_1min']})", flush=True)
    chosen = max(rows, key=lambda k: rows[k]['kmeans_miou']['mean'])
    res = {'protocol': 'CamVid val only: fit on one half in time, score on the other, both ways; k-means K=11 cosine over seeds '
                       f'{a.seeds}; converged L-BFGS linear probe; native 360x480, no flip, no CRF, CPU',
           'data': str(root), 'n_val_images': n, 'rule': 'default = best mean k-means mIoU', 'chosen': chosen,
           'default_stages': list(BACKBONES[chosen].out), 'rows': rows, 'seconds': round(time.time() - t_all, 1),
           'torch_threads': torch.get_num_threads()}
    atomic_write_text(a.out, json.dumps(res, indent=1) + "\n")
    print(f'chosen: {chosen} ({"+".join(BACKBONES[chosen].out)}); wrote {a.out}')


if __name__ == '__main__': main()
