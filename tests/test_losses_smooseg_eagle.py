"""SmooSeg and EAGLE losses against golden outputs of the reference code, plus property tests.

The fixtures were produced by `tests/fixtures/make_golden_smooseg_eagle.py` from checkouts of
mc-lan/SmooSeg (1eecdec7) and MICV-yonsei/EAGLE (5f2976c4); inputs are random, outputs are theirs.
"""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import usseg  # noqa: F401  (the compat shim first)
from usseg.cluster import ClusterLookup
from usseg.losses.eagle import (COLOUR_SPACES, adaptive_correspondence, code_affinity,
                                colour_affinity, eagle_correspondence_loss, eicue, key_similarity, medoid_prototypes,
                                nce_schedule, normalized_laplacian, object_contrastive_loss, patch_colours,
                                smallest_eigenvectors)
from usseg.features import closeness, super_perm
from usseg.losses.smooseg import pair_energy, smooseg_loss, smoothness_loss
from usseg.methods.eagle import EagleConfig
from usseg.methods.smooseg import SmooSegConfig
from usseg.models.smooseg import SmooSegPredictor, SmooSegProjection

FIX = Path(__file__).parent/'fixtures'
EXACT = dict(rtol=1e-10, atol=1e-12)   # float64 against float64


def _load(name):
    p = FIX/name
    if not p.exists(): pytest.fail(f'{p} is missing: run tests/fixtures/make_golden_smooseg_eagle.py')
    return {k: torch.from_numpy(v).double() if v.dtype.kind == 'f' else torch.from_numpy(v) for k, v in np.load(p).items()}


@pytest.fixture(scope='module')
def sg(): return _load('smooseg_golden.npz')


@pytest.fixture(scope='module')
def eg(): return _load('eagle_golden.npz')


def close(a, b, **kw):
    torch.testing.assert_close(a.detach().double(), b.double(), **(kw or EXACT))


def leaf(t): return t.clone().requires_grad_()


# ------------------------------------------------------------------ SmooSeg parity
def test_smooseg_helper(sg):
    c1, c2 = leaf(sg['helper_c1']), leaf(sg['helper_c2'])
    loss, cd = pair_energy(sg['helper_f1'], sg['helper_f2'], c1, c2, shift=sg['helper_shift'].item())
    close(loss, sg['helper_loss']); close(cd, sg['helper_cd'])
    g1, g2 = torch.autograd.grad((loss * sg['helper_wt']).sum(), [c1, c2])
    close(g1, sg['helper_grad_c1']); close(g2, sg['helper_grad_c2'])


def test_smooseg_energy_minimization_loss(sg):
    p_s, p_t = leaf(sg['energy_local']), leaf(sg['energy_global'])
    out = smooseg_loss(sg['energy_signal'], p_s, p_t, b_intra=sg['energy_b_intra'].item(),
                       b_inter=sg['energy_b_inter'].item(), temperature=0.1, perm=sg['energy_perm'])
    for name, ours in zip(['smooth', 'data', 'intra_cd', 'inter_cd'], out[1:]): close(ours, sg[f'energy_out_{name}'])
    close(out.loss, sg['energy_out_smooth'] + sg['energy_out_data'])
    gs, gt = torch.autograd.grad(out.smooth + out.data, [p_s, p_t])
    close(gs, sg['energy_grad_local']); close(gt, sg['energy_grad_global'])


def test_smooseg_predictor(sg):
    pred = SmooSegPredictor(5, 8, alpha=0.998).double()
    with torch.no_grad(): pred.phi_s.copy_(sg['pred_phi_s']); pred.phi_t.copy_(sg['pred_phi_t'])
    x = leaf(sg['pred_x'])
    p_s, p_t = pred(x)
    close(p_s, sg['pred_local']); close(p_t, sg['pred_global'])
    gx, gphi = torch.autograd.grad((p_s * sg['pred_w1']).sum() + (p_t * sg['pred_w2']).sum(), [x, pred.phi_s])
    close(gx, sg['pred_grad_x']); close(gphi, sg['pred_grad_phi_s'])
    with torch.no_grad(): pred.phi_s.copy_(sg['pred_phi_s_stepped'])
    pred.update_teacher()
    close(pred.phi_t, sg['pred_phi_t_after'])


def test_smooseg_projection(sg):
    proj = SmooSegProjection(16, 8).double().eval()
    names = {'cluster1.0': 'linear', 'cluster2.0': 'nonlinear.0', 'cluster2.2': 'nonlinear.2'}
    sd = {}
    for k, v in sg.items():
        if k.startswith('proj_sd_'):
            mod, p = k[len('proj_sd_'):].rsplit('.', 1)
            sd[f'{names[mod]}.{p}'] = v
    proj.load_state_dict(sd)
    with torch.no_grad(): f, code = proj(sg['proj_x'])
    close(f, sg['proj_feat']); close(code, sg['proj_code'])


# ------------------------------------------------------------------ EAGLE parity
def test_eagle_colour_affinity(eg):
    px = eg['colour_px']
    ours = colour_affinity(px.reshape(2, -1, 3) / 255, sigma=0.1)
    ref = eg['colour_out']
    close(ours, ref / ref.amax((1, 2), keepdim=True))   # upstream divides by the max inside `laplacian`


def test_eagle_laplacian(eg):
    z = eg['lap_z']                                      # (B, N, D)
    code = z.transpose(1, 2).reshape(2, -1, 6, 6)
    adj = code_affinity(code)
    ref_adj = eg['lap_adj'].clamp_min(0); close(adj, ref_adj / ref_adj.amax((1, 2), keepdim=True))
    w = eg['lap_w']
    lap = normalized_laplacian(adj + w / w.amax((1, 2), keepdim=True))
    close(lap, eg['lap_out'])
    assert torch.isfinite(lap).all() and lap[1, 0, 0] == 1   # the isolated patch: degree set to 1


@pytest.mark.parametrize('h', [14, 28])
def test_eagle_eigen(eg, h):
    code = eg[f'eig{h}_code'].transpose(1, 2).reshape(2, -1, h, h)
    out = eicue(code, eg[f'eig{h}_img'], k=4, colour_space='upstream')
    vals_all = eg[f'eig{h}_vals_all']
    assert (vals_all[:, 4] - vals_all[:, 3] > 1e-3).all()        # the kept subspace is well defined
    close(out.values, eg[f'eig{h}_vals'], rtol=0, atol=1e-6)      # upstream casts to float32
    V = out.vectors.flatten(2).transpose(1, 2)                    # (B, N, 3)
    R = eg[f'eig{h}_vecs'][:, :, 1:]
    close(V @ V.transpose(1, 2), R @ R.transpose(1, 2), rtol=0, atol=1e-5)
    # same sign convention: the columns agree up to float32 rounding, not only the projector
    close(V, R, rtol=0, atol=1e-4)


def test_eagle_cluster_lookup(eg):
    look = ClusterLookup(3, 7).double()
    with torch.no_grad(): look.clusters.copy_(eg['lookup_clusters'])
    x = leaf(eg['lookup_x'])
    loss, logp = look(x, 1, log_probs=True)
    close(loss, eg['lookup_loss']); close(logp, eg['lookup_logp'])
    gx, gc = torch.autograd.grad(loss + (logp * eg['lookup_w']).sum(), [x, look.clusters])
    close(gx, eg['lookup_grad_x']); close(gc, eg['lookup_grad_clusters'])


@pytest.mark.parametrize('ds,kw', [('cocostuff27', {}), ('cityscapes', dict(label_smoothing=0.1, weighting='mean'))])
def test_eagle_object_contrastive(eg, ds, kw):
    s1, s2 = leaf(eg[f'nce_{ds}_s1']), leaf(eg[f'nce_{ds}_s2'])
    keys = eg[f'nce_{ds}_keys'].reshape(2, 8, 6, 6)
    close(key_similarity(keys), eg[f'nce_{ds}_sim'])
    loss = object_contrastive_loss(s1, s2, eg[f'nce_{ds}_seg'], eg[f'nce_{ds}_sim'], tau=0.07, gamma=0.7, **kw)
    close(loss, eg[f'nce_{ds}_loss'])
    g1, g2 = torch.autograd.grad(loss, [s1, s2])
    close(g1, eg[f'nce_{ds}_grad_s1']); close(g2, eg[f'nce_{ds}_grad_s2'])


@pytest.mark.parametrize('kind', ['pos', 'neg'])
def test_eagle_correspondence_helper(eg, kind):
    c1, c2 = leaf(eg[f'corr_{kind}_c1']), leaf(eg[f'corr_{kind}_c2'])
    loss, cd = adaptive_correspondence(eg['corr_f1'], eg['corr_f2'], c1, c2, positive=kind == 'pos',
                                       shift_bias=eg['corr_shift_bias'].item(), shift_value=eg['corr_shift_value'].item())
    close(loss, eg[f'corr_{kind}_loss']); close(cd, eg[f'corr_{kind}_cd'])
    g1, g2 = torch.autograd.grad((loss * eg[f'corr_{kind}_wt']).sum(), [c1, c2])
    close(g1, eg[f'corr_{kind}_grad_c1']); close(g2, eg[f'corr_{kind}_grad_c2'])


def test_eagle_correspondence_forward(eg):
    t = {k: eg[f'fwd_{k}'].float() for k in ('feats', 'feats_pos', 'feats_aug', 'code', 'code_pos', 'code_aug')}
    for k in ('code', 'code_pos', 'code_aug'): t[k].requires_grad_()
    torch.manual_seed(int(eg['fwd_seed']))
    pos, neg = eagle_correspondence_loss(t['feats'], t['feats_pos'], t['feats_aug'], t['code'], t['code_pos'], t['code_aug'],
                                         n_samples=4, neg_samples=5, shift_bias=0.0, shift_value=3.5)
    f32 = dict(rtol=1e-5, atol=1e-6)
    close(pos, eg['fwd_pos'], **f32); close(neg, eg['fwd_neg'], **f32)
    grads = torch.autograd.grad(0.25 * pos + 0.63 * neg, [t['code'], t['code_pos'], t['code_aug']])
    for g, k in zip(grads, ('code', 'code_pos', 'code_aug')): close(g, eg[f'fwd_grad_{k}'], **f32)


# ------------------------------------------------------------------ properties
def test_super_perm_never_pairs_an_image_with_itself():
    g = torch.Generator().manual_seed(0)
    for B in (2, 3, 5, 16):
        for _ in range(100): assert (super_perm(B, generator=g) != torch.arange(B)).all()
    with pytest.raises(ValueError, match='at least 2'): super_perm(1)


def test_closeness_pointwise_rows_share_the_global_mean():
    f = torch.randn(3, 7, 4, 5, dtype=torch.float64)
    raw, fd = closeness(f, f, pointwise=False), closeness(f, f)
    torch.testing.assert_close(fd.mean((3, 4)), raw.mean().expand(3, 4, 5))


def test_smoothness_prefers_the_true_segmentation():
    "Two well separated feature groups: labelling them apart has lower energy than mixing them."
    B, h, w = 2, 4, 4
    seg = torch.zeros(B, h, w, dtype=torch.long); seg[:, :, 2:] = 1
    feats = F.one_hot(seg, 2).permute(0, 3, 1, 2).double() + 0.05 * torch.randn(B, 2, h, w, dtype=torch.float64)
    good = F.one_hot(seg, 2).permute(0, 3, 1, 2).double()
    bad = F.one_hot(torch.randint(0, 2, (B, h, w)), 2).permute(0, 3, 1, 2).double()
    perm = torch.tensor([1, 0])
    e = lambda p: smoothness_loss(feats, p, b_intra=0.0, b_inter=0.5, perm=perm).loss
    assert e(good) < e(bad)


def test_laplacian_spectrum_and_batched_eigh():
    torch.manual_seed(0)
    W = code_affinity(torch.randn(3, 6, 5, 5, dtype=torch.float64))
    L = normalized_laplacian(W)
    vals = torch.linalg.eigvalsh(L)
    assert vals.min() > -1e-10 and vals.max() < 2 + 1e-10
    e = smallest_eigenvectors(L, 4)
    for b in range(3):  # the batched call matches one matrix at a time
        eb = smallest_eigenvectors(L[b:b + 1], 4)
        torch.testing.assert_close(e.values[b], eb.values[0])
        torch.testing.assert_close(e.vectors[b] @ e.vectors[b].T, eb.vectors[0] @ eb.vectors[0].T)


def test_colour_space_matters():
    img = usseg.core.normalize(torch.rand(1, 3, 32, 32))
    a = {cs: colour_affinity(patch_colours(img, (8, 8), cs)) for cs in COLOUR_SPACES}
    assert a['upstream'].min() > 0.9 and a['rgb'].min() < 0.1
    with pytest.raises(ValueError, match='unknown colour_space'): patch_colours(img, (8, 8), 'hsv')


def test_medoid_matches_brute_force():
    torch.manual_seed(1)
    z, lab = torch.randn(50, 4, dtype=torch.float64), torch.randint(0, 4, (50,))
    protos, classes, target = medoid_prototypes(z, lab, chunk=7)   # small chunks exercise the blocking
    for i, c in enumerate(classes):
        zc = z[lab == c]
        cost = ((zc[:, None] - zc[None]) ** 2).sum(-1).sqrt().sum(1)
        torch.testing.assert_close(protos[i], zc[cost.argmin()])
    torch.testing.assert_close(classes[target], lab)


def test_object_contrastive_ignores_label_names():
    torch.manual_seed(2)
    z1, z2 = F.normalize(torch.randn(32, 8, dtype=torch.float64), dim=1), F.normalize(torch.randn(32, 8, dtype=torch.float64), dim=1)
    lab = torch.randint(0, 4, (2, 4, 4))
    sim = key_similarity(torch.randn(2, 5, 4, 4, dtype=torch.float64))
    renamed = torch.tensor([7, 3, 11, 0])[lab]               # an order-preserving renaming would be trivial
    a = object_contrastive_loss(z1, z2, lab, sim)
    b = object_contrastive_loss(z1, z2, renamed, sim)
    torch.testing.assert_close(a, b)


def test_nce_schedule_is_a_step():
    cfg = EagleConfig.cityscapes27()
    assert [nce_schedule(s, cfg.step_schedulers, cfg.momentum_limit) for s in (0, 380, 381)] == [0.0, 0.0, 0.7]


def test_configs():
    assert SmooSegConfig.cocostuff27().max_steps == 8000 and SmooSegConfig.cityscapes27().max_steps == 3000
    assert EagleConfig.cocostuff27().eigen_clusters == 32 and EagleConfig.cityscapes27().eigen_clusters == 28
    with pytest.raises(ValueError, match='no SmooSeg configuration'): SmooSegConfig.for_dataset('voc2012')
    with pytest.raises(ValueError, match='no EAGLE configuration'): EagleConfig.for_dataset('potsdam3')
