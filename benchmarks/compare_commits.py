#!/usr/bin/env python
"""A method's training step before and after a change: `benchmarks/method_step.py` run from two commits in turn.

    python benchmarks/compare_commits.py --before 4573779 --methods stego eagle --pairs 5 --out before_after_methods

Each commit's own copy of `method_step.py` runs in a throw-away `git worktree` of that commit (the current checkout
is the 'after' side unless `--after REF` names another commit), one process per measurement, and the two sides
alternate (before, after, after, before, ...), so that a machine whose speed drifts (a shared CPU) slows both sides
alike. Every pair gives a ratio before/after of the seconds per step (`> 1`: the change made the step faster); the
median ratio and its spread (min, max over the pairs) are what to quote, beside the load average of each run.
Writes `benchmarks/results/<out>.json` and prints a markdown table.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def git(*args, cwd=ROOT) -> str:
    return subprocess.run(['git', *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def checkout(ref: str, tmp: Path) -> Path:
    "A detached worktree of `ref` under `tmp` (removed at the end), or `ref` itself when it is a folder holding a copy."
    if (Path(ref)/'benchmarks'/'method_step.py').exists(): return Path(ref).resolve()
    path = tmp/ref.replace('/', '_')
    git('worktree', 'add', '--detach', str(path), ref)
    return path


def label(ref: str) -> str:
    "A commit's short hash; a folder's `COMMIT` file (written beside a `git archive` copy) or its name."
    if Path(ref).is_dir(): return (Path(ref)/'COMMIT').read_text().strip() if (Path(ref)/'COMMIT').exists() else Path(ref).name
    try: return git('rev-parse', '--short', ref)
    except (subprocess.CalledProcessError, OSError): return ref


def step_time(tree: Path, method: str, a, out: Path) -> tuple:
    "Seconds per step (fp32) of one `method_step.py` run from `tree`, and the load average before it."
    load = os.getloadavg()[0]
    cmd = [sys.executable, 'benchmarks/method_step.py', '--method', method, '--steps', str(a.steps), '--warmup', str(a.warmup),
           '--threads', str(a.threads), '--out', str(out)]
    if a.batch_size: cmd += ['--batch-size', str(a.batch_size)]
    if a.image_size: cmd += ['--image-size', str(a.image_size)]
    rest = [q for q in os.environ.get('PYTHONPATH', '').split(os.pathsep) if q and Path(q).resolve() != ROOT]   # e.g. carried wheels
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(tree), *rest]), 'HF_HUB_OFFLINE': '1', 'OMP_NUM_THREADS': str(a.threads)}
    r = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if r.returncode: raise RuntimeError(f'{method} in {tree} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}')
    res = json.loads(out.read_text())['results']
    return next(x['sec_per_step'] for x in res if x['precision'] == 'fp32'), load


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--before', required=True, help='the commit before the change, or a folder holding its files (`git archive`)')
    p.add_argument('--after', default=None, help='the commit after it, or a folder (default: this checkout, as it is)')
    p.add_argument('--methods', nargs='+', default=['stego', 'eagle'])
    p.add_argument('--pairs', type=int, default=5, help='before/after pairs per method')
    p.add_argument('--steps', type=int, default=3)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--batch-size', type=int, default=None)
    p.add_argument('--image-size', type=int, default=None)
    p.add_argument('--out', default='before_after_methods')
    a = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix='usseg-commits-'))
    trees = []
    try:
        before = checkout(a.before, tmp); trees.append(before)
        after = checkout(a.after, tmp) if a.after else ROOT
        if a.after: trees.append(after)
        trees = [t for t in trees if t.is_relative_to(tmp)]              # folders given by the user stay
        rows = []
        for m in a.methods:
            pairs = []
            for i in range(a.pairs):
                order = [('before', before), ('after', after)][::(1 if i % 2 == 0 else -1)]
                got = {side: step_time(tree, m, a, tmp/f'{m}_{side}_{i}.json') for side, tree in order}
                pairs.append({'before_s': got['before'][0], 'after_s': got['after'][0], 'ratio_before_over_after': got['before'][0]/got['after'][0],
                              'load_before': got['before'][1], 'load_after': got['after'][1]})
                print(f"{m} pair {i}: before {got['before'][0]:.3f} s, after {got['after'][0]:.3f} s, ratio {pairs[-1]['ratio_before_over_after']:.3f}", flush=True)
            r = [x['ratio_before_over_after'] for x in pairs]
            rows.append({'method': m, 'pairs': pairs, 'ratio_median': statistics.median(r), 'ratio_min': min(r), 'ratio_max': max(r),
                         'before_s_median': statistics.median(x['before_s'] for x in pairs),
                         'after_s_median': statistics.median(x['after_s'] for x in pairs),
                         'load_median': statistics.median(x['load_before'] for x in pairs)})
        write(a.out, {'benchmark': 'method_step.py before and after a change, alternating processes',
                      'before': label(a.before), 'after': label(a.after) if a.after else label('HEAD') + ' (checkout)',
                      'settings': {k: getattr(a, k) for k in ('steps', 'warmup', 'threads', 'batch_size', 'image_size', 'pairs')},
                      'methods': rows, 'machine': machine()})
        print('| method | before s/step | after s/step | ratio before/after (median, min-max) | load |\n|---|---|---|---|---|')
        for r in rows:
            print(f"| {r['method']} | {r['before_s_median']:.3f} | {r['after_s_median']:.3f} | {r['ratio_median']:.3f} ({r['ratio_min']:.3f}-{r['ratio_max']:.3f}) | {r['load_median']:.1f} |")
    finally:
        for t in trees: subprocess.run(['git', 'worktree', 'remove', '--force', str(t)], cwd=ROOT, capture_output=True)
        subprocess.run(['git', 'worktree', 'prune'], cwd=ROOT, capture_output=True)


if __name__ == '__main__':
    main()
