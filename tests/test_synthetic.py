"""Properties of the synthetic scenes that every other test relies on."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from usseg.data.synthetic import SyntheticScenes, render_scene, class_styles, ignore_band


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), h=st.integers(16, 80), w=st.integers(16, 80), k=st.integers(2, 14))
def test_scene_contract(seed, h, w, k):
    im, lb = render_scene(seed, (h, w), k)
    assert im.shape == (h, w, 3) and im.dtype == np.uint8
    assert lb.shape == (h, w) and lb.dtype == np.int64
    assert lb.min() >= 0 and lb.max() < k
    im2, lb2 = render_scene(seed, (h, w), k)
    assert np.array_equal(im, im2) and np.array_equal(lb, lb2)


def test_every_class_appears_over_a_split():
    ds = SyntheticScenes('train', n_images=60, size=48, n_classes=8)
    seen = np.unique(np.concatenate([ds.scene(i)[1].ravel() for i in range(len(ds))]))
    assert list(seen) == list(range(8))


def test_splits_disjoint():
    a = SyntheticScenes('train', n_images=20, size=32)
    b = SyntheticScenes('val', n_images=20, size=32)
    for i in range(20): assert not np.array_equal(a.scene(i)[0], b.scene(i)[0])


def test_items_normalised_with_ignore():
    ds = SyntheticScenes('val', n_images=2, size=40, ignore_width=1)
    it = ds[0]
    assert it['img'].dtype.is_floating_point and it['img'].min() < 0  # ImageNet-normalised
    assert (it['label'] == -1).any() and it['label'].max() < ds.n_classes
    assert ds.ignore_index == -1 and len(ds.class_names) == ds.n_classes


def test_ignore_band_only_on_boundaries():
    lb = np.zeros((10, 10), np.int64); lb[:, 5:] = 1
    out = ignore_band(lb, 1)
    assert (out[:, 4:6] == -1).all() and (out[:, :4] == 0).all() and (out[:, 6:] == 1).all()
