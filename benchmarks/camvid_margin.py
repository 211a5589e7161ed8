#!/usr/bin/env python
"""Does a method beat k-means on real photos? CamVid, the offline ImageNet `efficientnet_lite0`, seeds 0-2.

For each method and seed, on the same frozen features (`efficientnet_lite0`: blocks.4, stride 16, 112 channels):
  * the baseline: `usseg.evaluate.baseline`, k-means (K = 11, cosine, that seed) fitted on the training split's
    features and scored on the test split (Hungarian matching), with flip as the method's protocol says;
  * the method: `usseg.methods.train(METHOD, 'camvid', ...)` with its `camvid()` setting (`Config.camvid()`),
    trained on the training split (CamVid `train` when present, else `val`: the shared copy has val and test only)
    and scored on the test split with `Run.evaluate`, its cluster probe (and linear probe), flip likewise
    (--both-flips: both sides also with the other flip setting);
  * as a diagnostic, the baseline's own k-means on the method's trained code (the same clusterer on both sides).
The headline margin uses the method's own protocol (STEGO, SmooSeg, EAGLE: flip on; HP: off) on both sides.
Nothing is chosen on the test split: every method runs its fixed setting and its last checkpoint is scored.
No CRF unless --crf. With --probe, a linear probe fitted to convergence on the raw features (the training split's
labels: a supervised ceiling, not an unsupervised result), scored on test.

    python benchmarks/camvid_margin.py --methods stego --seeds 0 1 2
    python benchmarks/camvid_margin.py --methods hp smooseg eagle --seeds 0
    python benchmarks/camvid_margin.py --table          # the markdown table of the results there are

Writes benchmarks/results/camvid_margin_<method>.json after every seed; a seed already there is not run again
(delete the file, or pass --redo, to rerun). Backbone outputs are computed once per process and reused (training:
`train(feature_cache=...)`; evaluation: a memo of the frozen backbone), which changes no number.
"""
import argparse
import functools
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import usseg  # noqa: F401  (compat shim before timm)
from usseg.backbones import load_backbone
from usseg.data import SegDataset, get_dataset, shared_data
from usseg.data.transforms import EvalTransform
from usseg.evaluate import baseline
from usseg.methods import EVAL_SIZE, get_method, train
from usseg.methods.run import default_splits

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, machine, write  # noqa: E402
from synthetic_margin import margin, offline_probe, scores, summary  # noqa: E402

METHODS = ('stego', 'hp', 'smooseg', 'eagle')
BACKBONE = 'efficientnet_lite0'


def cache_decoded_images():
    "Keep decoded frames and labels in memory (CamVid is small): every epoch reads the same PNGs. Values unchanged."
    store, load = {}, SegDataset.load
    @functools.wraps(load)
    def cached(self, i):
        key = (str(self.img_files[i]), str(self.label_files[i]) if self.label_files is not None else None)
        if key not in store:
            img, lab = load(self, i)
            store[key] = (img, lab.astype(np.int8) if lab.min() >= -128 and lab.max() < 128 else lab)
        img, lab = store[key]
        return img, lab.astype(np.int64)
    SegDataset.load = cached


class Memo:
    "Remember a frozen backbone's `forward` and `intermediate` by the exact bytes of the batch (evaluation reads the same batches)."
    def __init__(self, bb):
        self.bb, self.store, self.hits = bb, {}, 0
        for name in ('forward', 'intermediate'):
            f = getattr(bb, name)
            object.__setattr__(bb, name, self._wrap(name, f))

    def _wrap(self, name, f):
        def g(img, *a, **k):
            if torch.is_grad_enabled(): return f(img, *a, **k)
            key = (name, tuple(img.shape), a, tuple(sorted(k.items())),
                   hashlib.sha1(img.detach().cpu().contiguous().numpy().tobytes()).hexdigest())
            if key in self.store: self.hits += 1
            else: self.store[key] = f(img, *a, **k)
            return self.store[key]
        return g


def _split_ds(root, split, size):
    return get_dataset('camvid', root, split, transform=EvalTransform(size))


def one_seed(method, seed, bb, root, work, a) -> dict:
    train_split, eval_split = default_splits('camvid', root, None, a.train_split, 'test')
    size = EVAL_SIZE['camvid']
    fit_ds, test_ds = _split_ds(root, train_split, size), _split_ds(root, eval_split, size)
    flip = get_method(method).flip
    t0 = time.time()
    flips = (False, True) if a.both_flips else (flip,)     # the method's protocol on both sides; --both-flips: also the other
    base = {f: baseline(bb, fit_ds, test_ds, 11, seed=seed, flip=f, fit_split=train_split, device='cpu') for f in flips}
    t_base = time.time() - t0
    run_dir = work/f'{method}-s{seed}'
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.time()
    run = train(method, 'camvid', root, run_dir, backbone=bb, steps=a.steps, device='cpu', seed=seed, smoke=False,
                config=dict(a.set) or None, progress='none', save_every=0, eval_images=4, train_split=train_split,
                eval_split=eval_split, cache_features=True, feature_cache=work/'features')
    t_train = time.time() - t0
    t0 = time.time()
    ev = {f: run.evaluate(eval_split, flip=f, save=f == flip, device='cpu') for f in flips}   # kept runs (--work) keep the matching
    run.task.eval()
    code_km = baseline(run.task.code, fit_ds, test_ds, 11, seed=seed, flip=flip, fit_split=train_split, device='cpu')
    t_eval = time.time() - t0
    key = 'flip' if flip else 'no_flip'
    rec = {'seed': seed, 'method_flip': flip, 'class_names': list(test_ds.class_names),
           'train_split': train_split, 'eval_split': eval_split,
           'baseline': {**{('flip' if f else 'no_flip'): scores(base[f]) for f in flips}, 'kmeans_backend': base[flip].settings['kmeans']['backend']},
           'method': {**{('flip' if f else 'no_flip'): scores(ev[f]) for f in flips}, 'steps': run.step},
           'kmeans_on_code': {key: scores(code_km)},
           'seconds': {'baseline': round(t_base, 1), 'train': round(t_train, 1), 'evaluate': round(t_eval, 1)},
           'load_average_1_5_15': [round(x, 2) for x in os.getloadavg()]}
    if a.crf:
        rec['baseline']['crf'] = scores(baseline(bb, fit_ds, test_ds, 11, seed=seed, flip=flip, crf=True, fit_split=train_split, device='cpu'))
        rec['method']['crf'] = scores(run.evaluate(eval_split, flip=flip, crf=True, save=False, device='cpu'))
        rec['margin_crf'] = margin(rec['method']['crf'], rec['baseline']['crf'])
    m, b = rec['method'][key], rec['baseline'][key]
    rec['margin'] = margin(m, b)
    rec['margin_same_kmeans'] = margin(rec['kmeans_on_code'][key], b)
    print(f"{method} seed {seed}: cluster mIoU {m['cluster_miou']:.2f} acc {m['cluster_acc']:.2f} | k-means mIoU {b['cluster_miou']:.2f} "
          f"acc {b['cluster_acc']:.2f} | margin mIoU {rec['margin']['miou']:+.2f} acc {rec['margin']['acc']:+.2f} | k-means on the code "
          f"{rec['kmeans_on_code'][key]['cluster_miou']:.2f} | train {t_train:.0f} s, load {os.getloadavg()[0]:.1f}", flush=True)
    return rec


def aggregate(method, recs, a, extra=None) -> dict:
    cfg = get_method(method).default_config('camvid', BACKBONE)
    key = lambda r: 'flip' if r['method_flip'] else 'no_flip'
    res = {'what': __doc__.split('\n\n')[0], 'method': method,
           'setting': {'dataset': 'camvid (SegNet 11 classes)', 'train_split': recs[0]['train_split'], 'eval_split': recs[0]['eval_split'],
                       'image_size': list(EVAL_SIZE['camvid']), 'backbone': f'{BACKBONE} (ImageNet weights from pip), frozen',
                       'config': f'{type(cfg).__name__}.camvid()', 'source': cfg.source, 'steps': a.steps or cfg.max_steps,
                       'batch_size': cfg.batch_size, 'overrides': dict(a.set), 'threads': a.threads, 'crf': a.crf},
           'seeds': recs,
           'margin_miou': summary([r['margin']['miou'] for r in recs]), 'margin_acc': summary([r['margin']['acc'] for r in recs]),
           'margin_same_kmeans_miou': summary([r['margin_same_kmeans']['miou'] for r in recs]),
           'method_cluster_miou': summary([r['method'][key(r)]['cluster_miou'] for r in recs]),
           'baseline_cluster_miou': summary([r['baseline'][key(r)]['cluster_miou'] for r in recs]),
           'beats_kmeans_every_seed': all(r['margin']['miou'] > 0 for r in recs), 'machine': machine()}
    if a.crf: res['margin_crf_miou'] = summary([r['margin_crf']['miou'] for r in recs])
    if extra: res.update(extra)
    return res


def table(results_dir=RESULTS) -> str:
    "The markdown table of the camvid_margin_*.json results there are (methods in the course's order)."
    rows, classes = [], None
    head = ('| method | seeds | steps | method cluster mIoU | k-means mIoU | margin mIoU | margin acc. | every seed > k-means | '
            'k-means on the code | linear (in training) |\n|---|---|---|---|---|---|---|---|---|---|')
    per_class = []
    for m in METHODS:
        f = Path(results_dir)/f'camvid_margin_{m}.json'
        if not f.is_file(): rows.append(f'| {m} | not run | | | | | | | | |'); continue
        r = json.loads(f.read_text())
        recs, k = r['seeds'], ('flip' if r['seeds'][0]['method_flip'] else 'no_flip')
        ms = lambda d: f"{d['mean']:.1f} ± {d['std']:.1f}"
        lin = [s['method'][k].get('linear_miou') for s in recs]
        lin = f'{statistics.mean(lin):.1f}' if all(x is not None for x in lin) else '—'
        seeds = ', '.join(f"{s['margin']['miou']:+.1f}" for s in recs)
        rows.append(f"| {m} ({'flip' if k == 'flip' else 'no flip'}) | {', '.join(str(s['seed']) for s in recs)} | {r['setting']['steps']} | "
                    f"{ms(r['method_cluster_miou'])} | {ms(r['baseline_cluster_miou'])} | {r['margin_miou']['mean']:+.1f} ± {r['margin_miou']['std']:.1f} | "
                    f"{r['margin_acc']['mean']:+.1f} ± {r['margin_acc']['std']:.1f} | {'yes' if r['beats_kmeans_every_seed'] else 'no'} "
                    f"({seeds}) | {r['margin_same_kmeans_miou']['mean']:+.1f} | {lin} |")
        classes = recs[0]['class_names']
        iou = lambda side: [statistics.mean(s[side][k]['cluster_iou'][c] for s in recs) for c in range(len(classes))]
        per_class.append((m, iou('method'), iou('baseline')))
    out = head + '\n' + '\n'.join(rows)
    if per_class:
        out += '\n\nPer-class cluster IoU on CamVid test, mean over the seeds (method / k-means on the same features, same flip):\n\n'
        out += '| method | ' + ' | '.join(classes) + ' |\n|---|' + '---|'*len(classes) + '\n'
        for m, a_, b_ in per_class:
            out += f'| {m} | ' + ' | '.join(f'{x:.0f} / {y:.0f}' for x, y in zip(a_, b_)) + ' |\n'
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--methods', nargs='+', default=list(METHODS), choices=METHODS)
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--data-root', default=None, help='folder holding CamVid/ (default: the shared copy, camvid_segnet)')
    p.add_argument('--train-split', default=None, help='default: train when present, else val')
    p.add_argument('--steps', type=int, default=None, help="training steps (default: the method's camvid setting)")
    p.add_argument('--set', type=lambda s: (s.split('=', 1)[0], json.loads(s.split('=', 1)[1])), action='append', default=[],
                   metavar='KEY=VALUE', help='override a setting (results then go to --out, not the default file)')
    p.add_argument('--both-flips', action='store_true', help="also score both sides with the other flip setting than the method's")
    p.add_argument('--crf', action='store_true', help='also score both with the dense CRF (slow on a CPU)')
    p.add_argument('--probe', action='store_true', help='also a converged linear probe on the raw features (the ceiling)')
    p.add_argument('--threads', type=int, default=1, help='torch threads (default 1: steadier on a shared CPU)')
    p.add_argument('--work', default=None, help='keep runs and cached features here (default: a temporary folder, removed)')
    p.add_argument('--out', default=None, help='result folder (default: benchmarks/results)')
    p.add_argument('--redo', action='store_true', help='run seeds already in the result file again')
    p.add_argument('--table', action='store_true', help='print the markdown table of the results there are, and stop')
    a = p.parse_args(argv)
    out_dir = Path(a.out) if a.out else RESULTS
    if a.table: print(table(out_dir)); return
    if a.set and not a.out: raise SystemExit('--set changes the setting: pass --out DIR so that the default results are not overwritten')
    root = Path(a.data_root) if a.data_root else shared_data('camvid_segnet')
    if root is None or not (root/'CamVid'/'test').is_dir():
        raise SystemExit('CamVid not found: pass --data-root DIR (DIR/CamVid/{val,test}; `usseg data prepare camvid` fetches it)')
    torch.set_num_threads(a.threads)
    cache_decoded_images()
    bb = load_backbone(BACKBONE)
    memo = Memo(bb)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix='usseg_camvid_'))
    try:
        for method in a.methods:
            f = out_dir/f'camvid_margin_{method}.json'
            old = json.loads(f.read_text()) if f.is_file() and not a.redo else None
            recs = {r['seed']: r for r in (old['seeds'] if old else [])}
            extra = {k: old[k] for k in ('probe',) if old and k in old}
            for s in a.seeds:
                if s in recs: print(f'{method} seed {s}: in {f}, kept (--redo to run it again)'); continue
                recs[s] = one_seed(method, s, bb, root, work, a)
                if a.probe and 'probe' not in extra:
                    tr, ev = default_splits('camvid', root, None, a.train_split, 'test')
                    fit_ds, test_ds = _split_ds(root, tr, EVAL_SIZE['camvid']), _split_ds(root, ev, EVAL_SIZE['camvid'])
                    extra['probe'] = {'what': 'a linear probe fitted to convergence on the raw features (labels of the training split)',
                                      **offline_probe(bb, fit_ds, test_ds, 11, 0, get_method(method).flip, 'cpu')}
                write(str(f), aggregate(method, [recs[k] for k in sorted(recs)], a, extra))
            print(f'{method}: backbone memo {len(memo.store)} batches, {memo.hits} reused', flush=True)
    finally:
        if not a.work: shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
