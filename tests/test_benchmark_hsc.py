"`benchmarks/hsc_step.py` runs on the CPU: a tiny dry run (the smoke setting) times each stage and writes its JSON where asked (no timing is asserted)."
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_hsc_step_cpu(tmp_path):
    results = ROOT/'benchmarks'/'results'
    before = {p.name: p.stat().st_mtime_ns for p in results.glob('*.json')}
    out = tmp_path/'hsc_step.json'
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1'}
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'hsc_step.py'), '--setting', 'smoke', '--steps', '1', '--warmup', '1',
                        '--threads', '1', '--out', str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(out.read_text())
    assert [x['stage'] for x in d['results']] == ['cam (hsc)', 'cam (hsc, no in-loop CRF)', 'cam (plain)', 'segmenter']
    for x in d['results']:
        assert x['precision'] == 'fp32' and math.isfinite(x['sec_per_step']) and x['sec_per_step'] > 0 and math.isfinite(x['final_loss']), x
    assert d['device'] == 'cpu' and d['batch_size'] == 4 and len(d['machine']['load_average_1_5_15']) == 3
    assert {p.name: p.stat().st_mtime_ns for p in results.glob('*.json')} == before   # committed results untouched
