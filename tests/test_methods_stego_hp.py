"""STEGO and HP as methods: a training step moves the head, runs reload to the same code, HP's reference pools survive
a resume, and `usseg train stego --smoke` + `usseg evaluate --json` work end to end (synthetic scenes, random tiny ViT, CPU)."""
import copy
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import usseg
import usseg.methods.base
from usseg.backbones import load_backbone
from usseg.data import get_dataset
from usseg.data.prepare import neighbours_dir
from usseg.data.transforms import EvalTransform
from usseg.learner import load_checkpoint
from usseg.methods import available_methods, get_method, load_run, train
from usseg.methods.hp import HpConfig
from usseg.methods.stego import StegoConfig

USSEG = shutil.which('usseg') or str(Path(sys.executable).with_name('usseg'))
SMOKE = dict(backbone='vit_tiny8', weights='random', device='cpu', progress='none', smoke=True,
             dataset_kw={'n_images': 8, 'n_classes': 5})


@pytest.fixture(scope='module')
def scenes(tmp_path_factory):
    return tmp_path_factory.mktemp('scenes')


def _batch(task, method, root):
    ds = get_dataset('synthetic', root, 'train', transform=EvalTransform(64), n_images=8, size=64, n_classes=5)
    data = task.training_data(ds, {'backbone': 'vit_tiny8', 'weights': 'random', 'seed': 0, 'image_size': 64,
                                   'train': {'device': 'cpu', 'progress': 'none', 'batch_size': 4, 'max_steps': 4}})
    items = [data[i] for i in range(4)]
    keys = {'stego': ('img', 'img_pos', 'label'), 'hp': ('img', 'img_aug', 'label')}[method]
    return {k: torch.stack([it[k] for it in items]) for k in keys}


@pytest.mark.parametrize('method,cfg', [('stego', StegoConfig.smoke()), ('hp', HpConfig.smoke())])
def test_one_step_moves_the_head_only(method, cfg, scenes):
    torch.manual_seed(0)
    task = get_method(method).build(load_backbone('vit_tiny8', weights='random'), 5, cfg)
    assert task.cfg.in_dim == 48 and task.cfg.n_classes == 5
    batch = _batch(task, method, scenes)
    opts = task.configure_optimizers()
    head0, bb0 = copy.deepcopy(task.head.state_dict()), copy.deepcopy(task.backbone.state_dict())
    out = task.training_step(batch, 0)
    assert torch.isfinite(out['loss']) and all(torch.isfinite(torch.as_tensor(v)) for v in out.values())
    out['loss'].backward()
    for o in opts.values(): o.step()
    task.after_step(0)
    assert any(not torch.equal(head0[k], v) for k, v in task.head.state_dict().items())
    assert all(torch.equal(bb0[k], v) for k, v in task.backbone.state_dict().items())


def spy_probe_loss(monkeypatch, module):
    "Record the `labels` rule and the value of every `linear_probe_loss` call made from `module`."
    calls, real = [], module.linear_probe_loss
    def spy(logits, label, labels='nearest'):
        calls.append((labels, real(logits, label, labels))); return calls[-1][1]
    monkeypatch.setattr(module, 'linear_probe_loss', spy)
    return calls


@pytest.mark.parametrize('method,cfg', [('stego', StegoConfig.smoke()), ('hp', HpConfig.smoke())])
def test_training_step_scores_the_probe_as_configured(method, cfg, scenes, monkeypatch):
    calls, losses, batch = spy_probe_loss(monkeypatch, usseg.methods.base), {}, None
    for how in ('nearest', 'upsample'):
        torch.manual_seed(0)
        task = get_method(method).build(load_backbone('vit_tiny8', weights='random', seed=0), 5, replace(cfg, linear_probe_labels=how))
        b = _batch(task, method, scenes)                          # (HP: the split its pools are drawn from)
        batch = b if batch is None else batch                     # the same images and partners
        torch.manual_seed(1)                                      # the step's dropout and random pairs
        out = task.training_step(batch, 0)
        assert [c[0] for c in calls] == [how] and torch.equal(out['linear_loss'], calls[0][1].detach())
        losses[how] = out; calls.clear()
    assert not torch.equal(losses['nearest']['linear_loss'], losses['upsample']['linear_loss'])
    for k in losses['nearest']:                                   # nothing else in the step depends on it
        if k not in ('linear_loss', 'loss'): torch.testing.assert_close(losses['nearest'][k], losses['upsample'][k], rtol=0, atol=0, msg=k)


def test_every_method_scores_the_probe_on_the_grid_by_default():
    for name in available_methods():
        M = get_method(name)
        for cfg in (M.default_config('synthetic', 'vit_tiny8', smoke=True), M.default_config('cocostuff27'), M.default_config('camvid')):
            assert cfg.linear_probe_labels == 'nearest', (name, cfg.dataset)
        assert cfg.override({'linear_probe_labels': 'upsample'}).linear_probe_labels == 'upsample'
        with pytest.raises(ValueError, match='must be one of nearest, mode, upsample'): cfg.override({'linear_probe_labels': 'bilinear'})


def test_hp_on_a_backbone_without_attention_reads_its_features_only():
    "A CNN has no attention: HP reads the features and replaces the attention by their affinity (tests/test_cached_features.py)."
    task = get_method('hp').build(load_backbone('resnet50', weights='random'), 5, HpConfig.smoke())
    assert task.reads() == {'features': ('features', 1)}


@pytest.mark.parametrize('method', ['stego', 'hp'])
def test_checkpoint_round_trip_gives_the_same_code(method, tmp_path):
    run = train(method, 'synthetic', tmp_path/'data', tmp_path/'run', steps=3, **SMOKE)
    again = load_run(tmp_path/'run', device='cpu')
    x = again.spec.split_dataset('val')[0]['img'][None]
    torch.testing.assert_close(again.task.eval().code(x), run.task.cpu().eval().code(x))
    cfg = json.loads((tmp_path/'run'/'config.json').read_text())
    assert cfg['task']['method'] == method and cfg['task']['spec']['config']['dim'] == 16
    if method == 'hp': assert cfg['train']['clip_grad_norm'] == 10.0
    if method == 'stego': assert list(neighbours_dir(tmp_path/'data').glob('nns_vit_tiny8-random_synthetic-*_train_None_64.npz'))


def test_hp_pools_survive_a_resume(tmp_path):
    full = train('hp', 'synthetic', tmp_path/'data', tmp_path/'full', steps=4, **SMOKE)
    half = train('hp', 'synthetic', tmp_path/'data', tmp_path/'half', steps=2, **SMOKE)
    ck = load_checkpoint(tmp_path/'half')
    assert int(ck['task']['pool_step']) == 1                                     # the smoke setting renews P^sp at step 1
    torch.testing.assert_close(ck['task']['pool_ag'], half.task.pool_ag.cpu())
    torch.testing.assert_close(ck['task']['pool_sp'], half.task.pool_sp.cpu())
    resumed = train('hp', 'synthetic', tmp_path/'data', tmp_path/'half', steps=4, resume=True, **SMOKE)
    assert resumed.step == 4
    torch.testing.assert_close(resumed.task.pool_ag, full.task.pool_ag)          # the pools were restored, not redrawn
    for k, v in full.task.state_dict().items():                                   # and the run ends where the uninterrupted one does
        torch.testing.assert_close(resumed.task.state_dict()[k], v, msg=k)


def test_cli_train_stego_smoke_then_evaluate_json(tmp_path):
    run = lambda *a: subprocess.run([USSEG, *map(str, a)], capture_output=True, text=True, timeout=600)
    r = run('train', 'stego', '--dataset', 'synthetic', '--data-root', tmp_path/'data', '--out', tmp_path/'run', '--backbone', 'vit_tiny8',
            '--weights', 'random', '--smoke', '--steps', '3', '--image-size', '64', '--device', 'cpu', '--n-images', '8', '--n-classes', '5')
    assert r.returncode == 0, r.stderr
    assert (tmp_path/'run'/'checkpoints'/'last.pt').is_file()
    r = run('evaluate', tmp_path/'run', '--json', '--device', 'cpu')
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res['n_images'] == 8 and 0 <= res['miou'] <= 100 and len(res['cluster']['assignment']) == 5
    assert res['settings']['method'] == 'stego' and res['settings']['flip'] is True
