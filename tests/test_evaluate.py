"""usseg.evaluate: an oracle scores 100, a renamed oracle too (Hungarian), a random model scores chance; baseline protocol."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import usseg  # noqa: F401
from usseg.cluster import ClusterLookup, KMeans
from usseg.data.synthetic import SyntheticScenes
from usseg.evaluate import (EvalResult, baseline, choose_fit_split, evaluate, predict_batch, predict_masks, read_image_tensor,
                            save_predictions, as_cluster_head)

N = 6


class Oracle:
    "Code = one-hot ground truth of the (possibly flipped) image, channels reordered by `perm`, optionally downsampled."
    def __init__(self, ds, perm=None, pool=1):
        self.perm, self.pool, self.table = torch.arange(ds.n_classes) if perm is None else perm, pool, {}
        for i in range(len(ds)):
            it = ds[i]; lab = it['label']
            oh = F.one_hot(lab.clamp_min(0), ds.n_classes).permute(2, 0, 1).float()*(lab >= 0)
            self.table[it['img'].numpy().tobytes()] = oh
            self.table[it['img'].flip(-1).numpy().tobytes()] = oh.flip(-1)
    def __call__(self, img):
        c = torch.stack([self.table[x.cpu().numpy().tobytes()] for x in img])[:, self.perm]
        return F.avg_pool2d(c, self.pool) if self.pool > 1 else c


@pytest.fixture(scope='module')
def ds(): return SyntheticScenes('val', n_images=10, size=48, n_classes=N, ignore_width=1, seed=2)


def test_oracle_scores_100_on_both_paths(ds):
    r = evaluate(Oracle(ds), ds, torch.eye(N), nn.Identity(), flip=True, batch_size=4)
    assert r.n_images == 10
    for path in (r.cluster, r.linear):
        assert path['acc'] == pytest.approx(100) and path['miou'] == pytest.approx(100)
    assert r.cluster['assignment'] == list(range(N))


def test_renamed_oracle_still_100_through_hungarian(ds):
    perm = torch.tensor([4, 2, 0, 5, 1, 3])
    r = evaluate(Oracle(ds, perm), ds, torch.eye(N), nn.Identity())
    assert r.acc == pytest.approx(100) and r.miou == pytest.approx(100)
    assert r.linear['acc'] < 60                                     # identity matching sees the renaming
    assert r.cluster['assignment'] == perm.tolist()                 # cluster k holds class perm[k]


def test_random_model_scores_chance(ds):
    torch.manual_seed(0)
    big = SyntheticScenes('val', n_images=16, size=64, n_classes=N, seed=5)
    r = evaluate(lambda x: torch.randn(len(x), 8, 64, 64), big, torch.randn(N, 8))
    assert abs(r.acc - 100/N) < 3                                  # chance = 1/N of the pixels
    assert r.miou < 15


def test_every_cluster_head_form_gives_the_same_numbers(ds):
    torch.manual_seed(0)
    model = lambda x: F.avg_pool2d(x, 4)                           # colour "code", 3 channels on a 12x12 grid
    probe = ClusterLookup(3, N)
    km = KMeans(N, backend='torch').fit(torch.randn(200, 3))
    ref = evaluate(model, ds, probe).cluster
    assert evaluate(model, ds, probe.clusters.detach().clone()).cluster == ref
    assert evaluate(model, ds, lambda c: probe.scores(c)).cluster == ref
    assert evaluate(model, ds, km).cluster == evaluate(model, ds, km.centroids).cluster


def test_flip_tta_averages_the_code(ds):
    calls = []
    def model(x):
        calls.append(x.clone()); return F.avg_pool2d(x, 4)
    out = predict_batch(model, ds[0]['img'][None], {'c': as_cluster_head(torch.eye(3))}, flip=True)
    assert len(calls) == 2 and torch.equal(calls[1], calls[0].flip(-1))
    code = (F.avg_pool2d(calls[0], 4) + F.avg_pool2d(calls[1], 4).flip(-1))/2
    ref = as_cluster_head(torch.eye(3))(F.interpolate(code, (48, 48), mode='bilinear', align_corners=False))
    assert torch.allclose(out['c'], ref)


def test_crf_backends_agree_and_help_a_blurry_oracle(ds):
    o = Oracle(ds, pool=8)                                          # one-hot truth averaged over 8x8 patches: blurry edges
    plain = evaluate(o, ds, torch.eye(N), alpha=4.)
    py = evaluate(o, ds, torch.eye(N), alpha=4., crf=True, crf_workers=0)
    th = evaluate(o, ds, torch.eye(N), alpha=4., crf='torch')
    assert py.acc == pytest.approx(th.acc, abs=0.05)
    assert py.settings['crf']['backend'] == 'pydensecrf' and py.settings['crf']['bi_srgb'] == 3
    assert py.acc > plain.acc


def test_extra_clusters_are_errors_in_evaluate(ds):
    o = Oracle(ds)
    def split(img):
        c = o(img); extra = torch.zeros_like(c[:, :1])
        extra[..., :24], c[:, 0, :, :24] = c[:, :1, :, :24], 0
        return torch.cat([c, extra], 1)
    r = evaluate(split, ds, torch.eye(N + 1))
    assert r.settings['extra_clusters'] == 1
    assert r.acc < 100 and r.cluster['n_pixels'] == r.cluster['n_pixels_upstream_drop'] + int(r.metrics['cluster'].confusion[N].sum())


def test_result_json_and_repr(ds, tmp_path):
    r = evaluate(Oracle(ds), ds, torch.eye(N), settings={'method': 'oracle'})
    d = json.loads(r.to_json(tmp_path/'r.json'))
    assert d == json.loads((tmp_path/'r.json').read_text())
    assert {'acc', 'miou', 'n_images', 'cluster', 'settings'} <= set(d) and 'linear' not in d
    assert d['settings']['method'] == 'oracle' and d['settings']['split'] == 'val'
    assert len(d['cluster']['confusion']) == N and '| cluster | 100.00 | 100.00 |' in r._repr_markdown_()
    nan_json = EvalResult({'acc': 1.0, 'miou': float('nan')}, None, 1, {}).to_json()
    assert json.loads(nan_json)['miou'] is None                    # valid JSON, no NaN literal


def test_baseline_protocol_is_recorded():
    train = SyntheticScenes('train', n_images=12, size=48, n_classes=N)
    val = SyntheticScenes('val', n_images=6, size=48, n_classes=N)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(4)).eval()
    r = baseline(net, train, val, max_fit_points=1000, backend='torch', seed=1)
    f = r.settings['fit']
    assert f['split'] == 'train' and not f['transductive'] and f['n_points'] == 1000
    assert r.settings['kmeans']['backend'] == 'torch' and isinstance(r.heads['cluster'], KMeans)
    assert 100/N < r.acc <= 100
    assert baseline(net, val, val, max_fit_points=500, backend='torch').settings['fit']['transductive']


def test_baseline_is_deterministic():
    train = SyntheticScenes('train', n_images=8, size=32, n_classes=4)
    val = SyntheticScenes('val', n_images=4, size=32, n_classes=4)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.AvgPool2d(4)).eval()
    a = baseline(net, train, val, max_fit_points=300, backend='torch', seed=3)
    b = baseline(net, train, val, max_fit_points=300, backend='torch', seed=3)
    assert a.cluster == b.cluster


def test_choose_fit_split():
    assert choose_fit_split(['train', 'val'], 'val') == 'train'
    assert choose_fit_split(['val', 'test'], 'test') == 'val'
    assert choose_fit_split(['val', 'test'], 'test', transductive=True) == 'test'
    with pytest.raises(ValueError, match='transductive=True'): choose_fit_split(['val'], 'val')


def test_predict_masks_and_files(ds, tmp_path):
    o = Oracle(ds, perm=torch.tensor([1, 2, 3, 4, 5, 0]))
    r = evaluate(o, ds, torch.eye(N))
    imgs = torch.stack([ds[i]['img'] for i in range(3)])
    preds = predict_masks(o, imgs, torch.eye(N), assignment=r.cluster['assignment'], palette=ds.palette)
    for i, p in enumerate(preds):
        lab = ds[i]['label'].numpy(); keep = lab >= 0
        assert (p['mask'][keep] == lab[keep]).all()                 # cluster ids mapped back to classes
        assert p['color'].shape == (48, 48, 3) and p['overlay'].dtype == np.uint8
    paths = save_predictions(preds, tmp_path, ['a', 'b', 'c'])
    assert len(paths) == 9 and all(p.is_file() for p in paths)
    from PIL import Image
    assert np.array(Image.open(tmp_path/'a_mask.png')).max() < N
    Image.fromarray(ds.scene(0)[0]).save(tmp_path/'x.png')
    x = read_image_tensor(tmp_path/'x.png', max_size=40)
    assert x.shape == (3, 40, 40)
    lst = predict_masks(o, [imgs[0], imgs[1]], torch.eye(N))
    assert len(lst) == 2 and lst[0]['mask'].shape == (48, 48)


def test_errors(ds):
    with pytest.raises(ValueError, match='nothing to evaluate'): evaluate(lambda x: x, ds)
    with pytest.raises(ValueError, match="unknown crf 'dense'"): evaluate(lambda x: x, ds, torch.eye(3), crf='dense')
    with pytest.raises(ValueError, match='linear head gives 3 classes'): evaluate(lambda x: x, ds, linear_head=nn.Identity())
    with pytest.raises(ValueError, match='exactly one'): predict_masks(lambda x: x, ds[0]['img'], None)
    with pytest.raises(FileNotFoundError, match='no image at'): read_image_tensor('/nonexistent/x.png')
