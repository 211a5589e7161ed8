"""SmooSeg and EAGLE as usseg methods: build from the smoke configuration, one step trains what it should, the SmooSeg
teacher follows after each step and survives a resume, checkpoint round trips, and `usseg train eagle` + `usseg evaluate`."""
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import usseg  # the compat shim first
import usseg.methods.base
import usseg.methods.smooseg
from usseg.backbones import load_backbone
from usseg.data.synthetic import SyntheticScenes
from usseg.learner import load_checkpoint
from usseg.methods import get_method, load_run, train

USSEG = shutil.which('usseg') or str(Path(sys.executable).with_name('usseg'))
SMALL = dict(backbone='vit_tiny8', weights='random', batch_size=4, image_size=64, device='cpu', progress='none', smoke=True,
             save_every=0, dataset_kw={'n_images': 8, 'n_classes': 5})


def _task(method, n_classes=5, seed=0):
    M = get_method(method)
    return M.build(load_backbone('vit_tiny8', weights='random', seed=seed), n_classes, M.default_config('synthetic', 'vit_tiny8', smoke=True))


def _batch(task, n=4):
    data = task.training_data(SyntheticScenes('train', n_images=n, size=64, n_classes=5), {})
    items = [data[i] for i in range(n)]
    return {k: torch.stack([it[k] for it in items]) for k in items[0] if torch.is_tensor(items[0][k]) and items[0][k].ndim > 0}


@pytest.mark.parametrize('method', ['smooseg', 'eagle'])
def test_build_from_smoke_config(method):
    task = _task(method)
    assert task.cfg.n_classes == 5 and task.cfg.dataset == 'synthetic' and task.cfg.backbone == 'vit_tiny8'
    assert not any(p.requires_grad for p in task.backbone.parameters())
    code = task.eval().code(torch.randn(2, 3, 64, 64))
    assert code.shape == (2, task.dim, 8, 8)


@pytest.mark.parametrize('method,trained', [('smooseg', {'projection', 'predictor', 'linear_probe'}),
                                            ('eagle', {'head', 'projection', 'eigen_probe', 'eigen_probe_aug', 'cluster_probe', 'linear_probe'})])
def test_one_step_changes_the_trainable_parts_only(method, trained):
    torch.manual_seed(0)
    task = _task(method).train()
    batch = _batch(task)
    opts = task.configure_optimizers()
    before = {k: v.clone() for k, v in task.state_dict().items()}
    out = task.training_step(batch, 5)
    assert torch.isfinite(out['loss'])
    out['loss'].backward()
    for o in opts.values(): o.step()
    task.after_step(5)
    after = task.state_dict()
    changed = {k.split('.')[0] for k in after if not torch.equal(after[k], before[k])}
    assert changed == trained
    # every trainable parameter got a gradient (nothing is silently detached)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in task.named_parameters() if p.requires_grad), \
        [n for n, p in task.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]


@pytest.mark.parametrize('method,module', [('smooseg', usseg.methods.smooseg), ('eagle', usseg.methods.base), ('probe', usseg.methods.base)])
def test_training_step_scores_the_probe_as_configured(method, module, monkeypatch):
    "The step scores the linear probe with the config's `linear_probe_labels`, and nothing else in the step depends on it."
    calls, real, outs = [], module.linear_probe_loss, {}
    monkeypatch.setattr(module, 'linear_probe_loss', lambda lg, lab, labels='nearest': calls.append((labels, real(lg, lab, labels))) or calls[-1][1])
    M, batch = get_method(method), None
    for how in ('nearest', 'upsample'):
        torch.manual_seed(0)
        cfg = replace(M.default_config('synthetic', 'vit_tiny8', smoke=True), linear_probe_labels=how)
        task = M.build(load_backbone('vit_tiny8', weights='random', seed=0), 5, cfg).train()
        batch = _batch(task) if batch is None else batch        # the same images
        torch.manual_seed(1)                                      # the step's dropout
        outs[how] = task.training_step(batch, 5)
        assert [c[0] for c in calls] == [how] and torch.equal(outs[how]['linear_loss'], calls[0][1]); calls.clear()
    assert not torch.equal(outs['nearest']['linear_loss'], outs['upsample']['linear_loss'])
    for k in set(outs['nearest']) - {'linear_loss', 'loss'}:
        torch.testing.assert_close(outs['nearest'][k], outs['upsample'][k], rtol=0, atol=0, msg=k)


def test_smooseg_teacher_follows_the_student_of_the_step_start():
    torch.manual_seed(0)
    task = _task('smooseg').train()
    batch = _batch(task)
    opts = task.configure_optimizers()
    phi_s0, phi_t0 = task.predictor.phi_s.detach().clone(), task.predictor.phi_t.clone()
    task.training_step(batch, 0)['loss'].backward()
    for o in opts.values(): o.step()
    assert not torch.equal(task.predictor.phi_s.detach(), phi_s0)
    assert torch.equal(task.predictor.phi_t, phi_t0)            # the optimisers never touch the teacher
    task.after_step(0)
    a = task.cfg.ema_m
    torch.testing.assert_close(task.predictor.phi_t, a * phi_t0 + (1 - a) * phi_s0)


def test_smooseg_teacher_restored_on_resume(tmp_path):
    kw = dict(SMALL, seed=0)
    full = train('smooseg', 'synthetic', tmp_path/'data', tmp_path/'full', steps=4, **kw)
    train('smooseg', 'synthetic', tmp_path/'data', tmp_path/'half', steps=2, **kw)
    ck = load_checkpoint(tmp_path/'half')
    assert ck['step'] == 2 and not torch.equal(ck['task']['predictor.phi_t'], ck['task']['predictor.phi_s'])
    resumed = train('smooseg', 'synthetic', tmp_path/'data', tmp_path/'half', steps=4, resume=True, **kw)
    for k in ('predictor.phi_t', 'predictor.phi_s', 'projection.linear.weight'):
        torch.testing.assert_close(resumed.task.state_dict()[k].cpu(), full.task.state_dict()[k].cpu(), rtol=0, atol=0)


@pytest.mark.parametrize('method', ['smooseg', 'eagle'])
def test_checkpoint_round_trip(tmp_path, method):
    run = train(method, 'synthetic', tmp_path/'data', tmp_path/'run', steps=2, **SMALL)
    again = load_run(tmp_path/'run', device='cpu')
    assert type(again.task) is type(run.task) and again.step == 2
    x = again.spec.split_dataset('val')[0]['img'][None]
    torch.testing.assert_close(again.task.eval().code(x), run.task.cpu().eval().code(x))
    if method == 'smooseg': assert torch.equal(again.task.predictor.phi_t, run.task.predictor.phi_t)


def test_eagle_cli_train_evaluate_json(tmp_path):
    "`usseg train eagle ... --smoke` then `usseg evaluate --json`: usseg's numbers and the upstream drop-extra convention."
    r = subprocess.run([USSEG, 'train', 'eagle', '--dataset', 'synthetic', '--data-root', str(tmp_path/'data'), '--out', str(tmp_path/'run'),
                        '--backbone', 'vit_tiny8', '--weights', 'random', '--steps', '3', '--batch-size', '4', '--image-size', '64',
                        '--device', 'cpu', '--n-images', '8', '--n-classes', '5', '--smoke'], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path/'run'/'config.json').read_text())['task']['config']
    assert cfg['extra_clusters'] >= 1                             # the smoke setting keeps an extra cluster
    r = subprocess.run([USSEG, 'evaluate', str(tmp_path/'run'), '--json', '--device', 'cpu'], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res['n_images'] == 8 and 0 <= res['acc'] <= 100 and 0 <= res['miou'] <= 100
    c = res['cluster']
    assert len(c['assignment']) == 5 + cfg['extra_clusters']
    assert 0 <= c['acc_upstream_drop'] <= 100 and 0 <= c['miou_upstream_drop'] <= 100
    assert c['n_pixels_upstream_drop'] <= c['n_pixels']
    assert res['settings']['alpha'] == 4.0 and res['settings']['extra_clusters'] == cfg['extra_clusters']


def test_eagle_refuses_a_backbone_without_enough_blocks():
    M = get_method('eagle')
    cfg = replace(M.default_config('synthetic', 'vit_tiny8', smoke=True), n_blocks=3)
    with pytest.raises(ValueError, match='last 3 blocks'):
        M.build(load_backbone('vit_tiny8', weights='random'), 5, cfg)
