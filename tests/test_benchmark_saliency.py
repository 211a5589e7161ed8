"`benchmarks/saliency.py` runs end to end on a random tiny ViT (its dry run) and writes every variant's scores."
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_saliency_benchmark_dry_run(tmp_path):
    out = tmp_path/'saliency.json'
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1', 'PYTHONPATH': str(ROOT)}
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'saliency.py'), '--dry-run', '--camvid-root', str(tmp_path/'none'),
                        '--out', str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    d = json.loads(out.read_text())
    (run,) = d['runs']
    syn = run['datasets']['synthetic']
    assert syn['n_images'] == 4 and syn['foreground'] == ['ball', 'box', 'leaf', 'sign']
    assert {'centre', 'tokencut', 'spectral', 'attention'} <= set(syn['variants'])
    for v in syn['variants'].values():
        assert v['sec_per_image'] >= 0
        if 'max_f' in v: assert 0 <= v['max_f'] <= 1 and 0 <= v['mae'] <= 1 and 0 <= v['iou'] <= 1
    assert 'camvid' not in run['datasets']
