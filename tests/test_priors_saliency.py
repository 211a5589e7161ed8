"""Saliency priors against golden outputs of the reference code, plus invariances.

The fixtures were produced by `tests/fixtures/make_golden_saliency.py` from checkouts of
YangtaoWANG95/TokenCut (fed52cd) and lukemelas/deep-spectral-segmentation (b89b650); inputs are random, outputs
are theirs. The eigenproblems are solved in float64 on both sides (scipy's generalised solvers there,
`torch.linalg.eigh` of the normalised Laplacian here), so eigenvectors agree to about 1e-12; DSM stores its
eigenvectors as float32 and TokenCut computes its metrics in float32, so those comparisons allow float32
rounding.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

import usseg  # noqa: F401  (the compat shim first)
from usseg.priors.saliency import SaliencyMeter, saliency_scores, spectral_saliency, tokencut

FIX = Path(__file__).parent/'fixtures'
EIG = dict(rtol=0, atol=1e-9)        # float64 eigenvectors from two solvers
F32 = dict(rtol=2e-6, atol=2e-6)     # values the reference rounds to float32


@pytest.fixture(scope='module')
def ref():
    p = FIX/'saliency_golden.npz'
    if not p.exists(): pytest.fail(f'{p} is missing: run tests/fixtures/make_golden_saliency.py')
    return {k: torch.from_numpy(v) for k, v in np.load(p).items()}


def _cases(ref, prefix):
    return range(int(ref[f'{prefix}_n']))


def test_tokencut_matches_reference(ref):
    for i in _cases(ref, 'tc'):
        f = ref[f'tc{i}_feats'].double()[None]
        cut = tokencut(f, tau=0.2, eps=1e-5, border_flip=False)        # TokenCut's own rule
        assert torch.equal(cut.mask[0], ref[f'tc{i}_mask'].bool()), f'case {i}: object mask'
        # `get_saliency`'s ncut returns the eigenvector with the solver's arbitrary sign (it flips a copy it then
        # drops): compare up to sign
        want = ref[f'tc{i}_eigvec'].double()
        want = want if (cut.vector[0]*want).sum() > 0 else -want
        torch.testing.assert_close(cut.vector[0], want, **EIG)
        # patches with identical graph rows have equal |v|: the seed is any of the tied largest entries
        s, s_ref = cut.seed[0].item(), int(ref[f'tc{i}_seed'])
        assert abs(want.flatten()[s].abs() - want.flatten()[s_ref].abs()) < 1e-12, f'case {i}: seed {s} vs {s_ref}'


def test_border_rule_changes_only_flipped_cuts(ref):
    for i in _cases(ref, 'tc'):
        f = ref[f'tc{i}_feats'].double()[None]
        cut = tokencut(f)
        if not cut.flipped[0]: assert torch.equal(cut.mask[0], ref[f'tc{i}_mask'].bool())
        else: assert not (cut.mask[0] & ref[f'tc{i}_mask'].bool()).any()   # the other side of the same cut


def test_tokencut_ignores_a_global_sign_of_the_features(ref):
    f = ref['tc0_feats'].double()[None]
    a, b = tokencut(f), tokencut(-f)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.seed, b.seed)


def test_spectral_matches_deep_spectral_methods(ref):
    for i in _cases(ref, 'dsm'):
        f = ref[f'dsm{i}_feats'].double()[None]
        h, w = f.shape[-2:]
        v, lam = spectral_saliency(f, colour_weight=0, sign='minority')  # DSM's sign rule, features only
        torch.testing.assert_close(lam[0], ref[f'dsm{i}_values'][1].double(), rtol=0, atol=1e-10)
        want = ref[f'dsm{i}_vectors'][1].double().reshape(h, w)
        torch.testing.assert_close(v[0], want, **F32)


def test_metrics_match_tokencut(ref):
    pred, gt = ref['metric_pred'].double(), ref['metric_gt'].bool()
    r = saliency_scores(pred, gt, average='f')                            # TokenCut averages per-image F
    torch.testing.assert_close(torch.tensor(r['max_f'], dtype=torch.float64), ref['metric_fmax'].double(), **F32)
    torch.testing.assert_close(torch.tensor(r['iou'], dtype=torch.float64), ref['metric_iou'].double(), **F32)
    assert r['n_images'] == len(pred)


def test_metrics_match_tokencut_with_an_empty_ground_truth(ref):
    r = saliency_scores(ref['metric2_pred'].double(), ref['metric2_gt'].bool(), average='f')
    torch.testing.assert_close(torch.tensor(r['max_f'], dtype=torch.float64), ref['metric2_fmax'].double(), **F32)


def test_thresholds_are_strict():
    "Binarising is `map > t_k` (TokenCut's `prediction > split`): at t_0 = 0 a binary map is its own mask."
    pred = torch.tensor([[[1., 1., 0., 0.]]])
    gt = torch.tensor([[[True, False, True, False]]])
    m = SaliencyMeter(); m.update(pred, gt)
    assert m.precision[0][0].item() == 0.5 and m.recall[0][0].item() == 0.5
    assert m.thresholds[1].item() == 1/255 and len(m.thresholds) == 255
