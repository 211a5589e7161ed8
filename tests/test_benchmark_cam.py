"`benchmarks/cam_inference.py` still runs: a tiny CPU dry run writes its JSON where asked (no timing is asserted)."
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cam_inference_dry_run(tmp_path):
    results = ROOT/'benchmarks'/'results'
    before = {p.name: p.stat().st_mtime_ns for p in results.glob('*.json')}
    out = tmp_path/'cam.json'
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1'}
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'cam_inference.py'), '--backbones', 'vit_tiny8', '--size', '32',
                        '--n-images', '1', '--repeats', '1', '--crf', '--out', str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(out.read_text())
    (row,) = d['results']
    assert row['backbone'] == 'vit_tiny8' and row['image_size'] == [32, 40] and row['cam_shape'] == [1, 20, 32, 40]
    for k in ('msf_s_per_image_median', 'single_forward_s_median', 'pyramid_and_aggregation_s_median', 'crf_cams_s_median'):
        assert math.isfinite(row[k]) and row[k] > 0, k
    assert len(d['load_average_before']) == 3 and d['scales'] == [0.5, 1.0, 1.5, 2.0]
    assert {p.name: p.stat().st_mtime_ns for p in results.glob('*.json')} == before   # committed results untouched
