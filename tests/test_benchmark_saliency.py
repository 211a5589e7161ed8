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


def test_saliency_benchmark_pictures(tmp_path):
    "The dry run draws its picture where asked, and --redraw draws it again from the scored JSON alone."
    out, pics = tmp_path/'s.json', tmp_path/'pics'
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1', 'PYTHONPATH': str(ROOT)}
    args = [sys.executable, str(ROOT/'benchmarks'/'saliency.py'), '--dry-run', '--camvid-root', str(tmp_path/'none'), '--out', str(out), '--pictures', str(pics)]
    r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    syn = json.loads(out.read_text())['runs'][0]['datasets']['synthetic']
    png = pics/'saliency_synthetic.png'
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    cols = syn['picture_columns']
    assert len(syn['picture_images']) == len(set(syn['picture_images'])) == len(cols) == 4      # 4 scenes: every one shown once
    assert cols[:2] == ['TokenCut: best', 'TokenCut: worst']
    png.unlink()
    r = subprocess.run(args + ['--redraw'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert png.is_file() and json.loads(out.read_text())['runs'][0]['datasets']['synthetic']['picture_images'] == syn['picture_images']


def _diagnosis():
    "benchmarks/saliency_diagnosis.py as a module (benchmarks/ is not a package)."
    import importlib.util
    sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location('saliency_diagnosis', ROOT/'benchmarks'/'saliency_diagnosis.py')
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    return m


def test_diagnosis_oracle_and_sides():
    "The eigenvector oracle finds a block the graph separates; the side statistics name the class a side covers."
    import torch
    d = _diagnosis()
    h, w = 4, 6
    fg = torch.zeros(1, h, w, dtype=torch.bool); fg[0, 1:3, 1:4] = True          # 6 of 24 patches
    same = fg.flatten(1)[:, :, None] == fg.flatten(1)[:, None, :]
    W = torch.where(same, 1.0, 1e-3).double()                                     # two tight groups, weakly joined
    o = d.oracle_iou(W, fg, ks=(1, 2))
    assert abs(o[1].item() - 1.0) < 1e-12 and abs(o[2].item() - 1.0) < 1e-12
    label = torch.zeros(1, 8, 12, dtype=torch.long); label[0, 2:6, 2:8] = 3       # class 3 = the block, upsampled x2
    valid = torch.ones_like(label, dtype=torch.bool)
    ((area, prec, best, kind),) = d.side_stats(fg, label, label == 3, valid, {0: 'stuff', 3: 'thing'}, ['a', 'b', 'c', 'd'])
    assert (area, prec, best, kind) == (0.25, 1.0, 'd', 'thing')
    ((area, prec, best, kind),) = d.side_stats(~fg, label, label == 3, valid, {0: 'stuff', 3: 'thing'}, ['a', 'b', 'c', 'd'])
    assert (area, prec, best, kind) == (0.75, 0.0, 'a', 'stuff')


def test_saliency_diagnosis_dry_run(tmp_path):
    out = tmp_path/'diag.json'
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1', 'PYTHONPATH': str(ROOT)}
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'saliency_diagnosis.py'), '--dry-run', '--out', str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    (run,) = json.loads(out.read_text())['runs']
    syn = run['datasets']['synthetic']
    assert syn['n_images'] == 8 and set(run['datasets']) == {'synthetic'}
    o = [syn['eigs_oracle_iou'][f'k={k}'] for k in (1, 2, 4, 8)]
    assert all(0 <= a <= b <= 1 for a, b in zip(o, o[1:])), o                   # more eigenvectors can only help the oracle
    for c in syn['cut'].values():
        assert sum(c['best_class_kind'].values()) == 8 and 0 <= c['fg_precision'] <= 1 and 0 < c['area'] <= 1
    assert 0 <= syn['probe']['max_f'] <= 1 and 0 <= syn['probe']['iou'] <= 1
    lay = syn['layout']
    assert len(lay['fg_share_by_height_sixth']) == 6 and lay['segments_per_image']['mean'] >= 0
    assert 0 < lay['centre_core_area'] < 1 and 0 <= lay['fg_share_in_centre_core'] <= 1
    vc = syn['versus_centre']
    assert {'tokencut', 'spectral', 'attention'} <= set(vc) and 'centre' not in vc
    for v in vc.values():
        lo, hi = v['max_f_diff_95']
        assert -1 <= lo <= hi <= 1 and 0 <= v['max_f_ahead_share'] <= 1 and v['iou_diff_95'][0] <= v['iou_diff_95'][1]
