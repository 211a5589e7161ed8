"""Saliency priors against the centre prior: max F-measure, MAE and IoU on the synthetic test scenes and the CamVid
test photos, and the time per image of each variant.

    python benchmarks/saliency.py                      ->  benchmarks/results/saliency.json
                                                           nbs/images/saliency_{synthetic,camvid}.png
    python benchmarks/saliency.py --redraw                 ->  the pictures only, from the scored run (no scoring)
    python benchmarks/saliency.py --split val          ->  benchmarks/results/saliency_val.json (no pictures)
    python benchmarks/saliency.py --dry-run --out /tmp/s.json   (random tiny ViT, 4 images each: the code path only)

Ground truth foreground (`usseg.priors.saliency.object_classes`): the synthetic scenes' things (ball, box, leaf,
sign with 8 classes), CamVid's pole, sign, fence, car, pedestrian and bicyclist. CamVid photos are resized from
360 x 480 to 240 x 320 (labels nearest), which keeps a stride-8 graph at 1200 patches. Every variant runs with
the settings of its paper (TokenCut tau 0.2, eps 1e-5; DSM on features + colour with lambda 1, sigma 0.1) and
all are reported: nothing is chosen on these test sets. Whatever needs choosing (which backbone the pictures
show) is chosen on the val splits (`--split val`: the synthetic val scenes and the 101 CamVid val photos) first. Times are per image, features included, measured
interleaved (every variant on the same batch in turn), on one thread, with the load average recorded beside them.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import cpu_model, machine, write  # noqa: E402


def variants(backbone) -> dict:
    "name -> prior, every variant this benchmark scores."
    from usseg.priors import CentrePrior
    from usseg.priors.saliency import AttentionPrior, SpectralPrior, TokenCutPrior
    s = backbone.patch_size
    v = {'centre': CentrePrior(stride=s),
         'tokencut': TokenCutPrior(backbone),
         'tokencut_no_border_rule': TokenCutPrior(backbone, border_flip=False),
         'spectral': SpectralPrior(backbone),
         'spectral_no_colour': SpectralPrior(backbone, colour_weight=0),
         'spectral_no_border_rule': SpectralPrior(backbone, border_flip=False),
         'spectral_dsm_sign': SpectralPrior(backbone, sign='minority')}
    if getattr(backbone, 'n_heads', None): v['attention'] = AttentionPrior(backbone)
    return v


def score(ds, priors: dict, backbone, batch_size: int, fg_classes: list, keep_examples: int = 3) -> dict:
    "Scores, MaskContrast's drop rate and seconds per image of every prior on `ds` (interleaved per batch)."
    from usseg.features import _collate_images
    from usseg.priors.saliency import SaliencyMeter, foreground, postprocess_saliency
    meters = {n: SaliencyMeter() for n in priors}
    uniform = SaliencyMeter()   # a constant map: the chance level of max F (every pixel at every threshold below 0.5)
    per_image = {n: [] for n in priors}
    kept = {n: 0 for n in priors}
    secs = {n: 0.0 for n in ['features', *priors]}
    loads = [os.getloadavg()[0]]
    for i in range(0, len(ds), batch_size):
        items = [ds[j] for j in range(i, min(i + batch_size, len(ds)))]
        img, label = _collate_images(items), torch.stack([it['label'] for it in items])
        fg, valid = foreground(label, fg_classes)
        uniform.update(torch.full(label.shape, 0.5), fg, valid)
        t = time.perf_counter(); backbone.intermediate(img, 1, 'keys' if getattr(backbone, 'n_heads', None) else 'tokens')
        secs['features'] += time.perf_counter() - t
        for n, p in priors.items():
            t = time.perf_counter(); m = p(img); secs[n] += time.perf_counter() - t
            meters[n].update(m, fg, valid)
            masks, keep = postprocess_saliency(m, size=img.shape[-2:])
            kept[n] += int(keep.sum())
            per_image[n] += meters[n].iou[-len(items):]
        loads.append(os.getloadavg()[0])
    out = {}
    for n in priors:
        r = meters[n].compute('pr')
        r['max_f_tokencut_average'] = meters[n].compute('f')['max_f']
        iou = np.array(per_image[n])
        r.update(kept_by_postprocessing=kept[n]/len(ds), sec_per_image=secs[n]/len(ds),
                 best_images=[int(j) for j in np.argsort(-iou, kind='stable')[:keep_examples]],
                 worst_images=[int(j) for j in np.argsort(iou, kind='stable')[:keep_examples]])
        out[n] = r
    out['features'] = {'sec_per_image': secs['features']/len(ds)}
    return {'variants': out, 'chance_max_f': uniform.compute('pr')['max_f'], 'load_average_1m': {'min': min(loads), 'max': max(loads), 'mean': float(np.mean(loads))}}


PICTURED = ('tokencut', 'spectral', 'spectral_no_colour')   # columns: the best and the worst image of each
SHORT = {'tokencut': 'TokenCut', 'tokencut_no_border_rule': 'TC, no border', 'spectral': 'spectral',
         'spectral_no_colour': 'sp., no colour', 'spectral_no_border_rule': 'sp., no border', 'spectral_dsm_sign': 'sp., DSM sign',
         'attention': 'attention', 'centre': 'centre'}


def picture_columns(variants: dict) -> list:
    "(index, title) of the pictured images: the best and the worst IoU of each `PICTURED` variant, no image twice."
    cols, used = [], set()
    for n in PICTURED:
        if n not in variants: continue
        for which in ('best', 'worst'):
            j = next((j for j in variants[n][f'{which}_images'] if j not in used), None)
            if j is not None: used.add(j); cols.append((j, f"{SHORT.get(n, n)}: {which}"))
    return cols


def picture(ds, priors: dict, fg_classes: list, cols: list, path: Path, title: str):
    "Image, each variant (nearest-upsampled, with its IoU) and the true foreground (grey: no label); a small 128-colour PNG."
    import io

    import matplotlib; matplotlib.use('Agg')
    import torch.nn.functional as F
    from PIL import Image

    from usseg.core import atomic_write, show_grid
    from usseg.priors.saliency import foreground, saliency_scores
    idx = [j for j, _ in cols]
    img = torch.stack([ds[i]['img'] for i in idx]); label = torch.stack([ds[i]['label'] for i in idx])
    fg, valid = foreground(label, fg_classes)
    rows, names, titles = [list(img)], ['image'], [[t for _, t in cols]]
    for n, p in priors.items():
        m = p(img)
        ious = [saliency_scores(m[k:k + 1], fg[k:k + 1], valid[k:k + 1])['iou'] for k in range(len(idx))]
        rows.append(list(F.interpolate(m, size=img.shape[-2:], mode='nearest')[:, 0])); names.append(SHORT.get(n, n))
        titles.append([f'IoU {x:.2f}' for x in ious])
    rows.append([torch.where(v, f.float(), 0.5) for f, v in zip(fg, valid)]); names.append('foreground')
    titles.append([None]*len(idx))
    wide = img.shape[-1] > img.shape[-2]
    fig = show_grid(rows, titles=titles, row_titles=names, size=1.3 if wide else 1.05, suptitle=title)
    for ax in fig.axes: ax.title.set_fontsize(7); ax.yaxis.label.set_fontsize(8)
    buf = io.BytesIO(); fig.savefig(buf, format='png', dpi=64); buf.seek(0)
    q = Image.open(buf).convert('RGB').quantize(128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    with atomic_write(path) as fh: q.save(fh, format='PNG', optimize=True)
    print(f'wrote {path}')


def draw(backbone, name, ds, fgc, r: dict, folder):
    "The picture of one dataset from its scored run `r` (which images: `picture_columns` of its per-variant IoU ranks)."
    cols = picture_columns(r['variants'])
    show = {n: p for n, p in variants(backbone).items() if n in r['variants']}
    picture(ds, show, fgc, cols, Path(folder)/f'saliency_{name}.png',
            f'{name} ({backbone.name}): best and worst IoU')
    r['picture_images'] = [j for j, _ in cols]
    r['picture_columns'] = [t for _, t in cols]


def run_backbone(backbone, sets, args, pictures: bool) -> dict:
    "Every variant on every dataset with one backbone."
    priors = variants(backbone)
    res = {'backbone': {'name': backbone.name, 'weights': backbone.weights, 'stride': backbone.patch_size,
                        'channels': backbone.embed_dim, 'fingerprint': backbone.fingerprint()},
           'settings': {n: {'class': type(v).__name__, **{k: x for k, x in v.settings().items() if k not in ('weights', 'backbone')}}
                        for n, v in priors.items()}, 'datasets': {}}
    for name, ds, fgc in sets:
        t = time.perf_counter()
        base = ds.dataset if isinstance(ds, torch.utils.data.Subset) else ds
        r = score(ds, priors, backbone, args.batch_size, fgc)
        fg_share = float(np.mean([np.isin(ds[i]['label'].numpy(), fgc).mean() for i in range(len(ds))]))
        r.update(n_images=len(ds), size=list(ds[0]['img'].shape[-2:]), foreground=[base.class_names[c] for c in fgc],
                 foreground_share=round(fg_share, 4), seconds_total=round(time.perf_counter() - t, 1))
        res['datasets'][name] = r
        print(backbone.name, name, json.dumps({k: {m: round(x, 3) for m, x in v.items() if isinstance(x, float)} for k, v in r['variants'].items()}))
        if pictures: draw(backbone, name, ds, fgc, r, args.pictures)
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--backbones', nargs='+', default=['efficientnet_lite0_s8', 'efficientnet_lite0'],
                   help='usseg backbones, the first one drawn in the pictures (default: %(default)s)')
    p.add_argument('--weights', default='pretrained')
    p.add_argument('--synthetic-n', type=int, default=200, help='synthetic test scenes (default: %(default)s)')
    p.add_argument('--synthetic-size', type=int, default=128)
    p.add_argument('--camvid-root', default=str(ROOT.parent/'shared'/'data'/'camvid_segnet'))
    p.add_argument('--camvid-size', type=int, nargs=2, default=(240, 320), metavar=('H', 'W'))
    p.add_argument('--camvid-n', type=int, default=None, help='first N photos (default: all, 233 test or 101 val)')
    p.add_argument('--split', default='test', choices=('test', 'val'),
                   help='test: the reported scores; val: the split settings are chosen on (default: %(default)s)')
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--dry-run', action='store_true', help='random vit_tiny8, 4 images each, pictures only where --pictures says')
    p.add_argument('--pictures', default=str(ROOT/'nbs'/'images'), help='folder for the example figures ("" for none)')
    p.add_argument('--redraw', action='store_true',
                   help="only draw the pictures again from the scored run in --out (its first backbone's IoU ranks): no scoring")
    p.add_argument('--out', default=None, help='results name or .json path (default: saliency, or saliency_val for --split val)')
    args = p.parse_args(argv)
    if args.out is None: args.out = 'saliency' if args.split == 'test' else f'saliency_{args.split}'
    if args.split != 'test' and args.pictures == p.get_default('pictures'): args.pictures = ''   # the pictures show test images
    torch.set_num_threads(args.threads)
    if args.dry_run:
        args.backbones, args.weights, args.synthetic_n, args.camvid_n = ['vit_tiny8'], 'random', 4, 4
        if args.pictures == p.get_default('pictures'): args.pictures = ''       # never overwrite the committed pictures
    from usseg.backbones import load_backbone
    from usseg.data import get_dataset
    from usseg.data.synthetic import SyntheticScenes
    from usseg.data.transforms import EvalTransform
    from usseg.priors.saliency import object_classes
    syn = SyntheticScenes(args.split, n_images=args.synthetic_n, size=args.synthetic_size, n_classes=8, seed=0)
    sets = [('synthetic', syn, object_classes(syn))]
    if Path(args.camvid_root).is_dir():
        cam = get_dataset('camvid', args.camvid_root, args.split, transform=EvalTransform(tuple(args.camvid_size)))
        fgc = object_classes(cam)
        if args.camvid_n: cam = torch.utils.data.Subset(cam, range(min(args.camvid_n, len(cam))))
        sets.append(('camvid', cam, fgc))
    else: print(f'no CamVid at {args.camvid_root}: synthetic scenes only')
    if args.redraw:
        from benchmarks._common import RESULTS
        path = Path(args.out) if args.out.endswith('.json') else RESULTS/f'{args.out}.json'
        res = json.loads(path.read_text())
        run = res['runs'][0]
        bb = load_backbone(run['backbone']['name'], args.weights)
        if bb.fingerprint() != run['backbone']['fingerprint']: raise ValueError(f'{path} was scored with other weights than {bb.name} has now')
        for name, ds, fgc in sets: draw(bb, name, ds, fgc, run['datasets'][name], args.pictures)
        write(str(path), res)
        return
    res = {'split': args.split, 'what': 'saliency priors vs the centre prior: max F (beta^2 = 0.3, mean P/R curves), MAE, IoU at 0.5; '
                   'seconds per image (features included)',
           'machine': {**machine(), 'cpu_model': cpu_model()},
           'runs': [run_backbone(load_backbone(b, args.weights), sets, args, pictures=bool(args.pictures) and i == 0)
                    for i, b in enumerate(args.backbones)]}
    write(args.out, res)


if __name__ == '__main__': main()
