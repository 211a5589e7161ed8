"""A method whose backbone trains, through `usseg.methods.train`, resumes exactly: `finetune` (tests/toy_methods.py,
a `SegTask` with `freeze_backbone=False` and `backbone_train=('block2',)`) is killed (SIGKILL) between two checkpoints
and resumed, and every tensor of the task's state (the backbone's weights and BatchNorm statistics included), the
optimisers' states and the metric log are bitwise the uninterrupted run's. The frozen layers did not move, the trained
block did, and its BatchNorm followed the method's rule: with `backbone_bn=False` its scale, shift and statistics
stayed, with `backbone_bn=True` they trained. `load_run` rebuilds the trained backbone from the checkpoint.

(Checked by planting each error in the library: with `SegTask.checkpoint_exclude` left at `('backbone',)` for a
backbone that trains, the resumed run refuses to continue (its backbone no longer matches the checkpoint's fingerprint)
and the checkpoint misses the backbone; with `SegTask.train` putting the whole backbone in evaluation mode, as it did
for a frozen one, the `backbone_bn=True` case fails (its statistics never move), and with `unfreeze` called without
`bn`, it fails too (its scale and shift never move).)
"""
import json
from pathlib import Path

import pytest
import torch

from usseg.learner import TIMING_KEYS, load_checkpoint
from usseg.methods import load_run, train

import toy_methods  # noqa: F401  (registers 'finetune' and 'bn_conv' here too)
from helpers import BNConvBackbone
from procs import kill_after, run_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT/'tests'/'method_backbone_train.py'


def records(run_dir):
    return [{k: v for k, v in json.loads(l).items() if k not in TIMING_KEYS} for l in (Path(run_dir)/'metrics.jsonl').read_text().splitlines()]


@pytest.mark.parametrize('bn', [False, True], ids=['bn_frozen', 'bn_trains'])
def test_method_with_trained_backbone_resumes_exactly(tmp_path, bn):
    flag = ['--bn'] if bn else []
    ref, d = tmp_path/'ref', tmp_path/'killed'
    run_script(SCRIPT, ref, *flag)
    kill_after(SCRIPT, d, 'checkpoint killed 4', *flag)
    assert load_checkpoint(d)['step'] == 4
    run_script(SCRIPT, d, '--resume', *flag)

    a, b = load_checkpoint(ref), load_checkpoint(d)
    assert a['step'] == b['step'] == 12
    init = {f'backbone.model.{k}': v for k, v in BNConvBackbone(16, seed=0).model.state_dict().items()}
    assert set(init) <= set(a['task']), 'the trained backbone is not in the checkpoint'
    assert a['task'].keys() == b['task'].keys()
    for k in a['task']: assert torch.equal(a['task'][k], b['task'][k]), k        # bitwise, BN statistics included
    assert set(a['optimizers']) == {'head', 'cluster_probe', 'linear_probe', 'backbone'}
    for name, opt in a['optimizers'].items():
        for i, st in opt['state'].items():
            for k, v in st.items(): assert torch.equal(v, b['optimizers'][name]['state'][i][k]), (name, i, k)
    assert records(ref) == records(d) and any(r['split'] == 'eval' for r in records(d))

    moved = {k for k, v in init.items() if not torch.equal(a['task'][k], v)}
    frozen = {k for k in init if not k.startswith('backbone.model.block2.')}
    assert not moved & frozen, f'frozen layers changed: {sorted(moved & frozen)}'
    assert 'backbone.model.block2.0.weight' in moved                              # the trained conv
    block2_bn = {f'backbone.model.block2.1.{t}' for t in ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')}
    assert (block2_bn & moved) == (block2_bn if bn else set()), sorted(block2_bn & moved)

    cfg = json.loads((d/'config.json').read_text())['task']['spec']['config']
    assert (cfg['freeze_backbone'], cfg['backbone_train'], cfg['backbone_bn']) == (False, ['block2'], bn)
    run = load_run(d, device='cpu')                                               # the trained backbone comes back
    for k, v in run.task.state_dict().items(): assert torch.equal(v, b['task'][k]), k


def test_resume_refuses_a_frozen_backbone(tmp_path):
    d = tmp_path/'run'
    run_script(SCRIPT, d)
    with pytest.raises(ValueError, match='trained with freeze_backbone=False, not True'):
        train('finetune', 'synthetic', f'{d}-data', d, backbone='bn_conv', device='cpu', progress='none', smoke=True, resume=True,
              config={'freeze_backbone': True}, dataset_kw={'n_images': 16, 'n_classes': 5})
