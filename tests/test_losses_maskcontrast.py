"""MaskContrast losses against golden outputs of the reference code, values and gradients in float64.

The fixture was produced by `tests/fixtures/make_golden_maskcontrast.py` from a checkout of
wvangansbeke/Unsupervised-Semantic-Segmentation (dfd5fa0a1542): `ContrastiveModel.forward` and `train` on
random inputs, run in float64. Both sides compute the same sums in different orders, so values and gradients
agree to a few units in the last place: 1e-12, absolute and relative (every compared value is of order 1e-3
to 50).
"""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import usseg  # noqa: F401  (the compat shim first)
from usseg.losses.maskcontrast import (balanced_bce, enet_cross_entropy, enet_weights, enqueue_, mask_pool,
                                       maskcontrast_logits, maskcontrast_loss, momentum_update_)

FIX = Path(__file__).parent/'fixtures'
EXACT = dict(rtol=1e-12, atol=1e-12)


@pytest.fixture(scope='module')
def ref():
    p = FIX/'maskcontrast_golden.npz'
    if not p.exists(): pytest.fail(f'{p} is missing: run tests/fixtures/make_golden_maskcontrast.py')
    return {k: torch.from_numpy(v).double() if v.dtype.kind == 'f' else torch.from_numpy(v) for k, v in np.load(p).items()}


def close(a, b): torch.testing.assert_close(a.detach().double(), b.double(), **EXACT)


def leaves(ref): return [ref[n].clone().requires_grad_() for n in ('q', 'k', 'sal_logit')]


def test_logits_and_targets(ref):
    q, k, _ = leaves(ref)
    out = maskcontrast_logits(q, k, ref['sal_q'], ref['sal_k'], ref['queue'], T=float(ref['T']))
    close(out.logits, ref['logits'])
    assert torch.equal(out.target, ref['target'])
    gq, gk = torch.autograd.grad((out.logits*ref['R']).sum(), [q, k])
    close(gq, ref['logits_grad_q']); close(gk, ref['logits_grad_k'])   # the key gradient runs through mask_pool


def test_mask_pool_is_the_enqueued_prototype(ref):
    B = len(ref['q'])
    protos = mask_pool(F.normalize(ref['k'], dim=1), ref['sal_k'])
    ptr = int(ref['ptr'])
    close(protos, ref['queue_after'][:, ptr:ptr + B].T)


def test_queue_update(ref):
    queue = ref['queue'].clone()
    out = maskcontrast_logits(ref['q'], ref['k'], ref['sal_q'], ref['sal_k'], queue, T=float(ref['T']))
    ptr = enqueue_(queue, int(ref['ptr']), out.prototypes)
    assert ptr == int(ref['ptr_after'])
    close(queue, ref['queue_after'])


def test_enet_weights_and_contrastive_loss(ref):
    logits, target = ref['logits'], ref['target']
    close(enet_weights(target, logits.shape[1]), ref['enet_weight'])
    close(enet_cross_entropy(logits, target), ref['contrastive_loss'])


def test_balanced_bce(ref):
    _, _, s = leaves(ref)
    loss = balanced_bce(s, ref['sal_q'])
    close(loss, ref['sal_loss']); close(loss, ref['saliency_loss'])
    g, = torch.autograd.grad(loss, [s])
    close(g, ref['sal_grad'])


def test_total_loss_and_gradients(ref):
    q, k, s = leaves(ref)
    out = maskcontrast_loss(q, s, k, ref['sal_q'], ref['sal_k'], ref['queue'], T=float(ref['T']))
    close(out.contrastive, ref['contrastive_loss']); close(out.saliency, ref['saliency_loss']); close(out.loss, ref['total_loss'])
    gq, gk, gs = torch.autograd.grad(out.loss, [q, k, s])
    close(gq, ref['train_grad_q']); close(gk, ref['train_grad_k']); close(gs, ref['train_grad_sal'])


def test_momentum_update_keeps_batch_norm_statistics(ref):
    def net(w, bn):
        n = nn.Module(); n.w = nn.Parameter(w.clone()); n.bn = nn.BatchNorm1d(2).double()
        n.bn.running_mean.copy_(bn); return n
    key, query = net(ref['w_k'], ref['bn_k']), net(ref['w_q'], ref['bn_q'])
    momentum_update_(key, query, m=float(ref['m']))
    close(key.w, ref['w_k_after']); close(key.bn.running_mean, ref['bn_k_after'])


def test_batch_of_one():
    "Upstream's `squeeze()` collapses the batch when B = 1; here one image works like any other batch."
    q, k = torch.randn(1, 4, 3, 3, dtype=torch.float64), torch.randn(1, 4, 3, 3, dtype=torch.float64)
    m = torch.ones(1, 3, 3, dtype=torch.long)
    out = maskcontrast_loss(q, torch.zeros(1, 3, 3, dtype=torch.float64), k, m, m, F.normalize(torch.randn(4, 4, dtype=torch.float64), dim=0))
    assert out.logits.shape == (9, 5) and torch.isfinite(out.loss)
