"""HSC's losses (and the EPS / SEAM pieces it builds on) against golden outputs of the reference code.

The fixture was produced by `tests/fixtures/make_golden_hsc.py` from checkouts of Wu0409/HSC_WSSS (402ee60592e1),
halbielee/EPS (0c2cdd03239e) and YudeWang/SEAM (3212261b9d00), run on a CPU in float64 (how is said there).
Everything here is float64 against float64: values and gradients agree to `EXACT` (rtol 1e-10, atol 1e-12).
"""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import usseg  # noqa: F401  (the compat shim first)
from usseg.losses.hsc import (HSCBanks, adaptive_min_pool_loss, class_contrast, crf_image, eps_loss, er_ecr_loss,
                              gap, hsc_contrast, hsc_loss, hsc_normalize, hsc_pseudo_labels, init_banks, max_norm,
                              max_onehot, pcm, pcm_input, pixel_contrast, roi_contrast, topk_stable)

FIX = Path(__file__).parent/'fixtures'
EXACT = dict(rtol=1e-10, atol=1e-12)   # float64 against float64


def _fixture_module():
    spec = importlib.util.spec_from_file_location('make_golden_hsc', FIX/'make_golden_hsc.py')
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    return m


MK = _fixture_module()   # fake_trunk and step_image: the same stand-in the reference ran with


@pytest.fixture(scope='module')
def g():
    p = FIX/'hsc_golden.npz'
    if not p.exists(): pytest.fail(f'{p} is missing: run tests/fixtures/make_golden_hsc.py')
    return {k: torch.from_numpy(v).double() if v.dtype.kind == 'f' else torch.from_numpy(v) for k, v in np.load(p).items()}


def close(a, b, **kw):
    a = a.detach().double() if isinstance(a, torch.Tensor) else torch.as_tensor(a, dtype=torch.float64)
    torch.testing.assert_close(a.reshape(b.shape), b.double(), **(kw or EXACT))


def leaf(t): return t.clone().requires_grad_()


# ------------------------------------------------------------------ SEAM pieces (HSC module/train_helper.py, loss_helper.py)
def test_max_norm(g):
    for d in (4, 3):
        x = leaf(g[f'maxnorm{d}_x'])
        y = max_norm(x)
        close(y, g[f'maxnorm{d}_y'])
        close(torch.autograd.grad((y * g[f'maxnorm{d}_w']).sum(), x)[0], g[f'maxnorm{d}_grad'])


def test_max_onehot(g):
    x = g['onehot_x'].clone()
    close(max_onehot(x), g['onehot_y'])
    close(x, g['onehot_x'])                                  # ours leaves its input alone (upstream writes into it)
    fixed = max_onehot(x, first_is_background=False)         # every channel competes
    assert ((fixed != 0).sum(1) == 1).all() and not torch.equal(fixed, g['onehot_y'])


def test_adaptive_min_pool(g):
    x = leaf(g['amp_x'])
    loss = adaptive_min_pool_loss(x)
    close(loss, g['amp_loss'])
    close(torch.autograd.grad(loss, x)[0], g['amp_grad'])


def test_er_ecr(g):
    ins = [leaf(g[f'er_in{i}']) for i in range(4)]
    label = g['er_label'][:, :-1, 0, 0]
    er, ecr = er_ecr_loss(*ins, label)
    close(er, g['er_loss']); close(ecr, g['ecr_loss'])
    for gi, ref in zip(torch.autograd.grad(er + 0.7 * ecr, ins), [g[f'er_grad{i}'] for i in range(4)]): close(gi, ref)
    _, ecr_fixed = er_ecr_loss(*ins, label, onehot='fixed')
    assert abs(ecr_fixed.item() - ecr.item()) > 1e-4        # the quirk matters


# ------------------------------------------------------------------ EPS
@pytest.mark.parametrize('key,tau', [('eps_k4_tau4', 0.4), ('eps_k4_tau5', 0.5)])
def test_eps_loss_eps_repo(g, key, tau):
    cam = leaf(g[f'{key}_cam'])
    out = eps_loss(cam, g[f'{key}_sal'], g[f'{key}_label'], tau=tau, lam=0.5)
    for name in ('loss', 'fg', 'bg', 'pred'): close(getattr(out, name), g[f'{key}_{name}'])
    close(torch.autograd.grad(out.loss + (out.pred * g[f'{key}_wt']).sum(), cam)[0], g[f'{key}_grad'])


def test_eps_loss_hsc_copy(g):
    cam = leaf(g['eps_k20_cam'])
    out = eps_loss(cam, g['eps_k20_sal'], g['eps_k20_label'])
    close(out.loss, g['eps_k20_loss']); close(out.pred, g['eps_k20_pred'])
    close(torch.autograd.grad(out.loss, cam)[0], g['eps_k20_grad'])


# ------------------------------------------------------------------ the network heads with PCM (network/resnet38_eps_seam_hsc.py)
class Heads(nn.Module):
    "HSC's `Net.forward` rebuilt from usseg's pieces, with the weights the reference ran with (names as upstream)."
    def __init__(self, sd):
        super().__init__()
        self.p = nn.ParameterDict({k.replace('__', '_'): nn.Parameter(v.clone()) for k, v in sd.items()
                                   if 'running' not in k and 'num_batches' not in k})
        self.bn = {k: v for k, v in sd.items() if 'running' in k}
        for k in ('extra_F_1_weight', 'extra_F_1_bias'): self.p[k].requires_grad_(False)   # HSC freezes BN
    def forward(self, img):
        p = self.p
        d = MK.fake_trunk(img, {'w4': p['trunk_w4'], 'w5': p['trunk_w5'], 'w6': p['trunk_w6']})
        x = d['conv6']
        f_pix = F.relu(F.conv2d(x, p['proj_fc_weight']))
        r = F.conv2d(x, p['extra_F_0_weight'], p['extra_F_0_bias'], padding=1)
        r = F.batch_norm(r, self.bn['extra_F__1__running_mean'], self.bn['extra_F__1__running_var'],
                         p['extra_F_1_weight'], p['extra_F_1_bias'], False)
        f_roi = F.conv2d(F.relu(r), p['extra_F_3_weight'], p['extra_F_3_bias'])
        cam = F.conv2d(x, p['fc8_weight'])
        h, w = cam.shape[-2:]
        f8_3 = F.relu(F.conv2d(d['conv4'].detach(), p['f8_3_weight']))
        f8_4 = F.relu(F.conv2d(d['conv5'].detach(), p['f8_4_weight']))
        x_s = F.interpolate(img, (h, w), mode='bilinear', align_corners=True)
        f = F.conv2d(torch.cat([x_s, f8_3, f8_4], 1), p['f9_weight'])
        cam_rv = pcm(pcm_input(cam), f)
        return gap(cam), cam, gap(cam_rv), cam_rv, f_pix, f_roi


def _sd(g, prefix): return {k[len(prefix):]: v for k, v in g.items() if k.startswith(prefix)}


def test_heads_and_pcm(g):
    net = Heads(_sd(g, 'heads_sd_'))
    img = leaf(g['heads_img'])
    outs = net(img)
    names = ['pred', 'cam', 'pred_rv', 'cam_rv', 'f_pix', 'f_roi']
    for n, o in zip(names, outs): close(o, g[f'heads_out_{n}'])
    named = [(k, p) for k, p in net.p.items() if p.requires_grad]
    grads = torch.autograd.grad(sum((o * g[f'heads_w_{n}']).sum() for n, o in zip(names, outs)), [img] + [p for _, p in named])
    close(grads[0], g['heads_grad_img'])
    for (k, _), gr in zip(named, grads[1:]):
        ref = {kk.replace('__', '_'): v for kk, v in _sd(g, 'heads_grad_').items()}[k]
        close(gr, ref)


# ------------------------------------------------------------------ HSC's three terms
def _label(g): return g['terms_label']


def test_roi_contrast(g):
    f1, f2 = leaf(g['rsc_f1']), leaf(g['rsc_f2'])
    y1, y2 = g['terms_pl1'][:, :10, :10], g['terms_pl2'][:, :10, :10]
    loss, b1, b2 = roi_contrast(f1, f2, y1, y2, g['terms_bank_memobank_fb'], g['terms_bank_memobank1_fb'], bg_index=20)
    close(loss, g['rsc_loss'])
    g1, g2 = torch.autograd.grad(loss, [f1, f2])
    close(g1, g['rsc_grad_f1']); close(g2, g['rsc_grad_f2'])
    close(b1, g['rsc_bank_fb']); close(b2, g['rsc_bank1_fb'])


def test_roi_contrast_channel_norm_differs(g):
    args = (g['rsc_f1'], g['rsc_f2'], g['terms_pl1'][:, :10, :10], g['terms_pl2'][:, :10, :10],
            g['terms_bank_memobank_fb'], g['terms_bank_memobank1_fb'])
    fixed = roi_contrast(*args, bg_index=20, width_norm=False)[0]
    assert abs(fixed.item() - g['rsc_loss'].item()) > 1e-3


def test_class_contrast(g):
    f1, f2, c1, c2 = leaf(g['csc_f1']), leaf(g['csc_f2']), leaf(g['csc_cam1']), leaf(g['csc_cam2'])
    loss, b1, b2 = class_contrast(f1, c1, f2, c2, _label(g), g['terms_bank_memobank1'], g['terms_bank_memobank2'])
    close(loss, g['csc_loss'])
    for gi, ref in zip(torch.autograd.grad(loss, [f1, c1, f2, c2]), [g[f'csc_grad{i}'] for i in range(4)]): close(gi, ref)
    close(b1, g['csc_bank1']); close(b2, g['csc_bank2'])
    parallel = class_contrast(f1, c1, f2, c2, _label(g), g['terms_bank_memobank1'], g['terms_bank_memobank2'], sequential=False)
    assert abs(parallel[0].item() - loss.item()) > 1e-6       # the in-loop bank update changes the loss
    close(parallel[1], g['csc_bank1'])                         # ... but not the banks


def test_pixel_contrast(g):
    f1, f2 = leaf(g['psc_f1']), leaf(g['psc_f2'])
    y1, y2 = g['terms_pl1'][:, ::4, ::2], g['terms_pl2'][:, ::4, ::2]
    loss, b1, b2 = pixel_contrast(g['psc_cam1'], f1, g['psc_cam2'], f2, y1, y2,
                                  g['terms_bank_memobank1_p'], g['terms_bank_memobank2_p'])
    close(loss, g['psc_loss'])
    g1, g2 = torch.autograd.grad(loss, [f1, f2])
    close(g1, g['psc_grad_f1']); close(g2, g['psc_grad_f2'])
    close(b1, g['psc_bank1']); close(b2, g['psc_bank2'])


def test_topk_stable_breaks_ties_towards_low_index():
    x = torch.tensor([[0.1, 0.5, 0.1, 0.1, 0.5]], dtype=torch.float64)
    v, i = topk_stable(x, 3)
    assert i.tolist() == [[1, 4, 0]] and v.tolist() == [[0.5, 0.5, 0.1]]
    assert topk_stable(x, 2, largest=False)[1].tolist() == [[0, 2]]


# ------------------------------------------------------------------ the whole training step (module/train.py : train_hsc)
def _step_inputs(g):
    img = MK.step_image(g['step_u8'].numpy())
    sal = g['step_sal_u8'].double() / 255
    return img, sal, g['step_label'], HSCBanks(*(g[f'step_bank_{k}'] for k in
                                                  ('memobank_fb', 'memobank1_fb', 'memobank1', 'memobank2', 'memobank1_p', 'memobank2_p')))


def _replay(g):
    "A CRF that returns what the reference's pydensecrf returned, after checking it was handed the same inputs."
    calls = iter(range(int(g['step_crf_n'])))
    def crf(img_u8, labels, n_labels):
        assert n_labels == 21
        outs = []
        for im, lab in zip(img_u8, labels):
            i = next(calls)
            assert torch.equal(im, g[f'step_crf{i}_img']), f'CRF call {i}: a different image'
            assert torch.equal(lab.to(torch.uint8), g[f'step_crf{i}_in']), f'CRF call {i}: different pseudo-labels'
            outs.append(g[f'step_crf{i}_out'].long())
        return torch.stack(outs)
    return crf


def test_hsc_training_step(g):
    img, sal, label, banks = _step_inputs(g)
    net = Heads(_sd(g, 'step_sd_'))
    img2 = F.interpolate(img, size=(128, 128), mode='bilinear', align_corners=True)
    sal2 = F.interpolate(sal, size=(128, 128), mode='bilinear', align_corners=True)
    (_, cam1, _, rv1, fp1, fr1), (_, cam2, _, rv2, fp2, fr2) = net(img), net(img2)
    out = hsc_loss((cam1, rv1, fp1, fr1), (cam2, rv2, fp2, fr2), sal, sal2, img2, label, banks, crf=_replay(g))
    for k in ('loss', 'cls', 'sal', 'er', 'ecr', 'rsc', 'csc', 'psc'):
        close(out._asdict()[k], g[f'step_loss_{"loss" if k == "loss" else "loss_" + k}'])
    net.zero_grad(); out.loss.backward()
    ref = {k.replace('__', '_'): v for k, v in _sd(g, 'step_grad_').items()}
    assert set(ref) == {k for k, p in net.p.items() if p.requires_grad}
    for k, p in net.p.items():
        if p.requires_grad: close(p.grad, ref[k])
    for ours, k in zip(out.banks, ('memobank_fb', 'memobank1_fb', 'memobank1', 'memobank2', 'memobank1_p', 'memobank2_p')):
        close(ours, g[f'step_after_{k}'])


def test_hsc_contrast_runs_without_crf(g):
    img, sal, label, banks = _step_inputs(g)
    net = Heads(_sd(g, 'step_sd_'))
    img2 = F.interpolate(img, size=(128, 128), mode='bilinear', align_corners=True)
    (_, _, _, rv1, fp1, fr1), (_, _, _, rv2, fp2, fr2) = net(img), net(img2)
    h = hsc_contrast(rv1, rv2, fp1, fr1, fp2, fr2, img2, label, banks, crf=None)
    y = hsc_pseudo_labels(hsc_normalize(rv2), label)
    assert torch.equal(h.y2, y) and torch.isfinite(h.rsc + h.csc + h.psc)
    assert crf_image(img2, (16, 16)).dtype == torch.uint8


def test_init_banks():
    b = init_banks(4, roi_dim=8, pix_dim=6, generator=torch.Generator().manual_seed(0))
    assert [tuple(t.shape) for t in b] == [(2, 8), (2, 8), (5, 8), (5, 8), (5, 6), (5, 6)]
