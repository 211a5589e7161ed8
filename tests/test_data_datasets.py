"""usseg.data: every loader on a tiny fake tree in its upstream layout, the label rules, the real CamVid copy, bad input."""
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from usseg.data import (COCO_FINE_TO_COARSE, DATASETS, CocoStuff27, Cityscapes27, CorruptFileError, Potsdam3, VOC2012,
                        apply_lut, get_dataset, shared_data)
from usseg.data.synthetic import SyntheticScenes

from helpers import make_fake_tree

FIXTURES = Path(__file__).parent/'fixtures'


def _png(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, np.uint8), mode).save(path)


@pytest.fixture
def tree(tmp_path):
    def make(name, **kw): return make_fake_tree(name, tmp_path/name, **kw)
    return make


# --- label rules, checked against STEGO's own loaders (fixture written by tests/fixtures/make_stego_label_fixtures.py)

@pytest.mark.parametrize('key,cls', [('coco', CocoStuff27), ('potsdam', Potsdam3), ('cityscapes', Cityscapes27)])
def test_label_rules_match_stego(key, cls):
    z = np.load(FIXTURES/'stego_label_maps.npz')
    ours = apply_lut(z[f'{key}_raw'][None], cls.lut, 'fixture', cls.name)[0]
    np.testing.assert_array_equal(ours, z[f'{key}_label'])


def test_coco_mapping_table():
    assert sorted(COCO_FINE_TO_COARSE) == list(range(182))
    counts = np.bincount(list(COCO_FINE_TO_COARSE.values()), minlength=27)
    assert counts[:12].sum() == 91 and counts[12:].sum() == 91 and (counts > 0).all()


# --- each upstream layout: counts, mapping on known values, ignore handling

def test_cocostuff27(tree):
    root = tree('cocostuff27', n=4)
    ds = get_dataset('cocostuff27', root, 'val')
    assert len(ds) == 4 and len(get_dataset('cocostuff27', root, 'train')) == 4 and ds.n_classes == 27
    _png(Path(ds.label_files[0]), np.array([[0, 91, 181, 255], [9, 105, 119, 50]] * 12).repeat(8, 1))
    lab = ds[0]['label']
    assert lab[0, :32:8].tolist() == [9, 17, 24, -1] and lab[1, :32:8].tolist() == [8, 23, 26, 5]
    assert ds[0]['img'].shape == (3, 24, 32)


def test_cityscapes27(tree):
    root = tree('cityscapes27', n=4)
    ds = get_dataset('cityscapes27', root, 'val')
    assert len(ds) == 4 and ds.n_classes == 27
    assert [Path(p).parent.name for p in ds.img_files] == ['aachen', 'aachen', 'bremen', 'bremen']   # sorted by city
    _png(Path(ds.label_files[0]), np.tile(np.array([0, 6, 7, 24, 33, 255] + [7]*26, np.uint8), (24, 1)))
    assert ds[0]['label'][0, :6].tolist() == [-1, -1, 0, 17, 26, -1]


def test_potsdam3(tree):
    root = tree('potsdam3', n=3)
    ds = get_dataset('potsdam3', root, 'val')
    assert len(ds) == 3 and len(get_dataset('potsdam3', root, 'train')) == 3 and ds.n_classes == 3
    savemat(ds.label_files[1], {'gt': np.tile(np.array([0, 4, 1, 5, 2, 3, 255] + [0]*25, np.uint8), (24, 1))})
    assert ds[1]['label'][0, :7].tolist() == [0, 0, 1, 1, 2, 2, -1]
    savemat(ds.img_files[1], {'img': np.full((24, 32, 4), 0.5)})      # a float image is read as [0, 1]
    assert np.all(ds.load(1)[0] == 128)
    un = get_dataset('potsdam3', root, 'unlabelled_train')
    assert len(un) == 3 and (un[0]['label'] == -1).all()


def test_voc2012_splits_saliency_class_labels(tree):
    root = tree('voc2012', n=3)
    assert [len(get_dataset('voc2012', root, s)) for s in ('train', 'val', 'trainval')] == [3, 3, 6]
    aug = get_dataset('voc2012', root, 'trainaug')
    assert len(aug) == 6 and not any(i.startswith('2007_va') for i in aug.ids)   # SegmentationClassAug minus val
    ds = get_dataset('voc2012', root, 'val', saliency='supervised_model')
    lab = np.array([[0, 15, 255, 20]] * 24).repeat(8, 1).astype(np.uint8)
    im = Image.fromarray(lab); im.putpalette([0, 0, 0] * 256); im.save(ds.label_files[0])   # palette PNG, as VOC stores it
    it = ds[0]
    assert it['label'][0, ::8].tolist() == [0, 15, -1, 20]
    assert torch.nonzero(it['class_labels'])[:, 0].tolist() == [14, 19]            # person, tvmonitor
    assert it['saliency'].shape == (24, 32) and set(it['saliency'].unique().tolist()) <= {0.0, 1.0}
    os.remove(ds.sal_files[1])
    with pytest.warns(UserWarning, match='dropped 1 of 3'):
        assert len(get_dataset('voc2012', root, 'val', saliency='supervised_model')) == 2
    with pytest.raises(FileNotFoundError, match='no saliency map'):
        get_dataset('voc2012', root, 'val', saliency='supervised_model', saliency_missing='raise')
    (root/'VOCdevkit'/'VOC2012'/'ImageSets'/'Segmentation'/'trainaug.txt').write_text('2007_tr0000\n')
    assert len(get_dataset('voc2012', root, 'trainaug')) == 1                       # an explicit list wins


def test_camvid_fake(tree):
    root = tree('camvid', n=2)
    ds = get_dataset('camvid', root, 'test')
    _png(Path(ds.label_files[0]), np.array([[0, 10, 11, 5]] * 24).repeat(8, 1))
    assert ds[0]['label'][0, ::8].tolist() == [0, 10, -1, 5] and ds.ignore_index == -1


def test_folder_layouts(tmp_path, tree):
    root = tree('folder', n=3)
    ds = get_dataset('folder', root, 'train')
    assert len(ds) == 3 and ds.n_classes == 4 and ds.has_labels
    # flat folder of images, no masks: labels all ignored
    flat = tmp_path/'flat'
    for i in range(2): _png(flat/f'p{i}.jpg', np.zeros((10, 12, 3)))
    (flat/'notes.txt').write_text('not an image')
    ds = get_dataset('folder', flat)
    assert len(ds) == 2 and not ds.has_labels and (ds[0]['label'] == -1).all()
    # flat folder with masks and ignore value
    _png(tmp_path/'m'/'p0.png', [[0, 2, 255]]*10 + [[1, 1, 1]]*0); _png(tmp_path/'m'/'p1.png', np.zeros((10, 3)))
    for i in range(2): _png(flat/f'p{i}.jpg', np.zeros((10, 3, 3)))
    ds = get_dataset('folder', flat, masks=tmp_path/'m')
    assert ds.n_classes == 3 and ds[0]['label'][0].tolist() == [0, 2, -1]


def test_synthetic_disk_backed(tmp_path):
    ds = get_dataset('synthetic', tmp_path, 'val', n_images=5, size=40, n_classes=6, seed=3)
    ref = SyntheticScenes('val', 5, 40, 6, seed=3)
    for i in range(5):
        np.testing.assert_array_equal(ds.load(i)[0], ref.scene(i)[0])
        np.testing.assert_array_equal(ds.load(i)[1], ref.scene(i)[1])
    m = os.path.getmtime(ds.img_files[0])
    ds2 = get_dataset('synthetic', tmp_path, 'val', n_images=5, size=40, n_classes=6, seed=3)
    assert os.path.getmtime(ds2.img_files[0]) == m and ds2.class_names == ds.class_names


def test_batches_collate(tree):
    ds = get_dataset('voc2012', tree('voc2012', n=4), 'train', resize=16)
    b = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert b['img'].shape == (4, 3, 16, 16) and b['label'].dtype == torch.int64 and b['class_labels'].shape == (4, 20)
    assert len(b['path']) == 4 and b['index'].tolist() == [0, 1, 2, 3]


def test_cropped_stego_layout(tmp_path):
    d = tmp_path/'cropped'/'cityscapes_five_crop_0.5'
    for k in range(3):
        _png(d/'img'/'train'/f'{k}.jpg', np.zeros((8, 8, 3)))
        _png(d/'label'/'train'/f'{k}.png', np.full((8, 8), k))   # stored +1: 0 = ignore
    ds = get_dataset('cityscapes27', tmp_path, 'train', crop='five')
    assert len(ds) == 3 and [int(ds[k]['label'][0, 0]) for k in range(3)] == [-1, 0, 1] and ds.n_classes == 27


# --- the real CamVid copy beside the repository

def test_camvid_real():
    root = shared_data('camvid_segnet')
    if root is None: pytest.skip('no CamVid copy: set USSEG_SHARED_DATA to the folder holding camvid_segnet/ (or ../shared/data)')
    val, test = get_dataset('camvid', root, 'val'), get_dataset('camvid', root, 'test')
    assert (len(val), len(test), val.n_classes) == (101, 233, 11)
    seen = np.zeros(12, np.int64)
    for ds in (val, test):
        for i in range(0, len(ds), 10):
            lab = ds.load_label(i)
            assert lab.shape == (360, 480) and lab.min() >= -1 and lab.max() <= 10
            seen += np.bincount(lab.ravel() + 1, minlength=12)
    assert (seen > 0).all()          # every class and the void label occur
    it = val[0]
    assert it['img'].shape == (3, 360, 480) and abs(float(it['img'].mean())) < 2


# --- bad input, each with a message that names the problem

def test_unknown_dataset():
    with pytest.raises(ValueError, match='known datasets: ' + ', '.join(DATASETS)):
        get_dataset('ade20k')


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        get_dataset('voc2012', tmp_path/'nope')
    assert str(tmp_path/'nope') in str(e.value) and 'VOCdevkit/VOC2012/JPEGImages' in str(e.value)


@pytest.mark.parametrize('name,split,expect', [('cocostuff27', 'val', 'cocostuff'), ('cityscapes27', 'val', 'leftImg8bit'),
                                               ('potsdam3', 'val', 'potsdam'), ('voc2012', 'val', 'VOCdevkit'), ('camvid', 'val', 'CamVid')])
def test_wrong_layout(tmp_path, name, split, expect):
    (tmp_path/'something_else').mkdir()
    with pytest.raises(FileNotFoundError) as e:
        get_dataset(name, tmp_path, split)
    msg = str(e.value)
    assert expect in msg and str(tmp_path) in msg and 'Expected under the data root' in msg and 'usseg data prepare' in msg


def test_unknown_split(tree):
    with pytest.raises(ValueError, match="unknown split 'test' for voc2012"):
        get_dataset('voc2012', tree('voc2012'), 'test')


@pytest.mark.parametrize('name', ['camvid', 'cocostuff27', 'cityscapes27', 'voc2012', 'folder'])
def test_image_without_label(tree, name):
    root = tree(name)
    ds = get_dataset(name, root, 'val')
    os.remove(ds.label_files[1])
    with pytest.raises(FileNotFoundError) as e:
        get_dataset(name, root, 'val')
    assert str(ds.img_files[1]) in str(e.value) and str(ds.label_files[1]) in str(e.value)


def test_folder_missing_mask_can_be_ignored(tree):
    root = tree('folder')
    os.remove(root/'labels'/'val'/'img1.png')
    ds = get_dataset('folder', root, 'val', missing_masks='ignore')
    assert (ds[1]['label'] == -1).all() and (ds[0]['label'] >= 0).any()


@pytest.mark.parametrize('name,bad', [('camvid', 12), ('voc2012', 21), ('cocostuff27', 200), ('cityscapes27', 34), ('potsdam3', 6)])
def test_label_value_outside_classes(tree, name, bad):
    root = tree(name)
    ds = get_dataset(name, root, 'val')
    p = Path(ds.label_files[0])
    arr = np.zeros((24, 32), np.uint8); arr[3, 4] = bad
    if name == 'potsdam3': savemat(p, {'gt': arr})
    else: _png(p, arr)
    with pytest.raises(ValueError) as e:
        ds[0]
    assert str(p) in str(e.value) and f'[{bad}]' in str(e.value)


def test_colour_mask_refused(tree):
    ds = get_dataset('camvid', tree('camvid'), 'val')
    _png(Path(ds.label_files[0]), np.zeros((24, 32, 3)))
    with pytest.raises(CorruptFileError, match='colour-coded'):
        ds[0]


def test_corrupt_image(tree):
    root = tree('camvid', n=3)
    ds = get_dataset('camvid', root, 'val')
    Path(ds.img_files[1]).write_bytes(b'\x89PNG\r\n\x1a\n this is not an image')
    with pytest.raises(CorruptFileError) as e:
        ds[1]
    assert str(ds.img_files[1]) in str(e.value)
    skip = get_dataset('camvid', root, 'val', on_corrupt='skip')
    with pytest.warns(UserWarning, match='skipping item 1'):
        it = skip[1]
    assert it['index'] == 2 and skip.skipped == {1}


def test_size_mismatch(tree):
    ds = get_dataset('camvid', tree('camvid'), 'val')
    _png(Path(ds.label_files[0]), np.zeros((10, 10)))
    with pytest.raises(ValueError, match='is 10x10 but image'):
        ds[0]


def test_empty_split_list(tree):
    root = tree('voc2012')
    (root/'VOCdevkit'/'VOC2012'/'ImageSets'/'Segmentation'/'val.txt').write_text('\n\n')
    with pytest.raises(ValueError, match='val.txt is empty'):
        get_dataset('voc2012', root, 'val')
    root = tree('cocostuff27')
    (root/'cocostuff'/'curated'/'val2017'/'Coco164kFull_Stuff_Coarse_7.txt').write_text('')
    with pytest.raises(ValueError, match='is empty'):
        get_dataset('cocostuff27', root, 'val')


def test_empty_folder(tmp_path):
    (tmp_path/'imgs'/'train').mkdir(parents=True)
    with pytest.raises(ValueError, match='no images'):
        get_dataset('folder', tmp_path, 'train')
