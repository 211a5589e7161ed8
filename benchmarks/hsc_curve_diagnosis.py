#!/usr/bin/env python
"""Why HSC's seeds trail the plain CAM's in `hsc_margin.py`: its threshold curve on the training split still rises at
upstream's last threshold (0.59). This recomputes each run's curve from the CAMs its `pseudo_labels` stage stored
(training split only, the evaluation split is not read) over t = 0.00 ... 0.99, and records the best point of the wider
curve beside the upstream range's, and the share of each class's CAM mass in the foreground / background of the truth.

    python benchmarks/hsc_curve_diagnosis.py --runs /tmp/usseg_hsc_margin --dataset synthetic

Adds `curve_wide` to each run of benchmarks/results/hsc_margin_<dataset>.json (the file the margin script wrote).
"""
import argparse
import json
import sys
from pathlib import Path

import torch

import usseg  # noqa: F401  (compat shim before timm)
from usseg.methods import load_run
from usseg.priors.cam import cam_curve

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, machine, write


def diagnose(run_dir:Path) -> dict:
    run = load_run(run_dir, device='cpu')
    ds = run.spec.split_dataset(run.spec.train_split, train=True)
    cls, gts = run.task.wsss_labels(ds)
    cams = run.task._load_cams(run_dir/'pseudo_labels'/'cams', len(ds))
    wide = cam_curve(cams, gts, cls, thresholds=[i / 100 for i in range(100)])
    fg = torch.stack([(c.amax(0) * (g > 0)).sum() / c.amax(0).sum().clamp_min(1e-9) for c, g in zip(cams, gts) if (g > 0).any()])
    return {'best_t': wide.best_t, 'best_miou': wide.best_miou, 'miou': [round(float(v), 3) for v in wide.miou],
            'cam_mass_on_truth_foreground_mean': round(float(fg.mean()), 4),
            'mean_cam_value_background': round(float(torch.stack([c.amax(0)[g == 0].mean() for c, g in zip(cams, gts) if (g == 0).any()]).mean()), 4),
            'mean_cam_value_foreground': round(float(torch.stack([c.amax(0)[g > 0].mean() for c, g in zip(cams, gts) if (g > 0).any()]).mean()), 4)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--runs', default='/tmp/usseg_hsc_margin')
    p.add_argument('--dataset', default='synthetic')
    p.add_argument('--file', default=None, help='the margin JSON (default: results/hsc_margin_<dataset>.json)')
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    f = Path(a.file) if a.file else RESULTS/f'hsc_margin_{a.dataset}.json'
    res = json.loads(f.read_text())
    for r in res['runs']:
        d = Path(a.runs)/f"{a.dataset}_{r['method']}_s{r['seed']}"
        r['curve_wide'] = diagnose(d)
        print(r['method'], r['seed'], {k: v for k, v in r['curve_wide'].items() if k != 'miou'}, flush=True)
    res['machine_diagnosis'] = machine()
    write(str(f), res)


if __name__ == '__main__':
    main()
