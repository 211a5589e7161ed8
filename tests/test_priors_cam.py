"""CAM aggregation, background threshold, threshold curve and pseudo-label CRFs against the reference code.

The fixture was produced by `tests/fixtures/make_golden_hsc.py`, which runs HSC's `inference.py::infer_cam_mp`
('eps' network type) and `eval.py::do_python_eval`, and SEAM's `infer_SEAM.py` script, on recorded random CAM logits.
Values are float64 against float64 (`EXACT`); the aggregation is NumPy code without gradients upstream, so its
derivatives are compared with central differences of the reference function along four random directions
(`FD`: the differences' own error is below 1e-9 here).
"""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import usseg  # noqa: F401  (the compat shim first)
from usseg.core import normalize
from usseg.priors.cam import (aggregate_cams, cam_curve, cams_to_labels, crf_cams, crf_labels, image_labels, image_pyramid,
                              label_unary, scaled_size, to_wsss)

FIX = Path(__file__).parent/'fixtures'
EXACT = dict(rtol=1e-10, atol=1e-12)
FD = dict(rtol=1e-7, atol=1e-8)


@pytest.fixture(scope='module')
def g():
    p = FIX/'hsc_golden.npz'
    if not p.exists(): pytest.fail(f'{p} is missing: run tests/fixtures/make_golden_hsc.py')
    return {k: torch.from_numpy(v) for k, v in np.load(p).items()}


def _has_pydensecrf():
    try: import pydensecrf.densecrf  # noqa: F401
    except ImportError: return False
    return True


needs_crf = pytest.mark.skipif(not _has_pydensecrf(), reason='pydensecrf (pip install pydensecrf2) is not installed')


def _run(g, name, convention, background):
    n = int(g[f'{name}_n'])
    leaves = [g[f'{name}_logits_{i}'].double().requires_grad_() for i in range(n)]
    label = g[f'{name}_label'].double()[None]
    H, W = g[f'{name}_img'].shape[:2]
    cams = aggregate_cams(leaves, [bool(i % 2) for i in range(n)], label, (H, W), convention, background)[0]
    return cams, leaves, label


def _directional(g, name, cams, leaves, rows=slice(None)):
    grads = torch.autograd.grad((cams[rows] * g[f'{name}_fd_w'].double()[rows]).sum(), leaves)
    return torch.tensor([sum((gi * g[f'{name}_fd_dir{j}_{i}'].double()).sum() for i, gi in enumerate(grads))
                         for j in range(len(g[f'{name}_fd']))], dtype=torch.float64)


def test_eps_aggregation_and_threshold(g):
    cams, leaves, label = _run(g, 'eps', 'eps', 'last')
    torch.testing.assert_close(cams.detach(), g['eps_cams'].double(), **EXACT)
    torch.testing.assert_close(_directional(g, 'eps', cams, leaves), g['eps_fd'].double(), **FD)
    assert torch.equal(cams_to_labels(cams.detach()[None], label, thr=0.22)[0], g['eps_pred'].long())


def test_seam_aggregation_and_threshold(g):
    cams, leaves, label = _run(g, 'seam', 'seam', 'first')
    present = label[0].bool()
    torch.testing.assert_close(cams.detach()[present], g['seam_cams'].double()[present], **EXACT)
    assert (cams.detach()[~present] == -1).all()      # SEAM's min-max sends an all-zero (absent) class to -1
    torch.testing.assert_close(_directional(g, 'seam', cams, leaves, present), g['seam_fd'].double(), **FD)
    assert torch.equal(cams_to_labels(cams.detach()[None], None, thr=0.26)[0], g['seam_pred'].long())


def test_pyramid_sizes_and_resize(g):
    "Sizes as upstream (Python's round: halves to even); the bicubic resize is PIL's filter."
    img8 = g['eps_img'].numpy()
    H, W = img8.shape[:2]
    x = normalize(torch.from_numpy(img8).permute(2, 0, 1).double() / 255)[None]
    pyr = list(image_pyramid(x))
    for (s, xs), i in zip(pyr, range(0, 8, 2)):
        ref = g[f'eps_input_{i}'].double()                  # PIL's resize of the uint8 image, then normalised
        assert tuple(xs.shape[-2:]) == tuple(ref.shape[-2:]) == scaled_size(H, W, s)
        # PIL on uint8 rounds and clips between its two passes: about half a grey level on average
        assert (xs[0] - ref).abs().mean() < 1/255/0.224
        # PIL on float images (mode 'F', no rounding): the same filter to float32 precision
        pil = np.stack([np.asarray(Image.fromarray(img8[..., c].astype(np.float32), mode='F')
                                   .resize(xs.shape[-1:-3:-1], resample=Image.BICUBIC)) for c in range(3)])
        ours = torch.nn.functional.interpolate(torch.from_numpy(img8).permute(2, 0, 1)[None].double(), size=xs.shape[-2:],
                                               mode='bicubic', align_corners=False, antialias=True)[0]
        assert np.abs(ours.numpy() - pil).max() < 1e-3
    assert scaled_size(13, 18, 0.5) == (6, 9) and scaled_size(13, 18, 1.5) == (20, 27)   # 6.5 -> 6, 19.5 -> 20
    assert scaled_size(13, 18, 0.5, multiple=8) == (8, 8)


def test_curve_matches_hsc_eval(g):
    n = int(g['curve_n'])
    cams = [g[f'curve_cams_{i}'] for i in range(n)]
    gts = [g[f'curve_gt_{i}'] for i in range(n)]
    curve = cam_curve(cams, gts, [g[f'curve_label_{i}'] for i in range(n)])
    np.testing.assert_allclose(curve.thresholds, g['curve_t'].numpy(), rtol=0, atol=0)
    np.testing.assert_allclose(curve.miou, g['curve_miou'].numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(curve.iou[22], g['curve_iou_t22'].numpy(), rtol=1e-12, atol=1e-12)
    assert curve.best_miou == curve.miou.max() and curve.best_t == curve.thresholds[curve.miou.argmax()]
    # the curve equals thresholding image by image
    for j in (0, 22, 59):
        pred = [cams_to_labels(c[None].double(), None, thr=float(curve.thresholds[j]))[0] for c in cams]
        one = cam_curve([c for c in cams], gts, thresholds=[curve.thresholds[j]])
        tp = [sum(int(((p == k) & (t == k) & (t != 255)).sum()) for p, t in zip(pred, gts)) for k in range(21)]
        P = [sum(int(((p == k) & (t != 255)).sum()) for p, t in zip(pred, gts)) for k in range(21)]
        T = [sum(int(((t == k)).sum()) for t in gts) for k in range(21)]
        iou = [a / (b + c - a + 1e-10) for a, b, c in zip(tp, T, P)]
        np.testing.assert_allclose(one.miou[0], 100 * np.mean(iou), rtol=1e-12)


def test_curve_absent_skip_and_errors(g):
    gt = torch.tensor([[0, 1], [1, 255]])
    cams = torch.tensor([[[0.1, 0.9], [0.8, 0.5]], [[0.0, 0.0], [0.0, 0.0]]])
    zero, skip = cam_curve(cams[None], gt[None], thresholds=[0.3]), cam_curve(cams[None], gt[None], thresholds=[0.3], absent='skip')
    assert zero.miou[0] == pytest.approx(100 * 2 / 3) and skip.miou[0] == pytest.approx(100.0)
    with pytest.raises(ValueError, match='differ in size'): cam_curve(cams[None], gt[None, :1], thresholds=[0.3])
    with pytest.raises(ValueError, match='mask value 3'): cam_curve(cams[None], gt[None] * 0 + 3, thresholds=[0.3])


@needs_crf
def test_label_crf_matches_hsc(g):
    assert torch.equal(crf_labels(g['crf_img'], g['crf_labels'], 21), g['crf_out'].long())
    for i in range(int(g['step_crf_n'])):
        assert torch.equal(crf_labels(g[f'step_crf{i}_img'], g[f'step_crf{i}_in'], 21), g[f'step_crf{i}_out'].long())


@needs_crf
def test_cam_crf_matches_hsc(g):
    cams, _, label = _run(g, 'eps', 'eps', 'last')
    q = crf_cams(g['eps_img'].numpy(), cams.detach(), label[0], alpha=7)
    keys = g['eps_crf_keys'].long()
    torch.testing.assert_close(q[keys].double(), g["eps_crf"].double(), rtol=0, atol=0)   # the same float32 marginals
    assert (q[[k for k in range(21) if k not in keys.tolist()]] == 0).all()


@needs_crf
def test_cam_crf_matches_hsc_larger_image(g):
    "`_crf_with_alpha` itself on a 40 x 52 image, three classes, t = 8, alpha = 7 (HSC README)."
    cams, label = g['crfa_cams'], (g['crfa_cams'].flatten(1).amax(1) > 0).float()
    q = crf_cams(g['crfa_img'].numpy(), cams, label, alpha=7)
    torch.testing.assert_close(q[g["crfa_keys"].long()].double(), g["crfa_out"].double(), rtol=0, atol=0)


def test_threshold_ties_go_to_the_background():
    cams = torch.tensor([[[[0.3, 0.5]], [[0.2, 0.5]]]])
    assert cams_to_labels(cams, thr=0.3).tolist() == [[[0, 1]]]            # 0.3 = t: background; 0.5 = 0.5: class 0
    assert cams_to_labels(cams, torch.tensor([[0., 1.]]), thr=0.1).tolist() == [[[2, 2]]]


@needs_crf
def test_torch_backends_agree_with_pydensecrf(g):
    "The PyTorch mean-field (exact kernels) against pydensecrf's lattice approximation: most labels agree."
    t = crf_labels(g['crf_img'], g['crf_labels'], 21, backend='torch')
    assert (t == g['crf_out'].long()).float().mean() > 0.97
    cams, _, label = _run(g, 'eps', 'eps', 'last')
    a = crf_cams(g['eps_img'].numpy(), cams.detach(), label[0], backend='torch')
    b = crf_cams(g['eps_img'].numpy(), cams.detach(), label[0])
    assert (a.argmax(0) == b.argmax(0)).float().mean() > 0.97
    cams, label = g['crfa_cams'], (g['crfa_cams'].flatten(1).amax(1) > 0).float()
    a = crf_cams(g['crfa_img'].numpy(), cams, label, alpha=7, backend='torch')
    assert (a.argmax(0) == g['crfa_keys'].long()[g['crfa_out'].argmax(0)]).float().mean() > 0.95


def test_label_unary():
    U = label_unary(np.array([[0, 2]]), 3, 0.7)
    np.testing.assert_allclose(np.exp(-U).sum(0), 1, rtol=1e-6)
    np.testing.assert_allclose(np.exp(-U[:, 1]), [0.15, 0.15, 0.7], rtol=1e-6)
    with pytest.raises(ValueError, match='labels must lie in'): label_unary(np.array([[3]]), 3)


def test_image_labels_and_wsss():
    lab = torch.tensor([[[0, 0, -1], [2, 2, -1]], [[-1, -1, -1], [1, 1, 1]]])
    assert image_labels(lab, 3).tolist() == [[1, 0, 1], [0, 1, 0]]
    assert image_labels(lab[0], 3).tolist() == [1, 0, 1]
    assert image_labels(lab, 3, min_pixels=3).tolist() == [[0, 0, 0], [0, 1, 0]]
    with pytest.raises(ValueError, match='n_classes=2'): image_labels(lab, 2)
    w = to_wsss(lab, classes=[2, 1])
    assert w.tolist() == [[[0, 0, -1], [1, 1, -1]], [[-1, -1, -1], [2, 2, 2]]]
    assert image_labels(w - 1, 2).tolist() == [[1, 0], [0, 1]]     # foreground presence, background left out
