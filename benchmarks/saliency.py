"""Saliency priors against the centre prior: max F-measure, MAE and IoU on the synthetic test scenes and the CamVid
test photos, and the time per image of each variant.

    python benchmarks/saliency.py                      ->  benchmarks/results/saliency.json
                                                           nbs/images/saliency_{synthetic,camvid}.png
    python benchmarks/saliency.py --dry-run --out /tmp/s.json   (random tiny ViT, 4 images each: the code path only)

Ground truth foreground (`usseg.priors.saliency.object_classes`): the synthetic scenes' things (ball, box, leaf,
sign with 8 classes), CamVid's pole, sign, fence, car, pedestrian and bicyclist. CamVid photos are resized from
360 x 480 to 240 x 320 (labels nearest), which keeps a stride-8 graph at 1200 patches. Every variant runs with
the settings of its paper (TokenCut tau 0.2, eps 1e-5; DSM on features + colour with lambda 1, sigma 0.1) and
all are reported: nothing is chosen on these test sets. Times are per image, features included, measured
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
    per_image = {n: [] for n in priors}
    kept = {n: 0 for n in priors}
    secs = {n: 0.0 for n in ['features', *priors]}
    loads = [os.getloadavg()[0]]
    for i in range(0, len(ds), batch_size):
        items = [ds[j] for j in range(i, min(i + batch_size, len(ds)))]
        img, label = _collate_images(items), torch.stack([it['label'] for it in items])
        fg, valid = foreground(label, fg_classes)
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
    return {'variants': out, 'load_average_1m': {'min': min(loads), 'max': max(loads), 'mean': float(np.mean(loads))}}


def picture(ds, priors: dict, fg_classes: list, idx: list, path: Path, title: str):
    "Image, each variant (nearest-upsampled) and the true foreground for the images `idx`; a small 256-colour PNG."
    import io

    import matplotlib; matplotlib.use('Agg')
    import torch.nn.functional as F
    from PIL import Image

    from usseg.core import show_grid
    from usseg.priors.saliency import foreground
    img = torch.stack([ds[i]['img'] for i in idx]); label = torch.stack([ds[i]['label'] for i in idx])
    fg, valid = foreground(label, fg_classes)
    rows, names = [list(img)], ['image']
    for n, p in priors.items():
        m = F.interpolate(p(img), size=img.shape[-2:], mode='nearest')[:, 0]
        rows.append(list(m)); names.append(n.replace('_', ' '))
    rows.append([torch.where(v, f.float(), 0.5) for f, v in zip(fg, valid)]); names.append('foreground')
    fig = show_grid(rows, row_titles=names, size=1.15 if img.shape[-1] <= img.shape[-2] else 1.5, suptitle=title)
    buf = io.BytesIO(); fig.savefig(buf, format='png', dpi=70); buf.seek(0)
    q = Image.open(buf).convert('RGB').quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    from usseg.core import atomic_write
    with atomic_write(path) as fh: q.save(fh, format='PNG', optimize=True)
    print(f'wrote {path}')


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
        if pictures:
            v = r['variants']
            idx = sorted({*v['tokencut']['best_images'][:2], *v['spectral']['best_images'][:2], *v['tokencut']['worst_images'][:1],
                          *v['spectral']['worst_images'][:1]})[:6]
            show = {n: priors[n] for n in ('centre', 'tokencut', 'spectral', 'attention') if n in priors}
            picture(ds, show, fgc, idx, Path(args.pictures)/f'saliency_{name}.png',
                    f'{name}: best and worst images of TokenCut and the spectral prior ({backbone.name})')
            r['picture_images'] = idx
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
    p.add_argument('--camvid-n', type=int, default=None, help='first N test photos (default: all 233)')
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--dry-run', action='store_true', help='random vit_tiny8, 4 images each, no pictures')
    p.add_argument('--pictures', default=str(ROOT/'nbs'/'images'), help='folder for the example figures ("" for none)')
    p.add_argument('--out', default='saliency')
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.dry_run:
        args.backbones, args.weights, args.synthetic_n, args.camvid_n, args.pictures = ['vit_tiny8'], 'random', 4, 4, ''
    from usseg.backbones import load_backbone
    from usseg.data import get_dataset
    from usseg.data.synthetic import SyntheticScenes
    from usseg.data.transforms import EvalTransform
    from usseg.priors.saliency import object_classes
    syn = SyntheticScenes('test', n_images=args.synthetic_n, size=args.synthetic_size, n_classes=8, seed=0)
    sets = [('synthetic', syn, object_classes(syn))]
    if Path(args.camvid_root).is_dir():
        cam = get_dataset('camvid', args.camvid_root, 'test', transform=EvalTransform(tuple(args.camvid_size)))
        fgc = object_classes(cam)
        if args.camvid_n: cam = torch.utils.data.Subset(cam, range(min(args.camvid_n, len(cam))))
        sets.append(('camvid', cam, fgc))
    else: print(f'no CamVid at {args.camvid_root}: synthetic scenes only')
    res = {'what': 'saliency priors vs the centre prior: max F (beta^2 = 0.3, mean P/R curves), MAE, IoU at 0.5; '
                   'seconds per image (features included)',
           'machine': {**machine(), 'cpu_model': cpu_model()},
           'runs': [run_backbone(load_backbone(b, args.weights), sets, args, pictures=bool(args.pictures) and i == 0)
                    for i, b in enumerate(args.backbones)]}
    write(args.out, res)


if __name__ == '__main__': main()
