"""Dropout is off whenever usseg evaluates: through `evaluate`, `baseline`, `usseg evaluate`, the Learner's evaluation,
the evaluation inside each stage of a method in stages (`fit_stage`), and a run reloaded with `load_run`.

Every `nn.Dropout*` forward is recorded while an evaluation entry point runs; a single call in training mode fails
the test. (Checked by planting the bug: with `_module_of` returning None for bound methods, `evaluate(task.code)`
records training-mode calls and the first test fails. The stage test fails when the three guards on its path are removed
together, `_module_of`, `_eval_fn`'s `task.eval()` and the Learner's, and when `load_run` leaves the task in training
mode.)
"""
import contextlib

import pytest
import torch
from torch import nn

import usseg  # noqa: F401
from usseg.backbones import load_backbone
from usseg.data import get_dataset
from usseg.evaluate import baseline, evaluate
from usseg.learner import Learner, TrainConfig
from usseg.methods import get_method, load_run, train

SMOKE = dict(backbone='vit_tiny8', weights='random', device='cpu', progress='none', smoke=True,
             dataset_kw={'n_images': 8, 'n_classes': 5})


@pytest.fixture
def dropout_calls(monkeypatch):
    "A list that receives the `training` flag of every dropout forward inside `recording()`."
    calls, on = [], [False]
    for cls in (nn.Dropout, nn.Dropout2d):
        orig = cls.forward
        def fwd(self, x, _orig=orig):
            if on[0]: calls.append(self.training)
            return _orig(self, x)
        monkeypatch.setattr(cls, 'forward', fwd)
    @contextlib.contextmanager
    def recording():
        on[0] = True
        try: yield calls
        finally: on[0] = False
    return recording


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp('evalmode')
    return train('stego', 'synthetic', d/'data', d/'run', steps=2, **SMOKE)


def test_evaluate_a_bound_method(run, dropout_calls):
    task = run.task.train()
    ds = run.spec.split_dataset('val')
    with dropout_calls() as calls: evaluate(task.code, ds, **task.eval_heads())
    assert calls and not any(calls), calls
    assert task.training and task.head.dropout.training          # the caller's mode is back


def test_baseline_with_a_training_mode_feature_function(run, dropout_calls):
    task = run.task.train()
    ds = run.spec.split_dataset('val')
    with dropout_calls() as calls: baseline(task.code, ds, ds, n_clusters=5, max_fit_points=500)
    assert calls and not any(calls), calls
    assert task.training


def test_cli_evaluate(run, dropout_calls):
    from usseg.cli import main
    with dropout_calls() as calls: assert main(['evaluate', str(run.run_dir), '--json', '--device', 'cpu']) == 0
    assert calls and not any(calls), calls


def test_learner_evaluation(tmp_path, dropout_calls):
    bb = load_backbone('vit_tiny8', weights='random')
    M = get_method('stego')
    ds = get_dataset('synthetic', tmp_path/'data', 'val', n_images=4, size=32, n_classes=3)
    task = M.build(bb, 3, M.default_config('synthetic', 'vit_tiny8', smoke=True))
    x = torch.stack([ds[i]['img'] for i in range(2)])
    seen = {}
    def eval_fn(t, step):
        with dropout_calls() as calls: t.code(x)
        seen['calls'] = list(calls)
        return {}
    pairs = task.training_data(ds, {'backbone': 'vit_tiny8', 'weights': 'random', 'seed': 0, 'image_size': 32,
                                    'train': {'device': 'cpu', 'progress': 'none'}})
    Learner(task, pairs, tmp_path/'run', TrainConfig(max_steps=1, batch_size=2, device='cpu', progress='none'),
            eval_fn=eval_fn).fit()
    assert seen['calls'] and not any(seen['calls']), seen


def test_stage_evaluation_and_loaded_run(tmp_path, dropout_calls, monkeypatch):
    "Each stage of a method in stages evaluates with dropout off; `load_run` gives the task in evaluation mode."
    import usseg.methods.run as R
    import toy_methods  # noqa: F401  (registers 'twostage', whose code has a Dropout2d, and 'bn_conv')
    orig, seen = R.evaluate, []
    def recorded(*a, **k):
        with dropout_calls() as calls: res = orig(*a, **k)
        seen.append(list(calls))
        return res
    monkeypatch.setattr(R, 'evaluate', recorded)
    run = train('twostage', 'synthetic', tmp_path/'data', tmp_path/'run', backbone='bn_conv', steps=2, device='cpu', progress='none',
                smoke=True, dataset_kw={'n_images': 8, 'n_classes': 5})
    assert len(seen) == 2 and all(c and not any(c) for c in seen), seen    # the end of each stage
    loaded = load_run(run.run_dir, device='cpu')
    assert not loaded.task.training and not loaded.task.drop.training
