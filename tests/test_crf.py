"""usseg.crf against STEGO's dense_crf (stored fixture), pydensecrf, the exact CRF, and on a noisy segmentation."""
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import usseg  # noqa: F401
from usseg.crf import CRFParams, CRFPool, PermutohedralLattice, crf_torch, dense_crf, dense_crf_batch
from usseg.data.synthetic import SyntheticScenes

FIXTURES = Path(__file__).parent/'fixtures'


@pytest.fixture(scope='module')
def noisy():
    "Six 40x40 scenes with 6 classes and logits = 2 one-hot(truth) + N(0, 1.5^2)."
    ds = SyntheticScenes('val', n_images=6, size=40, n_classes=6, seed=1)
    imgs = torch.stack([ds[i]['img'] for i in range(6)]); labels = torch.stack([ds[i]['label'] for i in range(6)])
    g = torch.Generator().manual_seed(0)
    logits = 2*F.one_hot(labels, 6).permute(0, 3, 1, 2).float() + 1.5*torch.randn(6, 6, 40, 40, generator=g)
    return imgs, labels, logits, dense_crf_batch(imgs, logits)


def test_matches_upstream_dense_crf():
    "Same image conversion (un-normalise, truncate to uint8, BGR), upsampling, unary and constants as STEGO."
    # float32 throughout: the softmax of the upsampled logits differs by 1-2 ulps between CPU kernels (AVX-512,
    # AVX2, default) and ten mean-field iterations amplify that to 1.7e-5 (measured with ATEN_CPU_CAPABILITY=default;
    # 0 on AVX-512 and AVX2). A wrong constant moves the marginals far more: bi_compat 4.01 or gauss_compat 3.01 by
    # 2e-2, nine iterations instead of ten by 0.3, RGB instead of BGR by 0.97.
    f = np.load(FIXTURES/'crf_upstream.npz')
    for i in range(3):
        q = dense_crf(torch.from_numpy(f[f'{i}_img']), torch.from_numpy(f[f'{i}_logits']))
        np.testing.assert_allclose(q.numpy(), f[f'{i}_q'], atol=1e-4)


def test_torch_lattice_agrees_with_pydensecrf(noisy):
    imgs, labels, logits, ref = noisy
    q = crf_torch(imgs, logits)
    d = (q - ref).abs()
    assert d.mean() < 1e-5 and d.max() < 1e-2
    assert (q.argmax(1) == ref.argmax(1)).float().mean() > 0.999


def test_exact_is_close_to_pydensecrf_and_ignores_channel_order(noisy):
    imgs, labels, logits, ref = noisy
    ex = crf_torch(imgs, logits, kernel='exact')
    assert (ex - ref).abs().mean() < 0.03
    assert (ex.argmax(1) == ref.argmax(1)).float().mean() > 0.95
    ex_rgb = crf_torch(imgs, logits, CRFParams(bgr=False), kernel='exact')
    assert (ex_rgb - ex).abs().max() < 1e-5


def test_crf_improves_a_noisy_segmentation(noisy):
    imgs, labels, logits, ref = noisy
    acc = lambda q: (q.argmax(1) == labels).float().mean().item()
    before = acc(logits)
    assert 0.4 < before < 0.7
    for q in (ref, crf_torch(imgs, logits), crf_torch(imgs, logits, kernel='exact')):
        assert acc(q) > before + 0.2


def test_no_iterations_is_the_softmax(noisy):
    imgs, labels, logits, ref = noisy
    p = CRFParams(n_iter=0)
    sm = F.softmax(logits, 1).clamp_min(1e-5); sm = sm/sm.sum(1, keepdim=True)
    assert (crf_torch(imgs[:2], logits[:2], p) - sm[:2]).abs().max() < 1e-5
    assert (dense_crf_batch(imgs[:2], logits[:2], p) - sm[:2]).abs().max() < 1e-5


def test_batched_equals_one_by_one(noisy):
    imgs, labels, logits, ref = noisy
    whole = crf_torch(imgs[:3], logits[:3])
    shared = crf_torch(imgs[:3], logits[:3], shared_lattice=True)      # the GPU code path, run on the CPU
    for i in range(3):
        one = crf_torch(imgs[i:i+1], logits[i:i+1])
        assert (one - whole[i:i+1]).abs().max() < 1e-4 and (one - shared[i:i+1]).abs().max() < 1e-4


def test_grouped_lattice_keeps_groups_apart():
    g = torch.Generator().manual_seed(0)
    f, x = 10*torch.rand(2, 300, 5, generator=g), torch.rand(2, 300, 3, generator=g)
    L = PermutohedralLattice(f.reshape(600, 5), torch.arange(2).repeat_interleave(300))
    sep = torch.cat([PermutohedralLattice(fi)(xi) for fi, xi in zip(f, x)])
    assert torch.allclose(L(x.reshape(600, 3)), sep, atol=1e-5)


def test_lattice_is_a_gaussian_filter():
    "On a 2-D grid the lattice response to a delta is close to the exact Gaussian bump."
    y, x = torch.meshgrid(torch.arange(31.), torch.arange(31.), indexing='ij')
    f = torch.stack([x, y], -1).reshape(-1, 2)/4                    # std 4 pixels
    L = PermutohedralLattice(f)
    delta = torch.zeros(31*31, 1); delta[15*31 + 15] = 1
    r = L(delta).reshape(31, 31)
    exact = torch.exp(-0.5*((x - 15)**2 + (y - 15)**2)/16)
    r, exact = r/r.sum(), exact/exact.sum()
    assert (r - exact).abs().sum() < 0.25                             # total variation between the two bumps
    com = [(r*x).sum().item(), (r*y).sum().item()]
    assert abs(com[0] - 15) < 0.5 and abs(com[1] - 15) < 0.5            # centred on the delta


def test_pool_survives_a_hang_and_reports_it(noisy):
    imgs, labels, logits, ref = noisy
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        with CRFPool(2, timeout=1e-3) as pool:
            q = pool(imgs[:3], logits[:3])
            assert pool.broken and 'no result after' in pool.broken
            q2 = pool(imgs[3:], logits[3:])                               # later calls go serial without waiting
    assert any('serially' in str(x.message) for x in w)
    assert (torch.cat([q, q2]) - ref).abs().max() < 1e-6


def test_errors():
    imgs = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="use kernel='lattice'"): crf_torch(torch.zeros(1, 3, 200, 200), torch.zeros(1, 2, 4, 4), kernel='exact')
    with pytest.raises(ValueError, match='unknown kernel'): crf_torch(imgs, torch.zeros(1, 2, 4, 4), kernel='fast')
    with pytest.raises(ValueError, match=r'\(B=1, K, h, w\)'): crf_torch(imgs, torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match='bi_srgb must be positive'): CRFParams(bi_srgb=0)
