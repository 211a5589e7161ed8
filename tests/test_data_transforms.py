"""usseg.data.transforms: image and maps stay aligned under every geometric transform; nearest = PIL; torchvision parity."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image

import usseg  # noqa: F401  (torchvision imports after usseg)
from torchvision.transforms.v2 import functional as TF

from usseg.data.transforms import (CenterCrop, ColorJitter, Compose, EvalTransform, GaussianBlur, MultiView, RandomCrop,
                                   RandomGrayscale, RandomHorizontalFlip, RandomResizedCrop, RandomScaleLongSide, ResizeShort,
                                   center_crop_box, crop, eagle_blur, hp_photometric, hsc_view, maskcontrast_view, resize,
                                   rrc_box, short_side_size, stego_geometric)


def coded(H, W, seed=0):
    "A sample whose red channel encodes the label (label/16) and whose saliency is label parity."
    g = torch.Generator().manual_seed(seed)
    lb = torch.randint(0, 16, (H, W), generator=g)
    return {'img': torch.stack([lb/16, torch.rand(H, W, generator=g), torch.rand(H, W, generator=g)]), 'label': lb,
            'saliency': (lb % 2).float(), 'index': seed}


def aligned(s):
    ok = s['label'] >= 0
    red = (s['img'][0]*16).round().long()
    pad = ~ok
    return (bool((red[ok] == s['label'][ok]).all()) and bool((s['saliency'][ok] == (s['label'][ok] % 2).float()).all())
            and bool((s['saliency'][pad] == 0).all()))


GEOMETRIC = [RandomHorizontalFlip(0.5), RandomResizedCrop(17, (0.1, 1.0), image_interp='nearest'),
             RandomResizedCrop((9, 30), (0.5, 1.0), (0.5, 2.0), image_interp='nearest'), RandomCrop(40), RandomCrop((5, 70)),
             RandomScaleLongSide(10, 90, 'nearest'), EvalTransform(23, 'nearest'), ResizeShort(31, 'nearest'), CenterCrop((50, 7))]


@settings(max_examples=40, deadline=None)
@given(H=st.integers(4, 60), W=st.integers(4, 60), seed=st.integers(0, 10**6), t=st.sampled_from(GEOMETRIC))
def test_geometric_alignment(H, W, seed, t):
    out = t(coded(H, W, seed), torch.Generator().manual_seed(seed))
    assert out['img'].shape[-2:] == out['label'].shape == out['saliency'].shape
    assert aligned(out) and out['index'] == seed


@settings(max_examples=30, deadline=None)
@given(H=st.integers(2, 50), W=st.integers(2, 50), h=st.integers(1, 80), w=st.integers(1, 80))
def test_nearest_matches_pil(H, W, h, w):
    lb = np.random.default_rng(H*W).integers(0, 255, (H, W)).astype(np.uint8)
    ours = resize({'img': torch.zeros(3, H, W), 'label': torch.from_numpy(lb.astype(np.int64))}, (h, w))['label']
    np.testing.assert_array_equal(ours.numpy(), np.asarray(Image.fromarray(lb).resize((w, h), Image.NEAREST)))


def test_stego_nearest_eval_matches_pil_pipeline():
    "EvalTransform(..., 'nearest') = PIL nearest resize of the short side + torchvision centre crop (STEGO's get_transform)."
    rng = np.random.default_rng(0)
    im = rng.integers(0, 256, (45, 77, 3), dtype=np.uint8)
    x = torch.from_numpy(im).permute(2, 0, 1).float()/255
    out = EvalTransform(32, 'nearest')({'img': x})['img']
    h, w = short_side_size((45, 77), 32)
    ref = TF.center_crop(TF.pil_to_tensor(Image.fromarray(im).resize((w, h), Image.NEAREST)), [32, 32])
    np.testing.assert_array_equal((out*255).round().byte().numpy(), ref.numpy())


@pytest.mark.parametrize('hw,size', [((360, 480), 320), ((37, 51), 20), ((51, 37), 36), ((10, 10), 4)])
def test_center_crop_matches_torchvision(hw, size):
    x = torch.arange(hw[0]*hw[1]).view(1, *hw)
    t, l, h, w = center_crop_box(hw, (size, size))
    assert torch.equal(x[:, t:t + h, l:l + w], TF.center_crop(x, [size, size]))


def test_bilinear_close_to_pil():
    im = np.random.default_rng(1).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    ours = resize({'img': torch.from_numpy(im).permute(2, 0, 1).float()/255}, (25, 40))['img']
    ref = np.asarray(Image.fromarray(im).resize((40, 25), Image.BILINEAR)).astype(np.float32)
    assert np.abs(ours.permute(1, 2, 0).numpy()*255 - ref).mean() < 2


def test_padding_fill_values():
    s = crop(coded(5, 5), -2, -3, 9, 11)
    assert (s['label'][:2] == -1).all() and (s['saliency'][:2] == 0).all()
    assert torch.allclose(s['img'][:, 0, 0], torch.tensor([0.485, 0.456, 0.406]))
    assert torch.equal(s['label'][2:7, 3:8], coded(5, 5)['label'])


def test_rrc_box_inside():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        t, l, h, w = rrc_box((30, 70), (0.05, 1.0), (0.3, 3.0), g)
        assert 0 <= t and 0 <= l and t + h <= 30 and l + w <= 70 and h > 0 and w > 0


def test_photometric_only_touches_image():
    s = coded(20, 30)
    for t in [hp_photometric(), eagle_blur(), ColorJitter(0.4, 0.4, 0.4, 0.1), RandomGrayscale(1.0), GaussianBlur(5, p=1.0)]:
        out = t(s, torch.Generator().manual_seed(3))
        assert torch.equal(out['label'], s['label']) and torch.equal(out['saliency'], s['saliency'])
        assert out['img'].shape == s['img'].shape and out['img'].min() >= 0 and out['img'].max() <= 1


def test_jitter_matches_torchvision_ops():
    "Our jitter with one factor is torchvision's functional op with that factor."
    s = coded(12, 12)
    b = ColorJitter(brightness=0.3)(s, torch.Generator().manual_seed(0))['img']
    f = 0.7 + 0.6*torch.rand((), generator=torch.Generator().manual_seed(0)).item()
    assert torch.allclose(b, TF.adjust_brightness(s['img'], f).clamp(0, 1))


def test_reproducible_with_generator():
    for t in [maskcontrast_view(24), hsc_view(32, (20, 50)), stego_geometric(16), hp_photometric()]:
        a = t(coded(40, 30), torch.Generator().manual_seed(7))
        b = t(coded(40, 30), torch.Generator().manual_seed(7))
        assert all(torch.equal(a[k], b[k]) for k in ('img', 'label', 'saliency'))


def test_presets_shapes_and_labels():
    s = coded(40, 60)
    g = torch.Generator().manual_seed(0)
    for t, hw in [(maskcontrast_view(24), (24, 24)), (hsc_view(32, (20, 50)), (32, 32)), (stego_geometric(16), (16, 16))]:
        for _ in range(5):
            o = t(s, g)
            assert tuple(o['label'].shape) == hw and set(o['label'].unique().tolist()) <= set(range(16)) | {-1}


def test_multiview_keys():
    out = MultiView(EvalTransform(16), aug=hp_photometric(), k=maskcontrast_view(8))(coded(20, 20))
    assert {'img', 'img_aug', 'img_k', 'label_aug', 'label_k', 'saliency_k'} <= set(out)
    assert out['img_k'].shape == (3, 8, 8) and torch.equal(out['label_aug'], out['label'])


def test_bad_interp():
    with pytest.raises(ValueError, match='image_interp'):
        resize(coded(4, 4), (2, 2), 'lanczos')
