"`benchmarks/vs_reference.py`: importing reference code (stubs, isolation), skipping without it, the table, and a tiny real comparison when checkouts are there."
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'benchmarks'))
import vs_reference as V  # noqa: E402

REFS = Path(os.environ.get('USSEG_REFS', ROOT/'.refs'))


def _fake_repo(d: Path) -> Path:
    "A reference-like checkout: a `utils` module that needs packages missing here and a module calling `.cuda()`."
    (d/'utils.py').write_text('import wget\nfrom torchmetrics import Metric\nfrom torch._six import string_classes\n'
                              'class Meter(Metric):\n    pass\nTRANSFORM = wget.download(1)\n')
    (d/'modules.py').write_text('import torch\nfrom utils import *\n'
                                'class Head(torch.nn.Module):\n'
                                '    def __init__(self):\n        super().__init__()\n        self.w = torch.nn.Linear(2, 2).cuda()\n'
                                '        self.mask = torch.ones(2).cuda()\n')
    return d


def test_reference_import_stubs_and_isolation(tmp_path, monkeypatch):
    repo = _fake_repo(tmp_path)
    sentinel = type(sys)('utils')                         # someone else's `utils`, imported before: must come back
    monkeypatch.setitem(sys.modules, 'utils', sentinel)
    cuda_t, cuda_m = torch.Tensor.cuda, torch.nn.Module.cuda
    with V.reference_import(repo) as stubbed, V.cuda_calls_stay_on(torch.device('cpu')):
        mods = importlib.import_module('modules')
        head = mods.Head()
        assert sys.modules['utils'] is not sentinel
    assert {'wget', 'torchmetrics', 'torch._six'} <= set(stubbed)
    assert head.mask.device.type == 'cpu' and head.w.weight.device.type == 'cpu'
    assert sys.modules['utils'] is sentinel and 'modules' not in sys.modules and 'wget' not in sys.modules
    assert str(repo) not in sys.path
    assert torch.Tensor.cuda is cuda_t and torch.nn.Module.cuda is cuda_m     # `.cuda()` is itself again afterwards


def test_no_weight_download_is_a_noop_load():
    lin = torch.nn.Linear(2, 2)
    w = lin.weight.detach().clone()
    with V.no_weight_download():
        sd = torch.hub.load_state_dict_from_url('https://example.invalid/x.pth')
        lin.load_state_dict(sd, strict=True)
    assert torch.equal(lin.weight, w)
    with pytest.raises(RuntimeError): lin.load_state_dict({}, strict=True)   # outside the block: the real loader again


def test_skips_without_references(tmp_path):
    out = tmp_path/'r.json'
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'vs_reference.py'), '--out', str(out)], capture_output=True, text=True,
                       env={**os.environ, 'PYTHONPATH': str(ROOT)}, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'skipped, no reference checkout given' in r.stdout and not out.exists()


def test_markdown_table():
    r = lambda m, lo, hi: {'median': m, 'min': lo, 'max': hi}
    d = {'methods': [{'method': 'stego', 'batch': 16, 'check': {'loss_bit_identical': True, 'grads_bit_identical': False,
                                                               'loss_abs_diff': 0.0, 'grad_max_rel_diff': 2e-6},
                      'by_threads': {'1': {'reference': {'median_s': 0.6}, 'usseg': {'median_s': 0.5},
                                           'ratio_reference_over_usseg': r(1.2, 1.1, 1.3),
                                           'ratio_reference_reuse_over_usseg_reuse': r(1.0, 0.9, 1.05),
                                           'ratio_reference_over_usseg_reuse': r(1.5, 1.4, 1.6),
                                           'load_average_before': [1.5, 1, 1], 'load_average_after': [1.7, 1, 1]}}},
                     {'method': 'hp', 'skipped': 'no checkout'}]}
    md = V.markdown(d).splitlines()
    assert len(md) == 3 and 'hp' not in '\n'.join(md)
    assert md[2] == ('| stego (16) | 1 | 0.600 | 0.500 | **1.20** (1.10-1.30) | **1.00** (0.90-1.05) | **1.50** (1.40-1.60) | 1.5-1.7 | '
                     'loss bit-identical, gradients rel. Δ 2.0e-06 |')


@pytest.mark.skipif(not (REFS/'STEGO').is_dir(), reason='no reference checkouts in .refs/ (bash benchmarks/gpu.sh refs SRC)')
def test_tiny_comparison_with_the_reference(tmp_path):
    out = tmp_path/'r.json'
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'vs_reference.py'), '--ref-root', str(REFS), '--methods', 'stego', 'smooseg',
                        '--batch', '2', '--grid', '14', '--check-only', '--malloc', 'glibc', '--out', str(out)],
                       capture_output=True, text=True, env={**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1'}, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    d = json.loads(out.read_text())
    for m in d['methods']:
        assert 'error' not in m, m
        c = m['check']
        assert c['loss_bit_identical'], c                      # same seed, dropout off: the very same loss
        assert c['grad_max_rel_diff'] < 1e-5, c                # gradients: float32 summation order only
