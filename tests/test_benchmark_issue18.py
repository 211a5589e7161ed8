"""Issue 18's benchmark scripts still run: tiny CPU dry runs on a fake CamVid tree write their JSON where asked (no timing
is asserted): the STEGO step variants (probe scoring, cached outputs) and `usseg baseline` under three thread settings."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from helpers import make_fake_tree

ROOT = Path(__file__).resolve().parents[1]


def _run(script, args, tmp_path):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1', 'USSEG_HOME': str(tmp_path/'home')}
    return subprocess.run([sys.executable, str(ROOT/'benchmarks'/script), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900, check=False)


def test_stego_step_camvid_dry_run(tmp_path):
    results = ROOT/'benchmarks'/'results'
    before = {p.name: p.stat().st_mtime_ns for p in results.glob('*.json')}
    root = make_fake_tree('camvid', tmp_path/'camvid', n=4, size=(36, 48))
    r = _run('stego_step_camvid.py', ['--data-root', root, '--backbone', 'vit_tiny8', '--weights', 'random', '--size', 32, 48,
                                      '--batch-size', 2, '--rounds', 2, '--out', tmp_path/'step.json'], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads((tmp_path/'step.json').read_text())
    assert set(d['sec_per_step']) == {'upsample, computed', 'nearest, computed', 'upsample, cached', 'nearest, cached'}
    assert all(len(v['all']) == 2 and all(t > 0 for t in v['all']) for v in d['sec_per_step'].values())
    assert all(math.isfinite(v['median']) for v in d['ratios_paired_per_round'].values())
    assert d['setting']['cache']['cached'] is True and d['setting']['batch_size'] == 2
    assert {p.name: p.stat().st_mtime_ns for p in results.glob('*.json')} == before   # committed results untouched


def test_baseline_threads_dry_run(tmp_path):
    root = make_fake_tree('camvid', tmp_path/'camvid', n=2, size=(36, 48))
    r = _run('baseline_threads.py', ['--data-root', root, '--backbone', 'vit_tiny8', '--max-images', 2, '--rounds', 1,
                                     '--load-procs', 1, '--out', tmp_path/'bl.json'], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads((tmp_path/'bl.json').read_text())
    assert [(x['condition'], x['variant']) for x in d['rows']] == [(c, v) for c in ('quiet', 'loaded') for v in
                                                                   ('threads 1', 'auto (new default)', 'old default (no thread setting)')]
    assert {x['torch_threads'] for x in d['rows'] if x['variant'] == 'threads 1'} == {1}
    assert len({x['miou'] for x in d['rows']}) == 1                        # the same result whatever the threads
    assert d['summary']['loaded']['kmeans_s']['old default (no thread setting)']['ratio_to_threads_1']['median'] > 0
