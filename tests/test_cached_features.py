"""Training on cached backbone outputs (issue 18): the same numbers as the uncached path for every method, on a ViT and
on a CNN; refused when the backbone trains or a training image's pixels change; the on-disk store reused; what each
method reads, and the CNN substitutes of HP (feature affinity for the attention) and EAGLE (last stages for the keys)."""
import json

import pytest
import torch
from torch.utils.data import default_collate

import usseg  # noqa: F401
import usseg.methods.hp as hp_module
from usseg.backbones import load_backbone
from usseg.data import get_dataset
from usseg.data.transforms import Compose, EvalTransform, RandomHorizontalFlip
from usseg.losses.hp import lhp_attention, propagate_code
from usseg.methods import get_method, train
from usseg.methods.base import CachedOutputs, read_backbone
from usseg.methods.hp import HpConfig, affinity_logits

METHODS = ['probe', 'stego', 'hp', 'smooseg', 'eagle']
KW = dict(weights='random', device='cpu', progress='none', smoke=True, steps=5, save_every=0,
          dataset_kw={'n_images': 10, 'n_classes': 5})


def _state(run): return {k: v.detach().clone() for k, v in run.task.state_dict().items()}


def _losses(run_dir):
    return [{k: v for k, v in json.loads(line).items() if k not in ('time', 'img_per_s')}
            for line in (run_dir/'metrics.jsonl').read_text().splitlines()]


@pytest.mark.parametrize('backbone', ['vit_tiny8', 'efficientnet_lite0'])
@pytest.mark.parametrize('method', METHODS)
def test_cached_path_computes_what_the_uncached_path_computes(method, backbone, tmp_path):
    "Five shuffled steps (batch 4 of 10 images: batches straddle the store's batches), cached vs uncached."
    on = train(method, 'synthetic', tmp_path/'data', tmp_path/'on', backbone=backbone, cache_features=True, **KW)
    off = train(method, 'synthetic', tmp_path/'data', tmp_path/'off', backbone=backbone, cache_features=False, **KW)
    assert on.task.cache_info['cached'] and on.task.store is not None
    assert not off.task.cache_info['cached'] and off.task.store is None
    a, b = _state(on), _state(off)
    assert a.keys() == b.keys()
    # float32: the store runs the backbone on other batches than the training step does; a sum blocked differently for
    # another batch size may differ in the last bits (on the development CPU the two paths are bit-identical)
    for k in a: torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    for x, y in zip(_losses(tmp_path/'on'), _losses(tmp_path/'off')):
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], float): assert x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-6), k


def test_auto_caches_where_allowed_and_records_what(tmp_path):
    run = train('stego', 'synthetic', tmp_path/'data', tmp_path/'run', backbone='vit_tiny8', **KW)   # cache_features='auto'
    info = run.task.cache_info
    assert info['cached'] and info['views'] == ['img', 'img_pos'] and info['computed_every_step'] == []
    assert info['outputs'] == {'features': [10, 48, 8, 8]} and info['where'] == 'memory'
    hp = train('hp', 'synthetic', tmp_path/'data', tmp_path/'hp', backbone='vit_tiny8', **KW)
    assert hp.task.cache_info['views'] == ['img'] and hp.task.cache_info['computed_every_step'] == ['img_aug']
    assert set(hp.task.cache_info['outputs']) == {'features', 'attention'}


def test_disk_store_is_written_once_and_read_back(tmp_path):
    store = tmp_path/'store'
    first = train('stego', 'synthetic', tmp_path/'data', tmp_path/'a', backbone='vit_tiny8', feature_cache=store, **KW)
    files = sorted(store.rglob('feats.npy'))
    assert len(files) == 1 and first.task.cache_info['where'] == str(store)
    stamp = files[0].stat().st_mtime_ns
    again = train('stego', 'synthetic', tmp_path/'data', tmp_path/'b', backbone='vit_tiny8', feature_cache=store, **KW)
    assert files[0].stat().st_mtime_ns == stamp                                  # read back, not rebuilt
    mem = train('stego', 'synthetic', tmp_path/'data', tmp_path/'c', backbone='vit_tiny8', **KW)
    a, b, c = _state(first), _state(again), _state(mem)
    for k in a: assert torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]), k


def _task_and_data(tmp_path, method='stego', transform=None):
    ds = get_dataset('synthetic', tmp_path/'data', 'train', transform=transform or EvalTransform(64), n_images=8, size=64, n_classes=5)
    M = get_method(method)
    task = M.build(load_backbone('vit_tiny8', weights='random'), 5, M.default_config('synthetic', 'vit_tiny8', smoke=True))
    spec = {'backbone': 'vit_tiny8', 'weights': 'random', 'seed': 0, 'image_size': 64,
            'train': {'device': 'cpu', 'progress': 'none', 'batch_size': 4, 'max_steps': 4}}
    return task, task.training_data(ds, spec), ds


def test_refused_when_the_backbone_trains(tmp_path):
    task, items, ds = _task_and_data(tmp_path)
    task.backbone.unfreeze(('blocks.1',))
    assert task.backbone_trains
    with pytest.raises(ValueError, match='backbone trains'):
        task.cache_outputs(items, ds, True)
    assert task.cache_outputs(items, ds, 'auto') is items and not task.cache_info['cached']
    with pytest.raises(ValueError, match='backbone trains'):
        task.backbone_store(ds)
    task.backbone.freeze()
    assert isinstance(task.cache_outputs(items, ds, 'auto'), CachedOutputs)


def test_refused_when_a_fixed_view_changes_between_epochs(tmp_path):
    "A random flip in the dataset's transform: the first item differs between two item seeds, so nothing is cached."
    task, items, ds = _task_and_data(tmp_path, 'smooseg', Compose(EvalTransform(64), RandomHorizontalFlip(0.5)))
    with pytest.raises(ValueError, match='pixels change'):
        task.cache_outputs(items, ds, True)
    assert task.cache_outputs(items, ds, 'auto') is items
    with pytest.raises(ValueError, match="True, False or 'auto'"):
        task.cache_outputs(items, ds, 'yes')


def test_cached_items_carry_the_outputs_of_their_own_images(tmp_path):
    "Each view's cached features are the backbone's on that view's pixels (STEGO: the neighbour's at `index_pos`)."
    task, items, ds = _task_and_data(tmp_path)
    cached = task.cache_outputs(items, ds, True, batch_size=3)
    b = default_collate([cached[i] for i in (5, 0, 7, 2)])
    for view in ('img', 'img_pos'):
        torch.testing.assert_close(b['cached'][view]['features'], task.backbone(b[view]), rtol=1e-5, atol=1e-6)
    assert torch.equal(task.outputs(b, ('img', 'img_pos'))['features'],
                       torch.cat([b['cached']['img']['features'], b['cached']['img_pos']['features']]))


def test_what_each_method_reads(tmp_path):
    vit, cnn = load_backbone('vit_tiny8', weights='random'), load_backbone('efficientnet_lite0', weights='random')
    want = {'stego': ({'features': ('features', 1)},) * 2, 'smooseg': ({'features': ('features', 1)},) * 2,
            'hp': ({'features': ('features', 1), 'attention': ('attention', 1)}, {'features': ('features', 1)}),
            'eagle': ({'keys': ('keys', 2)}, {'keys': ('tokens', 2)})}
    for m, (on_vit, on_cnn) in want.items():
        M = get_method(m)
        cfg = M.default_config('synthetic', 'vit_tiny8', smoke=True)
        assert M.build(vit, 5, cfg).reads() == on_vit, m
        assert M.build(cnn, 5, cfg).reads() == on_cnn, m
    fixed = {m: get_method(m).build(vit, 5, get_method(m).default_config('synthetic', 'vit_tiny8', smoke=True)).fixed_views() for m in want}
    assert fixed == {'stego': {'img': 'index', 'img_pos': 'index_pos'}, 'smooseg': {'img': 'index'}, 'hp': {'img': 'index'},
                     'eagle': {'img': 'index'}}


def test_hp_on_a_cnn_propagates_through_the_feature_affinity(monkeypatch):
    "HP on a CNN (no attention): the weights of its local hidden positives are lhp_attention of the cosine affinity / T."
    cnn = load_backbone('resnet50', weights='random')
    task = get_method('hp').build(cnn, 5, HpConfig.smoke())
    ds = get_dataset('synthetic', None, 'train', transform=EvalTransform(64), n_images=8, size=64, n_classes=5)
    items = task.training_data(ds, {'train': {'batch_size': 4, 'max_steps': 4}})
    batch = default_collate([items[i] for i in range(4)])
    seen = []
    monkeypatch.setattr(hp_module, 'propagate_code', lambda code, w: seen.append(w) or propagate_code(code, w))
    out = task.training_step(batch, 0)
    assert torch.isfinite(out['loss'])
    expected = lhp_attention(affinity_logits(cnn(batch['img']), task.cfg.affinity_temperature), **task.cfg.attention_kwargs())
    assert torch.equal(seen[0], expected)
    assert not torch.equal(seen[0], lhp_attention(affinity_logits(cnn(batch['img']), 1.0), **task.cfg.attention_kwargs()))


def test_eagle_on_a_cnn_reads_its_last_stages():
    cnn = load_backbone('efficientnet_lite0', weights='random')
    M = get_method('eagle')
    task = M.build(cnn, 5, M.default_config('synthetic', 'vit_tiny8', smoke=True))
    x = torch.randn(2, 3, 64, 96)
    assert task.cfg.in_dim == task.head.in_dim == 80 + 112
    assert torch.equal(task.keys(x), torch.cat(cnn.intermediate(x, 2), 1))
    assert torch.equal(read_backbone(cnn, x, {'k': ('tokens', 2)})['k'], task.keys(x))


@pytest.mark.parametrize('method', METHODS)
def test_cached_outputs_are_laid_out_as_the_backbone_lays_them_out(method, tmp_path):
    "Same values in another memory layout can round differently downstream (EAGLE's eigenvectors amplify it): keep the layout."
    task, items, ds = _task_and_data(tmp_path, method)
    b = default_collate([items[i] for i in range(4)])
    computed = task.outputs(b)
    cached = task.cache_outputs(items, ds, True, batch_size=3)
    read = task.outputs(default_collate([cached[i] for i in range(4)]))
    for k, t in computed.items():
        assert torch.equal(read[k], t), k
        assert read[k].stride()[1:] == t.stride()[1:], (k, read[k].stride(), t.stride())
