"""usseg's DeepLab head against MaskContrast's reference model, on the same weights, in float64.

The fixture was produced by `tests/fixtures/make_golden_maskcontrast.py` from a checkout of
wvangansbeke/Unsupervised-Semantic-Segmentation (dfd5fa0a1542): `ContrastiveSegmentationModel` with
`DeepLabHead(8, 8)` (8 input channels, 8-d embedding), a 2x2 average pool as the backbone on 76 x 4 inputs (a
38 x 2 feature map, tall enough for every atrous rate to reach past the centre), weights drawn by `draw_weights` (repeated here), eval
mode. Same operations in the same order: 1e-12.
"""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import usseg  # noqa: F401
from usseg.models.deeplab import DeepLabHead

FIX = Path(__file__).parent/'fixtures'


def _draw_weights():
    spec = importlib.util.spec_from_file_location('make_golden_maskcontrast', FIX/'make_golden_maskcontrast.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod.draw_weights


@pytest.fixture(scope='module')
def ref():
    p = FIX/'deeplab_golden.npz'
    if not p.exists(): pytest.fail(f'{p} is missing: run tests/fixtures/make_golden_maskcontrast.py')
    return dict(np.load(p))


def test_same_parameter_names_and_shapes(ref):
    sd = DeepLabHead(8, 8).state_dict()
    assert sorted(sd) == list(ref['keys'])
    assert [str(tuple(sd[k].shape)) for k in sorted(sd)] == list(ref['shapes'])


def test_same_outputs_on_the_same_weights(ref):
    head = DeepLabHead(8, 8).double().eval()
    sd = _draw_weights()(head, 0)
    sums = torch.stack([sd[k].double().sum() for k in sorted(sd)])
    torch.testing.assert_close(sums, torch.from_numpy(ref['weight_sums']).double(), rtol=0, atol=1e-12)   # the same draws
    head.load_state_dict(sd)
    x = torch.from_numpy(ref['x']).double()
    with torch.no_grad(): emb, sal = head(F.avg_pool2d(x, 2), size=x.shape[-2:])
    torch.testing.assert_close(emb, torch.from_numpy(ref['embedding']).double(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sal[:, 0], torch.from_numpy(ref['saliency']).double(), rtol=1e-12, atol=1e-12)
