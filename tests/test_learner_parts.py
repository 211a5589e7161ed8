"""In-process checks of the learner's parts that the notebooks do not show: the fp16 GradScaler path, kept checkpoints,
loading weights, refusals on resume, the optimiser forms of the Task contract, TensorBoard and the tqdm bar."""
import sys
import types

import pytest
import torch
from torch import nn

import usseg.learner as L
from usseg.core import set_seed
from usseg.data.synthetic import SyntheticScenes
from usseg.learner import (TIMING_KEYS, Learner, NonFiniteLossError, ProgressBar, Task, TensorBoardLogger, TrainConfig,
                           load_checkpoint, load_task_state)

from helpers import ProbeTask, TinyFeatures

DATA = SyntheticScenes('train', n_images=16, size=24, n_classes=4)


@pytest.fixture(autouse=True)
def one_thread():
    "Tiny models run 10-40x faster on one thread when other jobs share the two cores (OpenMP threads spin-wait)."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def probe(seed=0, dim=8, backbone_seed=0):
    set_seed(seed)
    return ProbeTask(TinyFeatures(8, seed=backbone_seed), n_feats=8, n_classes=4, dim=dim, head='nonlinear', ema_decay=0.5)


def learner(run_dir, task=None, callbacks=(), data=DATA, **kw):
    cfg = TrainConfig(**{**dict(max_steps=6, batch_size=4, save_every=3, log_every=1, progress='none', n_samples=0), **kw})
    return Learner(task or probe(), data, run_dir, cfg, callbacks=list(callbacks))


def strip(h): return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in h]


class Vectors(Task):
    "A two-layer MLP on vectors with dropout (so the resumed run must also continue the random numbers)."
    def __init__(self):
        super().__init__(); set_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))
    def training_step(self, batch, step): return {'loss': (self.net(batch['x']).float() - batch['y']).pow(2).mean()}
    def configure_optimizers(self): return [torch.optim.Adam(self.parameters(), lr=1e-2)]

VECTORS = [{'x': torch.randn(8, generator=torch.Generator().manual_seed(i)), 'y': torch.tensor([float(i % 3)])} for i in range(16)]


def test_fp16_grad_scaler_path_resumes_exactly(tmp_path, monkeypatch):
    "fp16 autocast + GradScaler (allowed on CPU here by patching the device check): scaler state saved and resumed."
    monkeypatch.setattr(L, 'check_precision', lambda precision, device: None)
    kw = dict(data=VECTORS, precision='fp16', clip_grad_norm=1.0, init_scale=1024.0)
    full = learner(tmp_path/'full', Vectors(), **kw); full.fit()
    ck = load_checkpoint(tmp_path/'full')
    assert ck['scaler']['scale'] == 1024.0 and ck['scaler']['_growth_tracker'] == 6
    learner(tmp_path/'part', Vectors(), max_steps=3, **kw).fit()
    rest = learner(tmp_path/'part', Vectors(), **kw); rest.fit(resume=True)
    b = load_checkpoint(tmp_path/'part')
    for k in ck['task']: assert torch.equal(ck['task'][k], b['task'][k]), k
    assert ck['scaler'] == b['scaler'] and strip(full.history) == strip(rest.history)


class Overflow(Task):
    "A linear map whose fp16 gradients overflow: the scaler must skip the step and halve its scale."
    def __init__(self):
        super().__init__(); self.lin = nn.Linear(4, 4)
    def training_step(self, batch, step):
        y = self.lin(batch['x'])  # fp16 under autocast
        return {'loss': y.float().mean()*6e4}
    def configure_optimizers(self): return [torch.optim.SGD(self.parameters(), lr=0.1)]


def test_fp16_overflow_skips_the_step(tmp_path, monkeypatch):
    monkeypatch.setattr(L, 'check_precision', lambda precision, device: None)
    data = [{'x': torch.ones(4)} for _ in range(4)]
    task = Overflow(); w0 = task.lin.weight.detach().clone()
    lrn = learner(tmp_path/'r', task, data=data, precision='fp16', max_steps=1).setup()
    lrn.train_step({'x': torch.ones(4, 4)})
    assert lrn.scaler.get_scale() == 2.**15 and torch.equal(task.lin.weight, w0)


class SqrtZero(Task):
    "A finite loss (0) with a NaN gradient (d sqrt(x)/dx at 0, times 0)."
    def __init__(self):
        super().__init__(); self.w = nn.Parameter(torch.ones(3))
    def training_step(self, batch, step): return {'loss': torch.sqrt(((self.w - self.w.detach())**2).sum())}
    def configure_optimizers(self): return torch.optim.SGD([self.w], lr=0.1)


def test_non_finite_gradient_norm_stops(tmp_path):
    data = [{'x': torch.zeros(1)} for _ in range(4)]
    with pytest.raises(NonFiniteLossError, match='gradient norm is nan at step 0'):
        learner(tmp_path/'r', SqrtZero(), data=data, clip_grad_norm=1.0).fit()


def test_kept_checkpoints_and_loading_weights(tmp_path):
    lrn = learner(tmp_path/'r', max_steps=12, save_every=3, keep_every=6); lrn.fit()
    assert sorted(p.name for p in (tmp_path/'r'/'checkpoints').iterdir()) == ['last.pt', 'step_0000006.pt', 'step_0000012.pt']
    fresh = probe(seed=1)
    ck = load_task_state(fresh, tmp_path/'r')
    assert ck['step'] == 12 and torch.equal(fresh.probe.weight, lrn.task.probe.weight)
    assert torch.equal(fresh.ema.module.linear.weight, lrn.task.ema.module.linear.weight)
    assert 'backbone.net.0.weight' not in ck['task']  # the frozen backbone is left out
    with pytest.raises(ValueError, match='does not fit ProbeTask'): load_task_state(probe(dim=6), tmp_path/'r')
    with pytest.raises(FileNotFoundError, match='no checkpoint at'): load_checkpoint(tmp_path/'nowhere')
    torch.save({'a': 1}, tmp_path/'other.pt')
    with pytest.raises(ValueError, match='not a usseg learner checkpoint'): load_checkpoint(tmp_path/'other.pt')


def test_resume_refuses_another_backbone_or_dataset(tmp_path):
    learner(tmp_path/'r', max_steps=3).fit()
    with pytest.raises(ValueError, match='fingerprint mismatch'): learner(tmp_path/'r', probe(backbone_seed=1)).fit(resume=True)
    small = SyntheticScenes('train', n_images=12, size=24, n_classes=4)
    with pytest.raises(ValueError, match='the training data has 12 items but the checkpoint was trained on 16'):
        learner(tmp_path/'r', data=small).fit(resume=True)
    learner(tmp_path/'r').fit(resume=True)  # what did not change resumes


def test_resume_true_without_checkpoint_starts_fresh(tmp_path):
    a = learner(tmp_path/'a'); a.fit(resume=True)
    b = learner(tmp_path/'b'); b.fit()
    assert strip(a.history) == strip(b.history)


class Forms(Task):
    "`configure_optimizers` in the accepted forms."
    def __init__(self, form):
        super().__init__(); self.a, self.b, self.form = nn.Linear(2, 1), nn.Linear(2, 1), form
    def training_step(self, batch, step): return {'loss': (self.a(batch['x']) + self.b(batch['x'])).pow(2).mean()}
    def configure_optimizers(self):
        oa, ob = torch.optim.Adam(self.a.parameters()), torch.optim.SGD(self.b.parameters(), lr=0.1)
        sa = torch.optim.lr_scheduler.StepLR(oa, 2)
        return {'one': oa, 'list': [oa, ob], 'dict': {'a': oa, 'b': ob}, 'pair': ([oa, ob], [sa]),
                'bad': 'adam'}[self.form]


@pytest.mark.parametrize('form,opts,scheds', [('one', ['0'], []), ('list', ['0', '1'], []), ('dict', ['a', 'b'], []),
                                              ('pair', ['0', '1'], ['0'])])
def test_optimiser_forms(tmp_path, form, opts, scheds):
    data = [{'x': torch.randn(2)} for _ in range(4)]
    lrn = learner(tmp_path/'r', Forms(form), data=data, max_steps=4); lrn.fit()
    assert sorted(lrn.optimizers) == opts and sorted(lrn.schedulers) == scheds
    assert sorted(load_checkpoint(tmp_path/'r')['optimizers']) == opts
    if scheds: assert lrn.optimizers['0'].param_groups[0]['lr'] == pytest.approx(1e-5)  # StepLR(2) twice over 4 steps


def test_bad_optimiser_form(tmp_path):
    with pytest.raises(TypeError, match='must return torch optimisers'):
        learner(tmp_path/'r', Forms('bad'), data=[{'x': torch.randn(2)}]*4).fit()


def test_tensorboard_logger_mirrors_records_and_purges_on_resume(tmp_path, monkeypatch):
    calls = []
    class FakeWriter:
        def __init__(self, log_dir, purge_step=None): calls.append(('open', purge_step))
        def add_scalar(self, tag, value, step): calls.append((tag, step))
        def close(self): calls.append(('close',))
    monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard', types.SimpleNamespace(SummaryWriter=FakeWriter))
    learner(tmp_path/'r', callbacks=[TensorBoardLogger()], max_steps=3).fit()
    assert calls[0] == ('open', None) and ('train/loss', 3) in calls and calls[-1] == ('close',)
    calls.clear()
    learner(tmp_path/'r', callbacks=[TensorBoardLogger()]).fit(resume=True)
    assert calls[0] == ('open', 4) and ('train/loss', 6) in calls and ('train/loss', 3) not in calls


def test_progress_bar(tmp_path, capsys):
    learner(tmp_path/'r', callbacks=[ProgressBar('bar')], max_steps=3).fit()
    assert '3/3' in capsys.readouterr().err
    learner(tmp_path/'s', callbacks=[ProgressBar('lines')], max_steps=2).fit()
    assert 'train step      2  acc' in capsys.readouterr().out


def test_helpers_match_the_learner_page(root):
    "The task in tests/helpers.py is the one nbs/40_learner.ipynb writes in the open (not exported): the copies must agree."
    import ast
    import inspect
    import json

    import helpers
    on_page = {}
    for c in json.loads((root/'nbs'/'40_learner.ipynb').read_text(encoding='utf-8'))['cells']:
        src = ''.join(c['source'])
        if c['cell_type'] != 'code': continue
        try: body = ast.parse(src).body
        except SyntaxError: continue  # shell and magic lines
        for node in body:
            if isinstance(node, ast.ClassDef) and node.name in helpers.LEARNER_PAGE: on_page[node.name] = ast.get_source_segment(src, node)
    assert sorted(on_page) == sorted(helpers.LEARNER_PAGE), f'the Learner page defines {sorted(on_page)}'
    for name, src in on_page.items():
        assert inspect.getsource(getattr(helpers, name)).strip() == src.strip(), f'{name} differs between tests/helpers.py and the Learner page'
