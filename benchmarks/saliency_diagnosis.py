"""Why a saliency prior scores what it scores: what the cut picks, whether another cut would have found the objects,
and whether the features hold the objects at all.

    python benchmarks/saliency_diagnosis.py            ->  benchmarks/results/saliency_diagnosis.json
    python benchmarks/saliency_diagnosis.py --dry-run --out /tmp/d.json   (random tiny ViT, 8 images: the code path only)

Diagnostics, not methods: they use the labels, so none of them is a saliency prior, and nothing here is chosen on
the test split. On the test scenes / photos of `benchmarks/saliency.py` (same sizes, same foreground classes):

- `cut`: what the object side of TokenCut's cut and of the spectral prior (v > 0) holds: its share of the image,
  the share of it that is foreground (the precision at the cut; a cut blind to objects holds the image's
  foreground share, `image_fg_share`), and the class the side matches best (largest IoU with one class's pixels),
  counted over images and split into objects ('thing') and surfaces ('stuff').
- `eigs_oracle_iou`: the best IoU with the true foreground among the first k non-trivial eigenvectors of the
  spectral prior's Laplacian (features + colour), each cut at 0 with either sign: whether *some* cut of the same
  graph finds the objects, when the labels pick it. k = 1 is the oracle sign of the paper's own cut.
- `probe`: a logistic regression from one patch's features to "this patch is mostly foreground", fitted on the
  val split (L-BFGS, balanced classes) and scored on test with the saliency metrics: what the features hold
  linearly about objecthood, an upper bound for a prior built on them.
- `layout`: where the foreground lies (labels only): its share inside the centre prior's core (map > 0.5) and
  outside it, per sixth of the image height (top to bottom), and its 8-connected segments per image.
- `versus_centre` (synthetic scenes): every variant of `benchmarks/saliency.py` against the centre prior, paired
  over the same images: the difference in max F (mean P/R curves) and in mean IoU, with a 95 % bootstrap interval
  (1,000 resamples of the images, seed 0) and the share of resamples in which the variant is ahead.
"""
import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import cpu_model, machine, write  # noqa: E402


def batches(ds, batch_size):
    "(images, labels) of `ds` in batches."
    from usseg.features import _collate_images
    for i in range(0, len(ds), batch_size):
        items = [ds[j] for j in range(i, min(i + batch_size, len(ds)))]
        yield _collate_images(items), torch.stack([it['label'] for it in items])


def side_stats(side: torch.Tensor, label: torch.Tensor, fg: torch.Tensor, valid: torch.Tensor, kinds: dict, names) -> list:
    "Per image: share of the image on the object side, its foreground precision, the class it matches best."
    up = F.interpolate(side[:, None].float(), size=label.shape[-2:], mode='nearest')[:, 0].bool()
    out = []
    for s, l, g, v in zip(up, label, fg, valid):
        s, l, g = s[v], l[v], g[v]
        area = s.float().mean().item()
        prec = g[s].float().mean().item() if s.any() else float('nan')
        ious = {int(c): ((s & (l == c)).sum()/(s | (l == c)).sum()).item() for c in l.unique().tolist()}
        best = max(ious, key=ious.get)
        out.append((area, prec, names[best], kinds[best]))
    return out


def oracle_iou(W: torch.Tensor, fg_patch: torch.Tensor, ks=(1, 2, 4, 8)) -> dict:
    "Best IoU (patch grid) with the foreground among the first k non-trivial eigenvectors cut at 0, either sign."
    from usseg.losses.eagle import normalized_laplacian
    _, y = torch.linalg.eigh(normalized_laplacian(W))
    v = y/W.sum(-1).sqrt()[..., None]                                   # generalised eigenvectors, ascending
    g = fg_patch.flatten(1)
    iou = lambda m: ((m & g).sum(1)/(m | g).sum(1).clamp_min(1)).double()
    per = torch.stack([torch.maximum(iou(v[:, :, j] > 0), iou(v[:, :, j] <= 0)) for j in range(1, max(ks) + 1)], 1)  # (B, K)
    return {k: per[:, :k].amax(1) for k in ks}


def paired_bootstrap(ds, priors: dict, fgc, batch_size: int, n_boot: int = 1000, seed: int = 0) -> dict:
    "Each prior against `priors['centre']` on the same images: max-F and IoU differences with bootstrap intervals."
    from usseg.priors.saliency import SaliencyMeter, foreground
    meters = {n: SaliencyMeter() for n in priors}
    for img, label in batches(ds, batch_size):
        fg, valid = foreground(label, fgc)
        for n, p in priors.items(): meters[n].update(p(img), fg, valid)
    b = SaliencyMeter().beta2
    def max_f(P, R): return ((1 + b)*P*R/(b*P + R).clamp_min(1e-12)).amax(-1)           # P, R: (..., T) mean curves
    idx = torch.randint(0, len(ds), (n_boot, len(ds)), generator=torch.Generator().manual_seed(seed))
    curves = {n: (torch.stack(m.precision), torch.stack(m.recall), torch.tensor(m.iou, dtype=torch.float64)) for n, m in meters.items()}
    def stats(n):
        P, R, I = curves[n]
        return max_f(P.mean(0), R.mean(0)), max_f(P[idx].mean(1), R[idx].mean(1)), I.mean(), I[idx].mean(1)
    c = stats('centre')
    out = {}
    for n in priors:
        if n == 'centre': continue
        v = stats(n)
        df, di = v[1] - c[1], v[3] - c[3]
        q = lambda x: [round(float(t), 4) for t in torch.quantile(x, torch.tensor([0.025, 0.975], dtype=torch.float64))]
        out[n] = {'max_f_diff': round(float(v[0] - c[0]), 4), 'max_f_diff_95': q(df), 'max_f_ahead_share': round(float((df > 0).double().mean()), 3),
                  'iou_diff': round(float(v[2] - c[2]), 4), 'iou_diff_95': q(di), 'iou_ahead_share': round(float((di > 0).double().mean()), 3)}
    return out


def layout(ds, fgc, batch_size) -> dict:
    "Where the foreground lies: inside / outside the centre prior's core, per sixth of the height, segments per image."
    from scipy import ndimage

    from usseg.priors import CentrePrior
    from usseg.priors.saliency import foreground
    f_in = v_in = f_out = v_out = 0.0
    rows_f, rows_v, segs = 0.0, 0.0, []
    for img, label in batches(ds, batch_size):
        fg, valid = foreground(label, fgc)
        H, W = label.shape[-2:]
        core = F.interpolate(CentrePrior()(img[:1]), size=(H, W), mode='nearest')[0, 0] > 0.5
        f, v = (fg & valid).double(), valid.double()
        f_in += f[:, core].sum().item(); v_in += v[:, core].sum().item(); f_out += f[:, ~core].sum().item(); v_out += v[:, ~core].sum().item()
        rows_f, rows_v = rows_f + f.sum((0, 2)), rows_v + v.sum((0, 2))
        segs += [ndimage.label(g, structure=np.ones((3, 3), bool))[1] for g in (fg & valid).numpy()]
    bands = [float(rows_f[b].sum()/rows_v[b].sum().clamp_min(1)) for b in np.array_split(np.arange(len(rows_f)), 6)]
    return {'fg_share_in_centre_core': f_in/max(v_in, 1), 'fg_share_outside_core': f_out/max(v_out, 1),
            'centre_core_area': float(core.double().mean()), 'fg_share_by_height_sixth': [round(b, 4) for b in bands],
            'segments_per_image': {'median': float(np.median(segs)), 'mean': float(np.mean(segs))}}


def fit_probe(X: torch.Tensor, y: torch.Tensor, steps: int = 200, l2: float = 1e-4):
    "Balanced logistic regression (standardised inputs, L-BFGS): returns `x -> p(foreground)`."
    mu, sd = X.mean(0), X.std(0).clamp_min(1e-6)
    Z = ((X - mu)/sd).double(); t = y.double()
    w = torch.zeros(Z.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    pos = t.mean().clamp(1e-3, 1 - 1e-3)
    weight = torch.where(t > 0, 0.5/pos, 0.5/(1 - pos))
    opt = torch.optim.LBFGS([w], max_iter=steps, line_search_fn='strong_wolfe', tolerance_grad=1e-9)
    def closure():
        opt.zero_grad()
        loss = (weight*F.binary_cross_entropy_with_logits(Z @ w[:-1] + w[-1], t, reduction='none')).mean() + l2*(w[:-1]**2).sum()
        loss.backward(); return loss
    opt.step(closure)
    w = w.detach()
    return lambda x: torch.sigmoid(((x - mu)/sd).double() @ w[:-1] + w[-1])


def patch_foreground(fg, valid, grid):
    "Share of each patch's valid pixels that are foreground, on the backbone's grid."
    num = F.adaptive_avg_pool2d((fg & valid).double()[:, None], grid)[:, 0]
    den = F.adaptive_avg_pool2d(valid.double()[:, None], grid)[:, 0].clamp_min(1e-9)
    return num/den


def diagnose(backbone, val, test, fgc, kinds, names, batch_size) -> dict:
    from usseg.losses.eagle import code_affinity, colour_affinity, patch_colours
    from usseg.priors.saliency import SaliencyMeter, foreground, spectral_saliency, tokencut
    # the probe, fitted on val patches
    X, Y = [], []
    for img, label in batches(val, batch_size):
        f = backbone.intermediate(img, 1, 'tokens')[0]
        fg, valid = foreground(label, fgc)
        X.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])); Y.append((patch_foreground(fg, valid, f.shape[-2:]) > 0.5).flatten())
    probe = fit_probe(torch.cat(X), torch.cat(Y))
    val_fg_patches = float(torch.cat(Y).double().mean())
    # test
    rows = {'tokencut': [], 'spectral': []}
    oracle = {}
    meter = SaliencyMeter()
    shares = []
    for img, label in batches(test, batch_size):
        f = backbone.intermediate(img, 1, 'tokens')[0]
        fg, valid = foreground(label, fgc)
        shares += [g[v].double().mean().item() for g, v in zip(fg, valid)]
        rows['tokencut'] += side_stats(tokencut(f).mask, label, fg, valid, kinds, names)
        v, _ = spectral_saliency(f, img)
        rows['spectral'] += side_stats(v > 0, label, fg, valid, kinds, names)
        h, w = f.shape[-2:]
        W = code_affinity(F.normalize(f.double(), dim=1)) + colour_affinity(patch_colours(img.double(), (h, w)), 0.1)
        for k, x in oracle_iou(W, patch_foreground(fg, valid, (h, w)) > 0.5).items(): oracle.setdefault(k, []).append(x)
        p = probe(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])).reshape(len(img), 1, h, w).float()
        meter.update(p, fg, valid)
    cut = {}
    for n, r in rows.items():
        area, prec, best, kind = zip(*r)
        cut[n] = {'area': float(np.mean(area)), 'fg_precision': float(np.nanmean(prec)),
                  'best_class': dict(Counter(best).most_common()), 'best_class_kind': dict(Counter(kind).most_common())}
    return {'image_fg_share': float(np.mean(shares)), 'cut': cut,
            'eigs_oracle_iou': {f'k={k}': float(torch.cat(x).mean()) for k, x in oracle.items()},
            'probe': {**meter.compute('pr'), 'fitted_on': f'{len(val)} val images', 'val_fg_patch_share': round(val_fg_patches, 4)}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--backbones', nargs='+', default=['efficientnet_lite0_s8', 'efficientnet_lite0'])
    p.add_argument('--weights', default='pretrained')
    p.add_argument('--synthetic-n', type=int, default=200)
    p.add_argument('--synthetic-size', type=int, default=128)
    p.add_argument('--camvid-root', default=str(ROOT.parent/'shared'/'data'/'camvid_segnet'))
    p.add_argument('--camvid-size', type=int, nargs=2, default=(240, 320), metavar=('H', 'W'))
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--dry-run', action='store_true', help='random vit_tiny8, 8 synthetic images of 64 px, no CamVid')
    p.add_argument('--out', default='saliency_diagnosis')
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.dry_run: args.backbones, args.weights, args.synthetic_n, args.synthetic_size, args.camvid_root = ['vit_tiny8'], 'random', 8, 64, ''
    from usseg.backbones import load_backbone
    from usseg.data import get_dataset
    from usseg.data.synthetic import SyntheticScenes
    from usseg.data.transforms import EvalTransform
    from usseg.priors.saliency import object_classes
    sets = []
    mk = lambda split: SyntheticScenes(split, n_images=args.synthetic_n, size=args.synthetic_size, n_classes=8, seed=0)
    syn = mk('test')
    sets.append(('synthetic', mk('val'), syn, object_classes(syn), {i: s.kind for i, s in enumerate(syn.styles)}, syn.class_names))
    if args.camvid_root and Path(args.camvid_root).is_dir():
        cam = {s: get_dataset('camvid', args.camvid_root, s, transform=EvalTransform(tuple(args.camvid_size))) for s in ('val', 'test')}
        fgc = object_classes(cam['test'])
        sets.append(('camvid', cam['val'], cam['test'], fgc, {i: 'thing' if i in fgc else 'stuff' for i in range(len(cam['test'].class_names))},
                     cam['test'].class_names))
    res = {'what': __doc__.split('\n\n')[0], 'machine': {**machine(), 'cpu_model': cpu_model()}, 'runs': []}
    for b in args.backbones:
        bb = load_backbone(b, args.weights)
        run = {'backbone': {'name': bb.name, 'stride': bb.patch_size, 'channels': bb.embed_dim, 'fingerprint': bb.fingerprint()}, 'datasets': {}}
        for name, val, test, fgc, kinds, names in sets:
            t = time.perf_counter()
            d = diagnose(bb, val, test, fgc, kinds, names, args.batch_size)
            if name == 'synthetic':
                from benchmarks.saliency import variants
                d['versus_centre'] = paired_bootstrap(test, variants(bb), fgc, args.batch_size)
                print(b, name, 'versus centre', json.dumps(d['versus_centre']))
            d.update(n_images=len(test), seconds=round(time.perf_counter() - t, 1), layout=layout(test, fgc, args.batch_size))
            run['datasets'][name] = d
            print(b, name, {k: d[k] for k in ('image_fg_share', 'eigs_oracle_iou')}, {n: (round(c['fg_precision'], 3), c['best_class_kind'])
                  for n, c in d['cut'].items()}, 'probe max F %.3f IoU %.3f' % (d['probe']['max_f'], d['probe']['iou']))
        res['runs'].append(run)
    write(args.out, res)


if __name__ == '__main__': main()
