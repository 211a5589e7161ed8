"""A backbone that trains resumes exactly: a run that fine-tunes the last block of a small BatchNorm backbone is
killed (SIGKILL) between two checkpoints and resumed, and every tensor of the task's state (the backbone's weights
and BatchNorm statistics included) is bitwise the uninterrupted run's. The frozen layers did not move; the trained
block did, and its BatchNorm followed the rule it was given: with `bn=False` its scale, shift and statistics stayed,
with `bn=True` they trained.
"""
import json
from pathlib import Path

import pytest
import torch

from usseg.learner import TIMING_KEYS, load_checkpoint

from helpers import BNConvBackbone
from procs import kill_after, run_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT/'tests'/'backbone_train.py'


def run(run_dir, *args): return run_script(SCRIPT, run_dir, *args)


def kill(run_dir, line, *args): kill_after(SCRIPT, run_dir, line, *args)


def records(run_dir):
    return [{k: v for k, v in json.loads(l).items() if k not in TIMING_KEYS} for l in (Path(run_dir)/'metrics.jsonl').read_text().splitlines()]


@pytest.mark.parametrize('bn', [False, True], ids=['bn_frozen', 'bn_trains'])
def test_trained_backbone_resumes_exactly(tmp_path, bn):
    flag = ['--bn'] if bn else []
    ref, d = tmp_path/'ref', tmp_path/'killed'
    run(ref, *flag)
    kill(d, 'checkpoint 4', *flag)
    assert load_checkpoint(d)['step'] == 4
    run(d, '--resume', *flag)

    a, b = load_checkpoint(ref), load_checkpoint(d)
    assert a['step'] == b['step'] == 12
    init = {f'backbone.model.{k}': v for k, v in BNConvBackbone(16, seed=0).model.state_dict().items()}
    assert set(init) <= set(a['task']), 'the trained backbone is not in the checkpoint'
    assert a['task'].keys() == b['task'].keys()
    for k in a['task']: assert torch.equal(a['task'][k], b['task'][k]), k        # bitwise, BN statistics included
    for name, opt in a['optimizers'].items():
        for i, st in opt['state'].items():
            for k, v in st.items(): assert torch.equal(v, b['optimizers'][name]['state'][i][k]), (name, i, k)
    assert records(ref) == records(d)

    moved = {k for k, v in init.items() if not torch.equal(a['task'][k], v)}
    frozen = {k for k in init if not k.startswith('backbone.model.block2.')}
    assert not moved & frozen, f'frozen layers changed: {sorted(moved & frozen)}'
    assert 'backbone.model.block2.0.weight' in moved                              # the trained conv
    block2_bn = {f'backbone.model.block2.1.{t}' for t in ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')}
    assert (block2_bn & moved) == (block2_bn if bn else set()), sorted(block2_bn & moved)
