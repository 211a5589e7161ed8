"`benchmarks/maskcontrast_step.py` runs on a CPU (its GPU path is the same code with `--device cuda`): both dtypes, a JSON per run."
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_maskcontrast_step_cpu(tmp_path):
    out = tmp_path/'step.json'
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'HF_HUB_OFFLINE': '1', 'OMP_NUM_THREADS': '1'}
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'maskcontrast_step.py'), '--setting', 'smoke', '--device', 'cpu',
                        '--dtype', 'fp32', 'bf16', '--steps', '1', '--warmup', '0', '--batch-size', '2', '--out', str(out)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(out.read_text())
    assert (d['setting'], d['batch_size'], d['image_size'], d['device']) == ('smoke', 2, 48, 'cpu')
    assert d['queue_size'] % d['batch_size'] == 0
    assert [row['dtype'] for row in d['results']] == ['fp32', 'bf16']
    for row in d['results']: assert row['img_per_s'] > 0 and math.isfinite(row['final_loss'])
    assert 'load_average_1_5_15' in d['machine']
