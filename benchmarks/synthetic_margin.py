#!/usr/bin/env python
"""Does a method beat k-means on the same frozen features? Synthetic scenes, a random backbone, several seeds.

For each seed: synthetic scenes drawn with that seed (train and val splits), a randomly initialised backbone
with that seed, then
  * the baseline: `usseg.evaluate.baseline`, k-means fitted on the TRAIN split's features of that backbone,
    scored on the val split (Hungarian matching);
  * the method: `usseg.methods.train(METHOD, 'synthetic', ...)` with the same backbone and seed, its cluster
    probe (and linear probe) scored on the same val split with `Run.evaluate`.
Both are scored with and without flip test-time augmentation; the headline margin uses the method's own
protocol (STEGO: flip on, HP: off) for both. Nothing is chosen on the val split: the method runs its fixed
number of steps and its last checkpoint is scored.

    python benchmarks/synthetic_margin.py --method stego --seeds 0 1 2
    python benchmarks/synthetic_margin.py --method hp --seeds 0 1 2
    python benchmarks/synthetic_margin.py --method stego --seeds 100 101 --set dim=64 --out /tmp/tune.json   # tuning seeds

Writes benchmarks/results/synthetic_margin_<method>.json (per seed, and the mean and standard deviation of the
margin; per-class IoU on both sides). As a diagnostic it also runs the baseline's own k-means (same settings, same
fit split) on the method's trained code: the same clusterer on both sides, so only the representation differs.
With `--offline-probe` it also fits a linear probe to convergence (L-BFGS on sampled training pixels, the same
procedure for every input) on the frozen features, on the keys (with `--keys-baseline`) and on the trained code,
and scores it on the val split like the method's own linear probe: how much of its input's linearly readable
information the code keeps, free of how long the in-training probe was trained.
The method's settings are `Config.synthetic()` (`usseg.methods.*`) plus any `--set KEY=VALUE`; the scene settings
default to the ones the settings were tuned for (96 px, 200 images per split, 8 classes).
Any method in the registry works (`--method smooseg`, ...) once it has a synthetic setting.
"""
import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import usseg  # noqa: F401  (compat shim before timm)
from usseg.backbones import load_backbone
from usseg.data import get_dataset
from usseg.data.transforms import EvalTransform
from usseg.evaluate import baseline, evaluate
from usseg.methods import get_method, train

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, write  # noqa: E402


def _kv(s):
    k, v = s.split('=', 1)
    try: v = json.loads(v)
    except json.JSONDecodeError: pass
    return k, v


def margin(a:dict, b:dict) -> dict:
    "Cluster mIoU and accuracy of `a` minus those of `b` (two `scores` dicts)."
    return {k: round(a[f'cluster_{k}'] - b[f'cluster_{k}'], 2) for k in ('miou', 'acc')}


def scores(res) -> dict:
    out = {'cluster_miou': round(res.cluster['miou'], 2), 'cluster_acc': round(res.cluster['acc'], 2),
           'cluster_iou': [round(x, 1) for x in res.cluster['iou']]}   # per class, in the dataset's class order
    if res.linear is not None: out.update(linear_miou=round(res.linear['miou'], 2), linear_acc=round(res.linear['acc'], 2))
    if 'miou_upstream_drop' in res.cluster:   # extra clusters (EAGLE): also upstream's drop-extra-clusters convention
        out.update(cluster_miou_upstream_drop=round(res.cluster['miou_upstream_drop'], 2),
                   cluster_acc_upstream_drop=round(res.cluster['acc_upstream_drop'], 2))
    return out


class KeysOf(torch.nn.Module):
    "The keys of a ViT's last `n` blocks, concatenated (EAGLE's input features) as a feature function for `baseline`."
    def __init__(self, bb, n): super().__init__(); self.bb, self.n = bb, n
    @torch.no_grad()
    def forward(self, img): return torch.cat(self.bb.features(img, self.n, ('keys',))['keys'], 1)   # (B, n*C, h, w)


def fit_linear_probe(feature_fn, dataset, n_classes:int, n_points:int=60_000, seed:int=0, flip:bool=False,
                     device='cpu', max_iter:int=300, weight_decay:float=1e-4) -> torch.nn.Conv2d:
    """A 1x1-conv linear probe on `feature_fn`'s output, fitted to convergence: `n_points` labelled pixels drawn
    evenly from `dataset` (features upsampled to the label grid as the evaluation does), standardised, then
    multinomial logistic regression by full-batch L-BFGS; the standardisation is folded into the returned conv."""
    g = torch.Generator().manual_seed(seed)
    per_image = -(-n_points // len(dataset))
    xs, ys = [], []
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=8, shuffle=False):
            img, lab = batch['img'].to(device), batch['label']
            f = feature_fn(img)
            if flip: f = (f + feature_fn(img.flip(-1)).flip(-1))/2
            f = F.interpolate(f.float(), lab.shape[-2:], mode='bilinear', align_corners=False).cpu()
            for x, y in zip(f, lab):
                ok = (y >= 0).flatten().nonzero().squeeze(1)
                pick = ok[torch.randperm(len(ok), generator=g)[:per_image]]
                xs.append(x.flatten(1)[:, pick].T); ys.append(y.flatten()[pick])
    x, y = torch.cat(xs).double(), torch.cat(ys)
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mu)/sd
    lin = torch.nn.Linear(x.shape[1], n_classes).double()
    opt = torch.optim.LBFGS(lin.parameters(), lr=1, max_iter=max_iter, line_search_fn='strong_wolfe')
    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(z), y) + weight_decay*lin.weight.pow(2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    conv = torch.nn.Conv2d(x.shape[1], n_classes, 1)
    with torch.no_grad():
        w = lin.weight/sd
        conv.weight.copy_(w[:, :, None, None].float()); conv.bias.copy_((lin.bias - w @ mu).float())
    return conv.to(device)


def offline_probe(feature_fn, fit_ds, val_ds, n_classes, seed, flip, device) -> dict:
    "Linear mIoU and accuracy on `val_ds` of `fit_linear_probe` fitted on `fit_ds`."
    head = fit_linear_probe(feature_fn, fit_ds, n_classes, seed=seed, flip=flip, device=device)
    lin = evaluate(feature_fn, val_ds, linear_head=head, flip=flip, device=device).linear
    return {'linear_miou': round(lin['miou'], 2), 'linear_acc': round(lin['acc'], 2)}


def one_seed(method, seed, work, a, overrides) -> dict:
    kw = dict(n_images=a.n_images, size=a.size, n_classes=a.n_classes)
    root = work/'data'
    ds = lambda split: get_dataset('synthetic', root, split, transform=EvalTransform(a.size), seed=seed, **kw)
    fit_ds, val_ds = ds('train'), ds('val')
    bb = load_backbone(a.backbone, weights='random', seed=seed)
    t0 = time.time()
    base = {f: baseline(bb, fit_ds, val_ds, a.n_classes, seed=seed, flip=f, fit_split='train', device=a.device)
            for f in (False, True)}
    t_base = time.time() - t0
    if a.keys_baseline:   # optional second baseline: k-means on the keys of the last N blocks
        kb = KeysOf(bb, a.keys_baseline)
        base_keys = {f: baseline(kb, fit_ds, val_ds, a.n_classes, seed=seed, flip=f, fit_split='train', device=a.device)
                     for f in (False, True)}
    t0 = time.time()
    run = train(method, 'synthetic', root, work/f'{method}-s{seed}', backbone=a.backbone, weights='random', steps=a.steps,
                image_size=a.size, device=a.device, seed=seed, smoke=False, config=overrides or None, progress='none',
                save_every=0, dataset_kw={**kw, 'seed': seed})
    t_train = time.time() - t0
    ev = {f: run.evaluate(flip=f, save=False, device=a.device) for f in (False, True)}
    flip = run.task.flip
    run.task.eval()   # diagnostic: the baseline's own k-means (same settings, same fit split) on the trained code
    code_km = {f: baseline(run.task.code, fit_ds, val_ds, a.n_classes, seed=seed, flip=f, fit_split='train', device=a.device)
               for f in (False, True)}
    rec = {'seed': seed, 'method_flip': flip, 'class_names': list(val_ds.class_names),
           'baseline': {'no_flip': scores(base[False]), 'flip': scores(base[True]), 'kmeans_backend': base[False].settings['kmeans']['backend']},
           'method': {'no_flip': scores(ev[False]), 'flip': scores(ev[True]), 'steps': run.step},
           'kmeans_on_code': {'no_flip': scores(code_km[False]), 'flip': scores(code_km[True])},
           'seconds': {'baseline': round(t_base, 1), 'train': round(t_train, 1)}}
    if a.keys_baseline:
        rec['baseline_keys'] = {'blocks': a.keys_baseline, 'no_flip': scores(base_keys[False]), 'flip': scores(base_keys[True])}
    if a.offline_probe:   # diagnostic: the same converged linear probe on the input and on the trained code
        inputs = {'features': bb, **({'keys': kb} if a.keys_baseline else {}), 'code': run.task.code}
        rec['offline_probe'] = {k: offline_probe(fn, fit_ds, val_ds, a.n_classes, seed, flip, a.device) for k, fn in inputs.items()}
        print(f"seed {seed}: converged linear probe mIoU " + ', '.join(f"{k} {v['linear_miou']:.2f}" for k, v in rec['offline_probe'].items()), flush=True)
    if a.crf:
        rec['baseline']['crf'] = scores(baseline(bb, fit_ds, val_ds, a.n_classes, seed=seed, flip=flip, crf=True, device=a.device))
        rec['method']['crf'] = scores(run.evaluate(flip=flip, crf=True, save=False, device=a.device))
    key = 'flip' if flip else 'no_flip'
    m, b = rec['method'][key], rec['baseline'][key]
    rec['margin'] = margin(m, b)
    ck = rec['kmeans_on_code'][key]   # the same clusterer on both sides: only the representation differs
    rec['margin_same_kmeans'] = margin(ck, b)
    if a.keys_baseline:
        bk = rec['baseline_keys'][key]
        rec['margin_keys'] = margin(m, bk)
    if a.crf: rec['margin_crf'] = margin(rec['method']['crf'], rec['baseline']['crf'])
    print(f"seed {seed}: {method} cluster mIoU {m['cluster_miou']:.2f} acc {m['cluster_acc']:.2f} | k-means mIoU {b['cluster_miou']:.2f} "
          f"acc {b['cluster_acc']:.2f} | margin mIoU {rec['margin']['miou']:+.2f} acc {rec['margin']['acc']:+.2f} "
          f"| k-means on the code mIoU {ck['cluster_miou']:.2f} ({rec['margin_same_kmeans']['miou']:+.2f}) | train {t_train:.0f} s" + (f" | k-means on keys mIoU {bk['cluster_miou']:.2f}, margin {rec['margin_keys']['miou']:+.2f}"
                                         if a.keys_baseline else ''), flush=True)
    return rec


def summary(values) -> dict:
    return {'mean': round(statistics.mean(values), 2), 'std': round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
            'min': min(values), 'max': max(values), 'n': len(values)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--method', required=True, help='a registry name: stego, hp, ...')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--backbone', default='vit_tiny8', help='randomly initialised (default: %(default)s)')
    p.add_argument('--size', type=int, default=96, help='image side (default: %(default)s)')
    p.add_argument('--n-images', type=int, default=200, help='scenes per split (default: %(default)s)')
    p.add_argument('--n-classes', type=int, default=8)
    p.add_argument('--steps', type=int, default=None, help="training steps (default: the method's synthetic setting)")
    p.add_argument('--set', type=_kv, action='append', default=[], metavar='KEY=VALUE', help='override a setting of the method')
    p.add_argument('--crf', action='store_true', help='also score both with the dense CRF')
    p.add_argument('--keys-baseline', type=int, default=0, metavar='N',
                   help='also k-means on the keys of the last N blocks (EAGLE reads those: --keys-baseline 2)')
    p.add_argument('--offline-probe', action='store_true',
                   help='also a linear probe fitted to convergence on the features, the keys and the trained code')
    p.add_argument('--threads', type=int, default=1, help='torch threads (default 1: steadier on a shared CPU)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--work', default=None, help='keep scenes and runs here (default: a temporary folder, removed)')
    p.add_argument('--out', default=None, help='result file (default: benchmarks/results/synthetic_margin_<method>.json)')
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    get_method(a.method)
    overrides = dict(a.set)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix='usseg_margin_'))
    t0 = time.time()
    try: recs = [one_seed(a.method, s, work, a, overrides) for s in a.seeds]
    finally:
        if not a.work: shutil.rmtree(work, ignore_errors=True)
    cfg = get_method(a.method).default_config('synthetic', a.backbone)
    res = {'what': __doc__.split('\n\n')[0], 'method': a.method,
           'setting': {'scenes': {'size': a.size, 'n_images_per_split': a.n_images, 'n_classes': a.n_classes},
                       'backbone': f'{a.backbone}, random weights (seed = the seed)', 'steps': a.steps or cfg.max_steps,
                       'config': 'Config.synthetic()', 'overrides': overrides, 'threads': a.threads, 'device': a.device},
           'seeds': recs,
           'margin_miou': summary([r['margin']['miou'] for r in recs]), 'margin_acc': summary([r['margin']['acc'] for r in recs]),
           'margin_same_kmeans_miou': summary([r['margin_same_kmeans']['miou'] for r in recs]),
           'method_cluster_miou': summary([r['method']['flip' if r['method_flip'] else 'no_flip']['cluster_miou'] for r in recs]),
           'baseline_cluster_miou': summary([r['baseline']['flip' if r['method_flip'] else 'no_flip']['cluster_miou'] for r in recs]),
           'total_seconds': round(time.time() - t0, 1), 'machine': machine()}
    if a.keys_baseline:
        res['margin_keys_miou'] = summary([r['margin_keys']['miou'] for r in recs])
        res['margin_keys_acc'] = summary([r['margin_keys']['acc'] for r in recs])
    if a.offline_probe:
        res['offline_probe_linear_miou'] = {k: summary([r['offline_probe'][k]['linear_miou'] for r in recs])
                                            for k in recs[0]['offline_probe']}
    if a.crf: res['margin_crf_miou'] = summary([r['margin_crf']['miou'] for r in recs])
    print(f"{a.method}: margin over k-means, mIoU {res['margin_miou']['mean']:+.2f} ± {res['margin_miou']['std']:.2f}, "
          f"accuracy {res['margin_acc']['mean']:+.2f} ± {res['margin_acc']['std']:.2f} ({len(recs)} seeds, {res['total_seconds']:.0f} s)")
    if a.out:
        from usseg.core import atomic_write_text
        atomic_write_text(a.out, json.dumps(res, indent=1) + '\n'); print(f'wrote {a.out}')
    else: write(f'synthetic_margin_{a.method}', res)
    return res


if __name__ == '__main__':
    main()
