"The benchmark scripts still run: `benchmarks/gpu.sh`'s CPU dry run (tiny sizes) drives the step, EiCue and k-NN scripts."
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_runbook_dry_run_on_cpu(tmp_path):
    results = ROOT/'benchmarks'/'results'
    before = {p.name: p.stat().st_mtime_ns for p in results.glob('*.json')}
    env = {**os.environ, 'PATH': f'{Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}', 'OMP_NUM_THREADS': '1'}
    r = subprocess.run(['bash', str(ROOT/'benchmarks'/'gpu.sh'), 'run', str(tmp_path), 'cpu'], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    log = (tmp_path/'gpu_log.txt').read_text() if (tmp_path/'gpu_log.txt').exists() else r.stdout + r.stderr
    assert r.returncode == 0, log[-3000:]
    assert r.stdout.splitlines()[-1] == '0 failed', r.stdout[-2000:]   # the runbook's own count
    for m in ('stego', 'smooseg', 'eagle', 'hp'):
        d = json.loads((tmp_path/f'method_step_{m}_cpu.json').read_text())
        assert d['method'] == m and d['batch_size'] == 2 and d['image_size'] == 32
        (row,) = d['results']
        assert row['img_per_s'] > 0 and math.isfinite(row['final_loss'])
    (row,) = json.loads((tmp_path/'train_step_cpu.json').read_text())['results']
    assert row['img_per_s'] > 0 and math.isfinite(row['final_loss'])
    eig = json.loads((tmp_path/'eicue_cpu.json').read_text())
    assert eig['batch'] == 2 and eig['grid'] == 8 and eig['seconds_total'] > 0
    knn = json.loads((tmp_path/'knn_mining_cpu.json').read_text())
    assert knn['n_images'] == 20 and knn['k'] == 3
    assert 'method_step_hp_cpu.json' in (tmp_path/'gpu_summary.txt').read_text()
    # the dry run wrote only to its own folder: the committed results are untouched
    assert {p.name: p.stat().st_mtime_ns for p in results.glob('*.json')} == before


def test_stego_head_batch_runs_and_checks_the_two_shapes(tmp_path):
    "benchmarks/stego_head_batch.py at a toy size: both malloc settings, both shapes timed, the forward pass the same."
    out = tmp_path/'head.json'
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'stego_head_batch.py'), '--batch', '2', '--grid', '4', '--repeats', '1',
                        '--out', str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads(out.read_text())
    assert set(d['malloc']) == {'glibc', 'reuse'} and (d['batch'], d['grid']) == (2, 4)
    for m in d['malloc'].values():
        assert m['check']['code_bit_identical'] and m['cat']['median_s'] > 0 and m['two']['median_s'] > 0
