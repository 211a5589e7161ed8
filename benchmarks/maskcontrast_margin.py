#!/usr/bin/env python
"""Does MaskContrast's training improve on the network it starts from? CamVid photos, the offline ImageNet backbone,
several seeds.

For each seed, on the same images and with the same evaluation protocol:
  * **MaskContrast**: `usseg.methods.train('maskcontrast', ...)` in the CPU real setting (`MaskContrastConfig.camvid()`:
    EfficientNet-Lite0 at stride 8 with its ImageNet weights from pip, the DeepLab head, TokenCut masks computed on
    the training photos by the same initial backbone), trained on the CamVid **val** photos (101), then its probes
    (cluster and linear, `probe_steps` steps on the frozen 32-d embeddings of the same val photos);
  * **the initial network**: `train('probe', ...)`: the same probes, the same steps, batch and images, on the features
    of the same backbone before any MaskContrast step (its 40-channel stride-8 map).
Both are scored on the CamVid **test** photos (233) by the evaluation `train` runs at the end of training (the
protocol of `Run.evaluate`: Hungarian-matched cluster mIoU and linear-probe mIoU, flip test-time augmentation, no
CRF), read from the runs' `metrics.jsonl`. Nothing is tuned: the settings are fixed before the run, the
last checkpoint is scored, and the test split is read only by the evaluation. The margins are reported whatever
their sign; each seed also records what the method trained on (how many images post-processing kept, how much of
each mask falls on the object classes) and its training curve, the evidence for what limits the margin.

    python benchmarks/maskcontrast_margin.py --seeds 0 1 2                       # CamVid (USSEG_SHARED_DATA or ../shared/data)
    python benchmarks/maskcontrast_margin.py --dataset synthetic --seeds 0 1 2   # synthetic scenes (train -> val)
    python benchmarks/maskcontrast_margin.py --seeds 0 --set momentum=0.99 --tag _m099 --runs DIR   # an ablation (same baseline runs)

Writes benchmarks/results/maskcontrast_margin_<dataset>.json after every seed (a run folder that exists is resumed).
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import usseg  # noqa: F401  (compat shim before timm)
from usseg.core import set_threads
from usseg.data import get_dataset
from usseg.data.transforms import EvalTransform
from usseg.methods import train
from usseg.priors.saliency import foreground, object_classes

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS as RESULTS_DIR, machine, write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _kv(s:str) -> tuple:
    k, v = s.split('=', 1)
    try: v = json.loads(v)
    except json.JSONDecodeError: pass
    return k, v


def camvid_root() -> Path:
    shared = Path(os.environ.get('USSEG_SHARED_DATA', ROOT.parent/'shared'/'data'))
    return shared/'camvid_segnet'


def scores(metrics_file:Path) -> dict:
    "The run's last evaluation record (`Run.evaluate`'s protocol, logged by the learner at the end of training)."
    ev = [json.loads(l) for l in Path(metrics_file).read_text().splitlines() if '"split": "eval"' in l]
    if not ev: raise RuntimeError(f'{metrics_file} holds no evaluation: did the run finish?')
    return {k: round(ev[-1][k], 2) for k in ('step', 'cluster_miou', 'cluster_acc', 'linear_miou', 'linear_acc')}


def finished(metrics_file:Path, step:int) -> bool:
    "Whether a run has its final evaluation at `step` (then it is read, not resumed: nothing is recomputed)."
    p = Path(metrics_file)
    return p.is_file() and any(json.loads(l).get('step') == step for l in p.read_text().splitlines() if '"split": "eval"' in l)


def mask_stats(run_dir:Path, ds) -> dict:
    "What the training stage learnt from: images kept, foreground share, and how much of each mask lies on the object classes."
    saved = torch.load(run_dir/'saliency'/'masks.pt', weights_only=True)
    m, keep = saved['masks'], saved['keep']
    objs = object_classes(ds)
    on_obj, obj_share, fg = [], [], []
    for i in range(len(ds)):
        lab = ds[i]['label']
        f, valid = foreground(lab, objs)                         # the object classes' pixels, the labelled ones
        mi = m[i] & valid
        fg.append(float(m[i].float().mean()))
        if mi.any(): on_obj.append(float((mi & f).sum()/mi.sum()))
        obj_share.append(float(f[valid].float().mean()) if valid.any() else 0.0)
    return {'n_images': len(ds), 'kept': int(keep.sum()), 'mask_foreground_share': round(statistics.mean(fg), 4),
            'mask_on_object_classes': round(statistics.mean(on_obj), 4) if on_obj else None,
            'object_share_of_pixels': round(statistics.mean(obj_share), 4), 'object_classes': [ds.class_names[c] for c in objs]}


@torch.no_grad()
def prototype_spread(run_dir:Path, seed:int, n:int=16) -> dict:
    """How far apart the key prototypes of different images are, before and after training: the mean cosine between
    the prototypes of `n` training views (1: all alike, nothing to tell the images apart by) and the contrastive
    loss of chance, ln(B + K)."""
    from usseg.learner import isolated_rng
    from usseg.losses.maskcontrast import mask_pool
    from usseg.methods import load_run
    from usseg.methods.maskcontrast import MaskContrastMethod, MaskContrastViews
    run = load_run(run_dir, device='cpu')
    cfg, ds = run.task.cfg, run.spec.split_dataset(run.spec.train_split, train=True)
    with isolated_rng(seed): init = MaskContrastMethod.build(run.spec.build_backbone(), cfg.n_classes, cfg)
    saved = torch.load(run_dir/'saliency'/'masks.pt', weights_only=True)
    views = MaskContrastViews(ds, saved['masks'], saved['keep'], cfg.crop_size, cfg.crop_scale, cfg.min_area, cfg.max_area)
    with isolated_rng(seed): items = [views[i] for i in range(min(n, len(views)))]
    img, sal = torch.stack([it['img_key'] for it in items]), torch.stack([it['saliency_key'] for it in items])
    out = {}
    for name, task in (('initial', init), ('trained', run.task)):
        task.eval()
        k, _ = task.embed(img, key=True, size=img.shape[-2:])
        p = mask_pool(torch.nn.functional.normalize(k, dim=1), sal)
        c = p @ p.T
        out[f'{name}_mean_cosine'] = round(float((c.sum() - c.diagonal().sum())/(len(p)*(len(p) - 1))), 4)
    out['chance_loss_ln_B_plus_K'] = round(float(torch.log(torch.tensor(float(cfg.batch_size + cfg.queue_size)))), 4)
    return out


def curve(run_dir:Path) -> dict:
    recs = [json.loads(l) for l in (run_dir/'train'/'metrics.jsonl').read_text().splitlines()]
    tr = [r for r in recs if r.get('split') == 'train']
    pick = lambda k: [round(r[k], 4) for r in tr if k in r]
    return {'step': [r['step'] for r in tr], 'loss': pick('loss'), 'contrastive': pick('contrastive'), 'saliency': pick('saliency'),
            'top1': pick('top1')}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--dataset', default='camvid', choices=['camvid', 'synthetic'])
    p.add_argument('--data-root', default=None)
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--steps', type=int, default=None, help="contrastive steps (default: the setting's max_steps)")
    p.add_argument('--probe-steps', type=int, default=None, help="probe steps on both sides (default: the setting's probe_steps)")
    p.add_argument('--runs', default=None, help='folder of the run folders (default: a temporary folder)')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                   help='change a MaskContrast setting (an ablation: its run folders and JSON get --tag)')
    p.add_argument('--tag', default='', help='suffix of the run folders and of the JSON name (needed with --set)')
    p.add_argument('--out', default=None)
    a = p.parse_args(argv)
    changes = dict(_kv(x) for x in a.set)
    if changes and not a.tag: p.error('--set changes the method: give the ablation a --tag (its runs and JSON are kept apart)')
    set_threads(a.threads)
    from usseg.methods.maskcontrast import MaskContrastConfig
    cfg = getattr(MaskContrastConfig, a.dataset)()
    steps, pst = a.steps or cfg.max_steps, a.probe_steps or cfg.probe_steps
    if a.dataset == 'camvid':
        root = Path(a.data_root) if a.data_root else camvid_root()
        if not (root/'CamVid'/'val').is_dir(): sys.exit(f'no CamVid under {root} (CamVid/val, CamVid/test): pass --data-root')
        splits, kw = dict(train_split='val', eval_split='test'), {}
    else:
        root = Path(a.data_root or tempfile.mkdtemp(prefix='usseg_mc_data_'))
        splits, kw = dict(train_split='train', eval_split='val'), {'n_images': 200, 'n_classes': 8}
    runs = Path(a.runs or tempfile.mkdtemp(prefix='usseg_mc_runs_'))
    common = dict(backbone='efficientnet_lite0_s8', weights='pretrained', device='cpu', progress='none', save_every=50,
                  image_size=cfg.image_size, batch_size=cfg.batch_size, **splits)
    out = {'benchmark': 'MaskContrast vs the initial network (same probes, same images, same protocol)', 'dataset': a.dataset,
           'train_split': splits['train_split'], 'eval_split': splits['eval_split'], 'config': cfg.source, 'steps': steps,
           'probe_steps': pst, 'batch_size': cfg.batch_size, 'queue_size': cfg.queue_size, 'crop_size': cfg.crop_size,
           'image_size': cfg.image_size, 'prior': cfg.prior, 'lr': cfg.lr, 'backbone': 'efficientnet_lite0_s8 (ImageNet, pip), all layers train',
           'changes': changes, 'seeds': [], 'machine_start': machine()}
    name = a.out or f'maskcontrast_margin_{a.dataset}{a.tag}'
    before = {}                                   # a finished seed keeps the timings of the run that trained it
    if Path(RESULTS_DIR/f'{name}.json').is_file() and not a.out:
        before = {r['seed']: r for r in json.loads((RESULTS_DIR/f'{name}.json').read_text())['seeds']}
    for seed in a.seeds:
        rec = {'seed': seed}
        t0 = time.perf_counter()
        d = runs/f'maskcontrast_s{seed}{a.tag}'
        if not finished(d/'probe'/'metrics.jsonl', pst):
            train('maskcontrast', a.dataset, root, d, seed=seed, steps=steps, config={'probe_steps': pst, **changes}, resume=d.exists(),
                  dataset_kw=dict(kw, seed=seed) if kw else None, **common)
            rec['train_seconds'] = round(time.perf_counter() - t0, 1)
        else: rec['train_seconds'] = before.get(seed, {}).get('train_seconds')
        rec['method'] = scores(d/'probe'/'metrics.jsonl')
        ds = get_dataset(a.dataset, root, splits['train_split'], transform=EvalTransform(cfg.image_size), **(dict(kw, seed=seed) if kw else {}))
        rec['masks'] = mask_stats(d, ds)
        rec['curve'] = curve(d)
        rec['prototypes'] = prototype_spread(d, seed)
        t1 = time.perf_counter()
        bd = runs/f'probe_s{seed}'
        if not finished(bd/'metrics.jsonl', pst):
            train('probe', a.dataset, root, bd, seed=seed, steps=pst, resume=bd.exists(),
                  dataset_kw=dict(kw, seed=seed) if kw else None, **common)
            rec['baseline_seconds'] = round(time.perf_counter() - t1, 1)
        else: rec['baseline_seconds'] = before.get(seed, {}).get('baseline_seconds')
        rec['baseline'] = scores(bd/'metrics.jsonl')
        rec['margin'] = {k: round(rec['method'][k] - rec['baseline'][k], 2) for k in ('cluster_miou', 'linear_miou', 'cluster_acc', 'linear_acc')}
        rec['load_average_1m'] = round(os.getloadavg()[0], 2)
        out['seeds'].append(rec)
        print(f"seed {seed}: MaskContrast cluster {rec['method']['cluster_miou']:.1f} linear {rec['method']['linear_miou']:.1f} | "
              f"initial cluster {rec['baseline']['cluster_miou']:.1f} linear {rec['baseline']['linear_miou']:.1f} | margins "
              f"{rec['margin']['cluster_miou']:+.1f} / {rec['margin']['linear_miou']:+.1f} ({rec['train_seconds']} s + {rec['baseline_seconds']} s)", flush=True)
        for k in ('cluster_miou', 'linear_miou'):
            v = [s['margin'][k] for s in out['seeds']]
            out[f'margin_{k}'] = {'mean': round(statistics.mean(v), 2), 'std': round(statistics.stdev(v), 2) if len(v) > 1 else None, 'per_seed': v}
        out['machine_end'] = machine()
        write(name, out)


if __name__ == '__main__':
    main()
