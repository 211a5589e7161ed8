"""The package installs, imports with timm on CPU-only torch, and fails fast and clearly without weights."""
import configparser
import subprocess
import sys
import zipfile

import pytest


def py(code, **env):
    import os
    e = {**os.environ, **env}
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=e, timeout=300)


def test_import_usseg_then_timm():
    r = py("import usseg, timm; m = timm.create_model('vit_small_patch8_224.dino', pretrained=False); print(type(m).__name__)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == 'VisionTransformer'


def test_offline_pretrained_fails_fast_with_help():
    code = """
import time, usseg, timm
t = time.perf_counter()
try:
    timm.create_model('vit_small_patch8_224.dino', pretrained=True)
except usseg.WeightsNotFoundError as e:
    print(f'{time.perf_counter() - t:.3f}'); print(e)
else:
    raise SystemExit('no error')
"""
    r = py(code, HF_HUB_OFFLINE='1')
    assert r.returncode == 0, r.stderr
    secs, msg = r.stdout.split('\n', 1)
    # a hang guard, not a speed target: a network attempt would take tens of seconds. The time itself
    # (about 0.5 s on an idle 2-core machine) is measured by benchmarks/offline_weights.py.
    assert float(secs) < 15.0
    for needle in ("vit_small_patch8_224.dino", 'pretrained_cfg_overlay', '--weights', 'HF_HUB_OFFLINE=1'):
        assert needle in msg


def test_compat_leaves_loadable_torchvision_alone():
    "Where torchvision's native library loads, the shim declares nothing."
    code = """
import torch
torch.ops.load_library = lambda path: None   # pretend the native ops loaded
import usseg
print(usseg.patch_torchvision.__name__, usseg._LIB is None)
"""
    r = py(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ['patch_torchvision', 'True']


def test_version_matches_settings(root):
    import usseg
    cfg = configparser.ConfigParser(); cfg.read(root/'settings.ini')
    assert usseg.__version__ == cfg['DEFAULT']['version']


def test_wheel_contents(root, tmp_path):
    r = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(tmp_path), str(root)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    whl = next(tmp_path.glob('usseg-*.whl'))
    names = zipfile.ZipFile(whl).namelist()
    assert 'usseg/__init__.py' in names and 'usseg/core.py' in names and 'usseg/data/synthetic.py' in names
    meta = zipfile.ZipFile(whl).read(next(n for n in names if n.endswith('METADATA'))).decode()
    assert 'Requires-Dist: torch>=2.1' in meta and 'Requires-Dist: timm' in meta
    assert not any(l.startswith('Requires-Dist: torch==') for l in meta.splitlines()), 'the package pins torch'
    eps = zipfile.ZipFile(whl).read(next(n for n in names if n.endswith('entry_points.txt'))).decode()
    assert 'usseg = usseg.cli:main' in eps
