"""Parity of usseg's STEGO and Hidden Positives heads and losses with the reference implementations.

The golden fixtures in `tests/fixtures/{stego,hp}_golden.pt` hold random inputs and the outputs and gradients
that upstream's own functions computed on them (STEGO `src/modules.py` at eb4d6b52, HP `loss.py` and
`model/dino/DinoFeaturizer.py` at 89136446), in float64 on a CPU. `tests/fixtures/make_golden_stego_hp.py`
regenerates them from reference checkouts.
"""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import usseg  # noqa: F401
from usseg.features import super_perm
from usseg.losses.hp import hp_loss, lhp_attention, neighbourhood_mask, propagate_code
from usseg.losses.stego import correspondence_pair_loss, stego_loss
from usseg.models.heads import StegoHead, reference_head_state_dict

FX = Path(__file__).parent/'fixtures'
HEAD_KEYS = ('linear.weight', 'linear.bias', 'nonlinear.0.weight', 'nonlinear.0.bias', 'nonlinear.2.weight', 'nonlinear.2.bias')


@pytest.fixture(scope='module')
def stego():
    return torch.load(FX/'stego_golden.pt', weights_only=True)


@pytest.fixture(scope='module')
def hp():
    return torch.load(FX/'hp_golden.pt', weights_only=True)


def seeded_head_weights(in_dim, dim, seed):
    "The weights make_golden_stego_hp.py put into upstream's head (same generator calls)."
    g = torch.Generator().manual_seed(seed)
    shapes = [(dim, in_dim, 1, 1), (dim,), (in_dim, in_dim, 1, 1), (in_dim,), (dim, in_dim, 1, 1), (dim,)]
    return {k: torch.randn(s, generator=g, dtype=torch.float64) / math.sqrt(in_dim) for k, s in zip(HEAD_KEYS, shapes)}


def maxdiff(a, b): return (a - b).abs().max().item()


# ------------------------------------------------------------------ STEGO
def test_pair_loss_matches_helper(stego):
    "correspondence_pair_loss == ContrastiveCorrelationLoss.helper: loss, code correlation, gradients."
    assert len(stego['pair_cases']) == 6
    for case in stego['pair_cases']:
        c1 = case['c1'].clone().requires_grad_(); c2 = case['c2'].clone().requires_grad_()
        if case['self_pair']: loss, cd = correspondence_pair_loss(case['f1'], case['f1'], c1, c1, case['shift'], pointwise=case['pointwise'],
                                                                 zero_clamp=case['zero_clamp'], stabilize=case['stabilize'])
        else: loss, cd = correspondence_pair_loss(case['f1'], case['f2'], c1, c2, case['shift'], pointwise=case['pointwise'],
                                                  zero_clamp=case['zero_clamp'], stabilize=case['stabilize'])
        (loss * case['w']).sum().backward()
        assert loss.dtype == torch.float64 and loss.shape == case['loss'].shape
        assert maxdiff(loss, case['loss']) < 1e-13, case
        assert maxdiff(cd, case['cd']) < 1e-13
        assert maxdiff(c1.grad, case['grad_c1']) < 1e-13
        if not case['self_pair']: assert maxdiff(c2.grad, case['grad_c2']) < 1e-13
    # the fixture exercises what it claims to: clamps active, stabilize cap reached
    st = [c for c in stego['pair_cases'] if c['stabilize']]
    assert any((c['cd'] > 0.8).any() for c in st) and any((c['cd'] < 0).any() for c in stego['pair_cases'])


def test_full_loss_matches_forward(stego):
    "stego_loss == ContrastiveCorrelationLoss.forward weighted as training_step, same seed: values, draws, gradients."
    for case in stego['full_cases']:
        B, S = case['B'], case['S']
        # our draws in upstream's order reproduce its coordinates and permutations
        g = torch.Generator().manual_seed(case['seed'])
        c1 = torch.rand(B, S, S, 2, generator=g, dtype=torch.float64) * 2 - 1
        c2 = torch.rand(B, S, S, 2, generator=g, dtype=torch.float64) * 2 - 1
        perms = torch.stack([super_perm(B, generator=g) for _ in range(5)])
        assert torch.equal(c1, case['coords1']) and torch.equal(c2, case['coords2']) and torch.equal(perms, case['perms'])
        code = case['code'].clone().requires_grad_(); code_pos = case['code_pos'].clone().requires_grad_()
        si, sk, sr = case['shifts']
        loss, parts = stego_loss(case['feats'], case['feats_pos'], code, code_pos,
                                 pos_intra_weight=case['pos_intra_weight'], pos_inter_weight=case['pos_inter_weight'],
                                 neg_inter_weight=case['neg_inter_weight'], pos_intra_shift=si, pos_inter_shift=sk, neg_inter_shift=sr,
                                 feature_samples=S, neg_samples=5, pointwise=case['pointwise'], zero_clamp=case['zero_clamp'],
                                 stabilize=case['stabilize'], generator=torch.Generator().manual_seed(case['seed']))
        loss.backward()
        assert abs(loss.item() - case['loss'].item()) < 1e-13
        for k in ('intra', 'inter', 'neg'):
            assert abs(parts[{'intra': 'self', 'inter': 'knn', 'neg': 'rand'}[k]].item() - case[k].item()) < 1e-13
        assert maxdiff(code.grad, case['grad_code']) < 1e-13
        assert maxdiff(code_pos.grad, case['grad_code_pos']) < 1e-13


def test_full_loss_global_generator_matches(stego):
    "With generator=None the global generator is used in upstream's order (what a seeded training loop gets)."
    case = stego['full_cases'][0]
    torch.manual_seed(case['seed'])
    loss, _ = stego_loss(case['feats'], case['feats_pos'], case['code'], case['code_pos'], pos_intra_weight=case['pos_intra_weight'],
                         pos_inter_weight=case['pos_inter_weight'], neg_inter_weight=case['neg_inter_weight'],
                         pos_intra_shift=case['shifts'][0], pos_inter_shift=case['shifts'][1], neg_inter_shift=case['shifts'][2],
                         feature_samples=case['S'], pointwise=case['pointwise'], zero_clamp=case['zero_clamp'], stabilize=case['stabilize'])
    assert abs(loss.item() - case['loss'].item()) < 1e-13


def test_stego_head_dropout_order(stego):
    "StegoHead in training mode draws its three dropout masks in the order of STEGO's DinoFeaturizer.forward."
    fx = stego['featurizer']
    head = StegoHead(384, fx['dim']).double()
    head.load_state_dict(seeded_head_weights(384, fx['dim'], fx['weight_seed']))
    head.eval()
    assert maxdiff(head(fx['image_feat']), fx['code_eval']) < 1e-12
    head.train()
    torch.manual_seed(fx['dropout_seed'])
    feats, code = head(fx['image_feat'], return_feats=True)
    assert torch.equal(feats == 0, fx['feats_train'] == 0) and maxdiff(feats, fx['feats_train']) < 1e-12
    assert maxdiff(code, fx['code_train']) < 1e-12


# ------------------------------------------------------------------ HP
def test_supcon_matches_reference(hp):
    "hp_loss == SupConLoss.forward (loss_version 1, reweighting 1): loss and gradients for both projections."
    assert {c['rho'] for c in hp['supcon_cases']} == {1.0, 0.5}
    for case in hp['supcon_cases']:
        zr = case['z_raw'].clone().requires_grad_(); zlr = case['z_lhp_raw'].clone().requires_grad_()
        loss, _ = hp_loss(F.normalize(zr, dim=1), case['f'], case['e'], case['pool_ag'], case['pool_sp'],
                          z_lhp=F.normalize(zlr, dim=1), patches_per_image=case['n'], tau=case['tau'], lmbd=case['lmbd'],
                          rho=case['rho'], generator=torch.Generator().manual_seed(case['seed']))
        loss.backward()
        # upstream casts the anchor weights to float32: agreement to ~1e-8 relative, not 1e-15
        assert abs(loss.item() - case['loss'].item()) <= 1e-6 * abs(case['loss'].item()), case['rho']
        for g, ref in ((zr.grad, case['grad_z']), (zlr.grad, case['grad_z_lhp'])):
            assert maxdiff(g, ref) <= 1e-6 * ref.abs().max().item()


def test_supcon_rho_sampling_matters(hp):
    "The ρ=0.5 case only matches with upstream's random draw: another seed gives another loss."
    case = next(c for c in hp['supcon_cases'] if c['rho'] == 0.5)
    args = (F.normalize(case['z_raw'], dim=1), case['f'], case['e'], case['pool_ag'], case['pool_sp'])
    kw = dict(z_lhp=F.normalize(case['z_lhp_raw'], dim=1), patches_per_image=case['n'], tau=case['tau'], lmbd=case['lmbd'], rho=0.5)
    other, _ = hp_loss(*args, **kw, generator=torch.Generator().manual_seed(case['seed'] + 1))
    assert abs(other.item() - case['loss'].item()) > 1e-6


def test_hp_head_and_ema_head(hp):
    "Upstream head keys load through reference_head_state_dict and give HP's code and EMA code."
    fx = hp['featurizer']
    assert sorted(fx['head_keys']) == sorted([f'{n}.{k}' for n in ('cluster1.0', 'ema_model1.0') for k in ('weight', 'bias')]
                                             + [f'{n}.{i}.{k}' for n in ('cluster2', 'ema_model2') for i in (0, 2) for k in ('weight', 'bias')])
    for ema, seed, ref in ((False, fx['weight_seeds'][0], fx['code']), (True, fx['weight_seeds'][1], fx['code_ema'])):
        ours = seeded_head_weights(384, fx['dim'], seed)
        names = ('ema_model1', 'ema_model2') if ema else ('cluster1', 'cluster2')
        upstream = {f'net.{names[0]}.0.weight': ours['linear.weight'], f'net.{names[0]}.0.bias': ours['linear.bias'],
                    **{f'net.{names[1]}.{i}.{k}': ours[f'nonlinear.{i}.{k}'] for i in (0, 2) for k in ('weight', 'bias')}}
        head = StegoHead(384, fx['dim']).double().eval()
        head.load_state_dict(reference_head_state_dict(upstream, ema=ema), strict=True)
        assert maxdiff(head(fx['image_feat']), ref) < 1e-12


def test_neighbourhood_mask_matches_index_mask(hp):
    fx = hp['featurizer']
    mask, count = neighbourhood_mask(fx['sz'], fx['sz'])
    assert torch.equal(mask, fx['index_mask']) and torch.equal(count, fx['divide_num'])
    for sz in (2, 3, 7):  # other grid sizes: the same rule as upstream's case analysis (4, 6 or 9 neighbours)
        m, c = neighbourhood_mask(sz, sz)
        assert set(c.tolist()) <= {4, 6, 9} and (c == 4).sum() == 4 and torch.equal(m, m.T)


def test_local_propagation_matches_featurizer(hp):
    "lhp_attention + propagate_code == DinoFeaturizer.forward(train=True)'s code_3x3, values and gradient."
    fx = hp['featurizer']
    attn = fx['attn']                                                     # (B, heads, N+1, N+1) pre-softmax, float64
    # upstream averages the heads in the input dtype, then works in float32
    weights = lhp_attention(attn[:, :, 1:, 1:].mean(1).float())
    code = fx['code_in'].clone().requires_grad_()
    out = propagate_code(code, weights)
    (out * fx['w']).sum().backward()
    assert out.dtype == torch.float64
    # The weights are float32 (upstream's path), so the result carries float32 rounding: the softmax and quantile
    # kernels round differently on AVX-512, AVX2 and the default kernels (measured: 2e-16, 6.0e-8, 1.3e-7 against a
    # largest value of 1.25, i.e. at most ~1 float32 ulp of it). Allow 8 ulps of the largest value; a wrong formula
    # (sigma 28.01 instead of 28, a count off by one, a quantile 0.89 instead of 0.9) moves it by 1e-5 or more.
    eps32 = torch.finfo(torch.float32).eps
    assert maxdiff(out, fx['code_3x3']) < 8 * eps32 * fx['code_3x3'].abs().max().item()
    assert maxdiff(code.grad, fx['grad_code']) < 8 * eps32 * fx['grad_code'].abs().max().item()
    # the 4-D float64 path differs only by upstream's float32 rounding of the attention
    out64 = propagate_code(fx['code_in'], lhp_attention(attn))
    assert maxdiff(out64, fx['code_3x3']) < 1e-5 * fx['code_3x3'].abs().max().item()
    # attention probabilities give the same weights as the logits
    out_p = propagate_code(fx['code_in'], lhp_attention(attn.softmax(-1), probs=True))
    assert maxdiff(out_p, out64) < 1e-9


def test_fixture_sizes():
    total = sum(p.stat().st_size for p in FX.glob('*.pt'))
    assert total < 1_000_000, total
