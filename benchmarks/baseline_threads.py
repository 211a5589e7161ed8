#!/usr/bin/env python
"""Issue 18: `usseg baseline` on CamVid with the thread fix and without, quiet and under a concurrent load, as ratios.

What the issue measured: k-means on 7,840 x 384 points (10 CamVid photos at 224 px through a ViT-S/8) took 11.7 s
inside `usseg baseline` on 2 busy cores, 0.4 s in a fresh process. Here, in one run, three ways of running the same
command in a fresh process each time:

  * `--threads 1`;
  * no flag: the new default (`$USSEG_NUM_THREADS`, else 'auto': the CPUs not already busy);
  * the old default: the same command with `usseg.core.set_threads` made a no-op, so PyTorch, faiss and BLAS each
    take their own default (one thread per core), as before the fix;

each quiet (only what else runs on the machine) and under a concurrent load (`--load-procs` busy Python processes
started by this script, one core each). Beside the whole command, the k-means fit alone (`usseg.cluster.KMeans`, 11
clusters on 7,840 x 384 points, after a backbone forward, in a fresh process with the same thread setting) isolates
the step the issue saw slow. The variants run in turn, in a rotated order, round after round; ratios are taken per
round (paired: old default / --threads 1 in the same round and condition) and summarised by median and range.
OMP_NUM_THREADS and the other thread variables are removed from the children's environment.

    python benchmarks/baseline_threads.py                      # writes benchmarks/results/baseline_threads_camvid.json
    python benchmarks/baseline_threads.py --rounds 1 --max-images 2 --out /tmp/x.json
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import usseg  # noqa: F401
from usseg.data import shared_data

sys.path.insert(0, str(Path(__file__).parent))
from _common import cpu_model, machine, write  # noqa: E402

USSEG = shutil.which('usseg') or str(Path(sys.executable).with_name('usseg'))
OLD = "import sys, usseg.core; usseg.core.set_threads = lambda n=None: None; from usseg.cli import main; sys.exit(main(sys.argv[1:]))"
KMEANS = """
import sys, time, numpy as np, torch, usseg, usseg.core
from usseg.backbones import load_backbone
from usseg.cluster import KMeans
if sys.argv[1] != 'old': usseg.core.set_threads(None if sys.argv[1] == 'auto' else int(sys.argv[1]))
bb = load_backbone(sys.argv[2], weights='random')
with torch.no_grad(): bb(torch.randn(10, 3, 224, 224))
x = torch.from_numpy(np.random.default_rng(0).standard_normal((7840, 384)).astype('float32'))
t = time.perf_counter(); KMeans(11, seed=0).fit(x); print(time.perf_counter() - t, torch.get_num_threads())
"""
VARIANTS = {'threads 1': '1', 'auto (new default)': 'auto', 'old default (no thread setting)': 'old'}


def child_env() -> dict:
    drop = ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'NUMEXPR_NUM_THREADS', 'USSEG_NUM_THREADS')
    return {**{k: v for k, v in os.environ.items() if k not in drop}, 'HF_HUB_OFFLINE': '1'}


def baseline_cmd(how:str, args:list) -> list:
    if how == 'old': return [sys.executable, '-c', OLD, *args]
    return [USSEG, *args] + (['--threads', how] if how != 'auto' else [])


def run_baseline(how, args):
    t = time.perf_counter()
    r = subprocess.run(baseline_cmd(how, args), capture_output=True, text=True, env=child_env(), timeout=1800, check=False)
    wall = time.perf_counter() - t
    if r.returncode: raise SystemExit(f'usseg baseline failed ({how}): {r.stderr[-2000:]}')
    res = json.loads(r.stdout)
    return {'wall_s': wall, 'features_and_kmeans_s': res['settings']['kmeans']['seconds'], 'seconds': res['seconds'], 'miou': res['miou']}


def run_kmeans(how, backbone):
    r = subprocess.run([sys.executable, '-c', KMEANS, how, backbone], capture_output=True, text=True, env=child_env(), timeout=900, check=False)
    if r.returncode: raise SystemExit(f'k-means run failed ({how}): {r.stderr[-2000:]}')
    s, n = r.stdout.split()
    return {'kmeans_s': float(s), 'torch_threads': int(n)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data-root', default=None, help='a CamVid copy (default: the shared one)')
    p.add_argument('--max-images', type=int, default=10)
    p.add_argument('--backbone', default='dino_vits8', help='random weights (default: %(default)s, as in the issue)')
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--load-procs', type=int, default=2, help='busy processes of the concurrent load (default: %(default)s)')
    p.add_argument('--out', default='baseline_threads_camvid')
    a = p.parse_args(argv)
    root = a.data_root or shared_data('camvid_segnet')
    if root is None: raise SystemExit('no CamVid copy: pass --data-root')
    args = ['baseline', '--dataset', 'camvid', '--data-root', str(root), '--backbone', a.backbone, '--weights', 'random',
            '--image-size', '224', '--max-images', str(a.max_images), '--device', 'cpu', '--json']
    names = list(VARIANTS)
    rows, load = [], []
    try:
        for r in range(a.rounds):
            for cond in ('quiet', 'loaded'):
                if cond == 'loaded':
                    load = [subprocess.Popen([sys.executable, '-c', 'while True: pass']) for _ in range(a.load_procs)]
                    time.sleep(2)
                for v in names[r % 3:] + names[:r % 3]:
                    l0 = os.getloadavg()[0]
                    row = {'round': r, 'condition': cond, 'variant': v, **run_baseline(VARIANTS[v], args), **run_kmeans(VARIANTS[v], a.backbone),
                           'load_1min_before': round(l0, 2), 'load_1min_after': round(os.getloadavg()[0], 2)}
                    rows.append(row)
                    print({k: round(x, 2) if isinstance(x, float) else x for k, x in row.items()}, flush=True)
                for q in load: q.kill(); q.wait()
                load = []
    finally:
        for q in load: q.kill(); q.wait()
    def ratios(key, cond, num):
        by = {(x['round'], x['variant']): x[key] for x in rows if x['condition'] == cond}
        rs = [by[(r, num)]/by[(r, 'threads 1')] for r in range(a.rounds)]
        return {'median': round(statistics.median(rs), 2), 'min': round(min(rs), 2), 'max': round(max(rs), 2)}
    summary = {}
    for cond in ('quiet', 'loaded'):
        for key in ('wall_s', 'features_and_kmeans_s', 'kmeans_s'):
            for v in names:
                vals = [x[key] for x in rows if x['condition'] == cond and x['variant'] == v]
                summary.setdefault(cond, {}).setdefault(key, {})[v] = {'median': round(statistics.median(vals), 2)}
                if v != 'threads 1': summary[cond][key][v]['ratio_to_threads_1'] = ratios(key, cond, v)
    res = {'what': 'usseg baseline on CamVid, thread settings, quiet and under a concurrent load (issue 18)',
           'command': 'usseg ' + ' '.join(args), 'variants': {k: ' '.join(baseline_cmd(v, ['baseline', '...'])[:3]) for k, v in VARIANTS.items()},
           'load': f'{a.load_procs} busy Python processes (one core each) started by the script for the loaded condition',
           'summary': summary, 'rows': rows, 'cpu': cpu_model(), 'machine': machine()}
    for cond in summary:
        for key, d in summary[cond].items():
            print(cond, key, {v: (x['median'], x.get('ratio_to_threads_1', {}).get('median')) for v, x in d.items()})
    write(a.out, res)


if __name__ == '__main__':
    main()
