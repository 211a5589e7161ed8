#!/usr/bin/env python
"""HSC against the plain CAM classifier, in the WSSS protocol: the same backbone, steps, data and later stages.

For each dataset and seed, two runs of `usseg.methods.train` in three stages (`cam`, `pseudo_labels`, `segmenter`):
  * `cam`: the plain CAM classifier (K maps, multi-label soft-margin loss only), HSC's `plain_cam=True`;
  * `hsc`: HSC's classifier and losses (EPS's saliency loss, SEAM's PCM / ER / ECR, the three contrastive terms).
Everything else is shared: the backbone (`efficientnet_lite0_s8`, ImageNet weights from pip, trained in both), the
steps of each stage, the training images and their image-level labels (from the masks), the threshold rule, the CRF
and the segmentation network's recipe. Reported per run, as the WSSS papers report them:
  * seed (CAM) mIoU at the best threshold of the **training split's** curve, and the pseudo-label mIoU after the CRF
    (both on the training split, class identities, no Hungarian matching);
  * the segmentation network's mIoU on the evaluation split (class identities);
  * beside it, the course's unsupervised protocol on the segmenter's features (Hungarian-matched cluster probe,
    linear probe), marked weakly supervised.
Nothing is chosen on the evaluation split: the threshold comes from the training split's curve and the settings are
the factories' (`HSCConfig.synthetic()`, `HSCConfig.camvid()`), not tuned.

Datasets: `synthetic` (train 200 scenes, eval on 200 val scenes; foreground = ball, box, leaf, sign) and `camvid`
(the real photos in ../shared/data/camvid_segnet: trained on the 101 val photos, evaluated on the 233 test photos;
foreground = pole, sign, fence, car, pedestrian, bicyclist). For CamVid it also records how often each foreground
class is in a training image: a class present in almost every image gives its image label little to say.

    python benchmarks/hsc_margin.py --dataset synthetic --seeds 0 1 2
    python benchmarks/hsc_margin.py --dataset camvid --seeds 0 1 2 --data-root ../shared/data/camvid_segnet
    python benchmarks/hsc_margin.py --dataset synthetic --seeds 0 --steps 20 --seg-steps 20 --n-images 32 --out /tmp/t.json  # timing

Runs are kept under --runs (default /tmp/usseg_hsc_margin) and resumed (`--resume`) when the script is run again.
Writes benchmarks/results/hsc_margin_<dataset>.json after every run.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import usseg  # noqa: F401  (compat shim before timm)
from usseg.learner.stages import read_stages
from usseg.methods import get_method, train

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, write  # noqa: E402

SPLITS = {'synthetic': ('train', 'val'), 'camvid': ('val', 'test')}


def _kv(s):
    k, v = s.split('=', 1)
    try: v = json.loads(v)
    except json.JSONDecodeError: pass
    return k, v


def one_run(method, dataset, seed, a, run_dir) -> dict:
    "Train (or resume) one run; its WSSS numbers and the probes' on the segmenter."
    tr, ev = SPLITS[dataset]
    cfg = dict(a.set)
    if a.steps: cfg['poly_max_step'] = None
    if a.seg_steps: cfg['seg_steps'] = a.seg_steps
    kw = dict(backbone=a.backbone, weights='pretrained', device='cpu', seed=seed, progress='none', train_split=tr, eval_split=ev,
              config=cfg, steps=a.steps, save_every=50)
    if dataset == 'synthetic': kw['dataset_kw'] = {'n_images': a.n_images, 'n_classes': 8, 'seed': seed}
    resume = read_stages(run_dir) is not None
    t0 = time.perf_counter()
    train(method, dataset, a.data_root if dataset == 'camvid' else Path(a.runs)/'data', out=run_dir, resume=resume, **kw)
    secs = time.perf_counter() - t0
    m = json.loads((run_dir/'pseudo_labels'/'metrics.json').read_text())
    w = json.loads((run_dir/'segmenter'/'wsss_eval.json').read_text())
    recs = [json.loads(l) for l in (run_dir/'segmenter'/'metrics.jsonl').read_text().splitlines()]
    probes = [r for r in recs if r.get('split') == 'eval'][-1]
    stages = read_stages(run_dir)['stages']
    return {'method': method, 'seed': seed, 'seed_miou': m['seed_miou_best'], 'best_t': m['best_t'], 'pseudo_miou': m['pseudo_miou'],
            'pseudo_iou': m['pseudo_iou'], 'segmenter_miou': w['miou'], 'segmenter_iou': w['iou'], 'classes': w['classes'],
            'probes_weakly_supervised': {k: probes[k] for k in ('cluster_miou', 'cluster_acc', 'linear_miou', 'linear_acc') if k in probes},
            'curve_miou': m['curve_miou'], 'seconds_this_call': round(secs, 1),
            'stage_times': {s: [stages[s].get('started'), stages[s].get('finished')] for s in stages}}


def label_frequency(dataset, a) -> dict:
    "Share of the training images that hold each foreground class (what an image label can tell)."
    M = get_method('hsc')
    cfg = M.Config.for_dataset(dataset)
    from usseg.data import get_dataset
    from usseg.data.transforms import EvalTransform
    root = a.data_root if dataset == 'camvid' else Path(a.runs)/'data'
    kw = {'n_images': a.n_images, 'n_classes': 8, 'seed': 0, 'size': cfg.image_size} if dataset == 'synthetic' else {}
    ds = get_dataset(dataset, root, SPLITS[dataset][0], transform=None if dataset == 'synthetic' else EvalTransform(cfg.image_size), **kw)
    names = list(ds.class_names)
    ids = [names.index(c) for c in cfg.foreground]
    lab = torch.stack([ds[i]['label'] for i in range(len(ds))])
    valid = (lab >= 0).flatten(1).sum(1).clamp_min(1)
    share = torch.stack([(lab == i).flatten(1).sum(1) / valid for i in ids], 1)            # (N, K) share of each image's labelled pixels
    out = {c: round(float((share[:, j] > 0).float().mean()), 3) for j, c in enumerate(cfg.foreground)}   # present: one pixel (upstream)
    out['present_if_share_above'] = {str(t): {c: round(float((share[:, j] > t).float().mean()), 3) for j, c in enumerate(cfg.foreground)}
                                     for t in (0.001, 0.003, 0.01, 0.03)}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--dataset', choices=list(SPLITS), default='synthetic')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--methods', nargs='+', default=['cam', 'hsc'])
    p.add_argument('--backbone', default='efficientnet_lite0_s8')
    p.add_argument('--data-root', default='../shared/data/camvid_segnet')
    p.add_argument('--n-images', type=int, default=200, help='synthetic scenes per split')
    p.add_argument('--steps', type=int, default=None, help='cam-stage steps (default: the setting\'s)')
    p.add_argument('--seg-steps', type=int, default=None, help='segmenter steps (default: the setting\'s)')
    p.add_argument('--set', type=_kv, action='append', default=[], metavar='KEY=VALUE', help='a setting of both methods')
    p.add_argument('--runs', default='/tmp/usseg_hsc_margin')
    p.add_argument('--out', default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    out = a.out or f'hsc_margin_{a.dataset}'
    res = {'dataset': a.dataset, 'splits': dict(zip(('train', 'eval'), SPLITS[a.dataset])), 'backbone': a.backbone, 'settings': vars(a) | {'set': dict(a.set)},
           'config': {m: get_method(m).Config.for_dataset(a.dataset).__dict__ for m in a.methods}, 'runs': [],
           'label_frequency_train': label_frequency(a.dataset, a), 'machine_start': machine()}
    for seed in a.seeds:
        for m in a.methods:
            d = Path(a.runs)/f'{a.dataset}_{m}_s{seed}'
            r = one_run(m, a.dataset, seed, a, d)
            r['load_average_after'] = [round(x, 2) for x in __import__('os').getloadavg()]
            res['runs'].append(r)
            print(json.dumps({k: r[k] for k in ('method', 'seed', 'seed_miou', 'best_t', 'pseudo_miou', 'segmenter_miou', 'seconds_this_call')}), flush=True)
            summary = {}
            for key in ('seed_miou', 'pseudo_miou', 'segmenter_miou'):
                per = {mm: [x[key] for x in res['runs'] if x['method'] == mm] for mm in a.methods}
                summary[key] = {mm: {'mean': statistics.mean(v), 'std': statistics.stdev(v) if len(v) > 1 else 0.0, 'n': len(v)} for mm, v in per.items() if v}
                pairs = [(h[key] - c[key]) for h in res['runs'] for c in res['runs']
                         if h['method'] == 'hsc' and c['method'] == 'cam' and h['seed'] == c['seed']]
                if pairs: summary[key]['margin_hsc_minus_cam'] = {'mean': statistics.mean(pairs), 'std': statistics.stdev(pairs) if len(pairs) > 1 else 0.0, 'per_seed': pairs}
            res['summary'], res['machine_end'] = summary, machine()
            write(out, res)


if __name__ == '__main__':
    main()
