"""Features: STEGO's correlation helpers (golden fixture), the on-disk cache (hit, mismatch, interrupted writes), pictures."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.utils.data import Dataset

import usseg
from usseg.backbones import load_backbone
from usseg.data.synthetic import SyntheticScenes
from usseg.features import (FeatureCache, attention_maps, dataset_identity, extract_features, feature_correlation, norm,
                            pca_rgb, sample, tensor_correlation)

FIX = Path(__file__).parent/'fixtures'/'stego_backbone.pt'


class Counting(Dataset):
    "Counts reads; raises `exc` once when item `fail_at` is read."
    def __init__(self, ds, fail_at=None, exc=RuntimeError):
        self.ds, self.fail_at, self.exc, self.seen = ds, fail_at, exc, []
        self.split = getattr(ds, 'split', None)  # same identity as the wrapped dataset
    def __len__(self): return len(self.ds)
    def __getitem__(self, i):
        if i == self.fail_at:
            self.fail_at = None
            raise self.exc('interrupted')
        self.seen.append(i)
        return self.ds[i]
    def __repr__(self): return repr(self.ds)


@pytest.fixture(scope='module')
def tiny(): return load_backbone('vit_tiny8', weights='random', seed=0)


@pytest.fixture(scope='module')
def ds(): return SyntheticScenes('val', n_images=10, size=32)


@pytest.fixture(scope='module')
def direct(tiny, ds): return extract_features(tiny, ds, batch_size=4, dtype=torch.float32)


def _files(d): return sorted(p.name for p in Path(d).rglob('*') if p.is_file())


# ---------------------------------------------------------------- helpers

def test_stego_helpers_golden():
    hp = torch.load(FIX, weights_only=True)['helpers']
    torch.testing.assert_close(norm(hp['a']), hp['norm_a'])
    torch.testing.assert_close(tensor_correlation(norm(hp['a']), norm(hp['b'])), hp['corr'])
    torch.testing.assert_close(feature_correlation(hp['a'], hp['b']), hp['corr'])
    out = sample(hp['a'], hp['coords'])
    assert out.shape == (2, 5, 3, 4)   # coords (N, S1=4, S2=3, 2) -> (N, C, S2, S1)
    torch.testing.assert_close(out, hp['sample'])


@settings(max_examples=30, deadline=None)
@given(H=st.integers(2, 7), W=st.integers(2, 7), S1=st.integers(1, 5), S2=st.integers(1, 5), seed=st.integers(0, 10**6))
def test_sample_at_cell_centres_is_exact_and_transposed(H, W, S1, S2, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(2, 3, H, W, generator=g)
    r, c = torch.randint(0, H, (2, S1, S2), generator=g), torch.randint(0, W, (2, S1, S2), generator=g)
    coords = torch.stack([c/(W - 1)*2 - 1, r/(H - 1)*2 - 1], -1)        # (x, y) of cell centres, align_corners=True
    out = sample(t, coords)
    assert out.shape == (2, 3, S2, S1)
    for n in range(2):
        want = t[n][:, r[n], c[n]]                                       # (C, S1, S2)
        torch.testing.assert_close(out[n], want.transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_pca_rgb():
    x = torch.randn(3, 32, 5, 7)
    y = pca_rgb(x)
    assert y.shape == (3, 3, 5, 7) and y.min() >= 0 and y.max() <= 1
    assert torch.equal(pca_rgb(x), y)                                    # eigenvector signs are fixed
    with pytest.raises(ValueError, match='at least 3 channels'): pca_rgb(torch.randn(1, 2, 3, 3))


def test_attention_maps(tiny):
    A = tiny.last_attention(torch.randn(2, 3, 16, 24))
    m = attention_maps(A, (2, 3))
    assert m.shape == (2, 3, 2, 3)
    torch.testing.assert_close(m[1, 2, 1, 0], A[1, 2, 0, 1 + 3])


# ---------------------------------------------------------------- extraction

def test_extract_shapes_and_values(tiny, ds, direct):
    assert direct.shape == (10, 48, 4, 4) and direct.dtype == torch.float32
    x = torch.stack([ds[i]['img'] for i in range(3)])
    torch.testing.assert_close(direct[:3], tiny(x))
    assert extract_features(tiny, ds, pool=True).shape == (10, 48)
    assert extract_features(tiny, ds, kind='values', n=2).shape == (10, 96, 4, 4)
    assert extract_features(tiny, [(ds[i]['img'], 0) for i in range(3)], dtype=torch.float32).shape == (3, 48, 4, 4)


def test_identity_names():
    ds = SyntheticScenes('val', n_images=3, size=16)
    assert dataset_identity(ds)['dataset'] == repr(ds) and dataset_identity(ds)['split'] == 'val'
    items = [ds[i]['img'] for i in range(3)]
    assert dataset_identity(items)['dataset'] == 'list'  # not the repr of the tensors
    assert dataset_identity(items, name='mine', split='train')['dataset'] == 'mine'
    with pytest.raises(ValueError, match='empty'): dataset_identity([])


# ---------------------------------------------------------------- cache

def test_cache_hit_reads_nothing_but_the_identity(tiny, ds, direct, tmp_path):
    c = Counting(ds)
    a = extract_features(tiny, c, batch_size=4, cache=tmp_path)
    assert a.dtype == torch.float16 and torch.equal(a, direct.half())
    assert _files(tmp_path) == ['feats.npy', 'meta.json']
    c.seen.clear()
    b = extract_features(tiny, c, batch_size=4, cache=tmp_path)
    assert torch.equal(a, b) and c.seen == [0, 9]                         # first and last image: the identity hash
    meta = json.loads(next(tmp_path.rglob('meta.json')).read_text())
    assert meta['key']['backbone'] == 'vit_tiny8' and meta['key']['resolution'] == [32, 32]
    assert meta['key']['weights_sha256'] == tiny.fingerprint() and meta['shape'] == [10, 48, 4, 4]


def test_same_weights_from_a_file_hit_the_cache(tiny, ds, tmp_path):
    extract_features(tiny, ds, cache=tmp_path/'c')
    torch.save(tiny.model.state_dict(), tmp_path/'w.pth')
    same = load_backbone('vit_tiny8', weights=tmp_path/'w.pth')
    c = Counting(ds)
    extract_features(same, c, cache=tmp_path/'c')
    assert c.seen == [0, 9]


@pytest.mark.parametrize('change', ['weights', 'resolution', 'dataset', 'split', 'pool', 'pos_interp', 'autocast'])
def test_cache_key_changes_give_new_entries(tiny, ds, tmp_path, change):
    extract_features(tiny, ds, cache=tmp_path)
    bb, d, kw = tiny, ds, {}
    if change == 'weights': bb = load_backbone('vit_tiny8', weights='random', seed=1)
    if change == 'pos_interp': bb = load_backbone('vit_tiny8', weights='random', pos_interp='timm')
    if change == 'resolution': d = SyntheticScenes('val', n_images=10, size=48)
    if change == 'dataset': d = SyntheticScenes('val', n_images=10, size=32, seed=5)
    if change == 'split': kw = dict(split='train')
    if change == 'pool': kw = dict(pool=True)
    if change == 'autocast': kw = dict(autocast=True)
    c = Counting(d)
    extract_features(bb, c, cache=tmp_path, **kw)
    assert sorted(set(c.seen)) == list(range(10))   # computed again
    assert len(list(tmp_path.rglob('meta.json'))) == 2


def _entry(tmp_path): return next(tmp_path.rglob('meta.json')).parent


@pytest.mark.parametrize('damage', ['meta_key', 'meta_garbage', 'truncated', 'wrong_shape', 'no_meta'])
def test_damaged_cache_is_rebuilt(tiny, ds, direct, tmp_path, damage):
    extract_features(tiny, ds, cache=tmp_path)
    e = _entry(tmp_path)
    if damage == 'meta_key':
        m = json.loads((e/'meta.json').read_text()); m['key']['weights_sha256'] = '0'*16; (e/'meta.json').write_text(json.dumps(m))
    if damage == 'meta_garbage': (e/'meta.json').write_text('{not json')
    if damage == 'truncated':
        with open(e/'feats.npy', 'r+b') as f: f.truncate(500)
    if damage == 'wrong_shape': np.save(e/'feats.npy', np.zeros((10, 48, 4, 3), np.float16))
    if damage == 'no_meta': (e/'meta.json').unlink()
    c = Counting(ds)
    out = extract_features(tiny, c, cache=tmp_path)
    assert sorted(set(c.seen)) == list(range(10))
    assert torch.equal(out, direct.half()) and _files(tmp_path) == ['feats.npy', 'meta.json']


@pytest.mark.parametrize('exc', [RuntimeError, KeyboardInterrupt])
def test_interrupted_build_leaves_no_cache_and_resumes(tiny, ds, direct, tmp_path, exc):
    c = Counting(ds, fail_at=7, exc=exc)
    with pytest.raises(exc): extract_features(tiny, c, batch_size=2, cache=tmp_path, chunk_size=2)
    e = next(tmp_path.rglob('progress.json')).parent
    assert _files(tmp_path) == ['feats.npy.partial', 'progress.json']     # no feats.npy, no meta.json
    key = json.loads((e/'progress.json').read_text())['key']
    assert FeatureCache(tmp_path, key).load() is None and FeatureCache(tmp_path, key).status() == 'partial'
    assert json.loads((e/'progress.json').read_text())['done'] == 6
    c.seen.clear()
    out = extract_features(tiny, c, batch_size=2, cache=tmp_path, chunk_size=2)
    assert sorted(set(c.seen)) == [0, 6, 7, 8, 9]
    assert torch.equal(out, direct.half()) and _files(tmp_path) == ['feats.npy', 'meta.json']
    assert json.loads((e/'meta.json').read_text())['resumed_from'] == 6


def test_partial_of_another_key_is_not_resumed(tiny, ds, direct, tmp_path):
    c = Counting(ds, fail_at=5)
    with pytest.raises(RuntimeError): extract_features(tiny, c, batch_size=2, cache=tmp_path, chunk_size=2)
    e = next(tmp_path.rglob('progress.json')).parent
    p = json.loads((e/'progress.json').read_text()); p['key']['content'] = 'elsewhere'
    (e/'progress.json').write_text(json.dumps(p))
    c.seen.clear()
    out = extract_features(tiny, c, batch_size=2, cache=tmp_path, chunk_size=2)
    assert sorted(set(c.seen)) == list(range(10)) and torch.equal(out, direct.half())


def test_images_of_different_sizes_are_refused(tiny):
    with pytest.raises(ValueError, match='differ in size'):
        extract_features(tiny, [torch.zeros(3, 16, 16), torch.zeros(3, 16, 24)], batch_size=2)


def test_partial_file_that_disagrees_with_its_record_is_restarted(tiny, ds, direct, tmp_path):
    c = Counting(ds, fail_at=5)
    with pytest.raises(RuntimeError): extract_features(tiny, c, batch_size=2, cache=tmp_path, chunk_size=2)
    e = next(tmp_path.rglob('progress.json')).parent
    np.lib.format.open_memmap(e/'feats.npy.partial', mode='w+', dtype=np.float16, shape=(3, 48, 4, 4)).flush()
    c.seen.clear()
    out = extract_features(tiny, c, batch_size=2, cache=tmp_path, chunk_size=2)
    assert sorted(set(c.seen)) == list(range(10)) and torch.equal(out, direct.half())
