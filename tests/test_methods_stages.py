"""A method in two stages, through `usseg train` (`--resume`, `--redo`): killed (SIGKILL) in its first stage and,
separately, in its second, then resumed, the finished stage runs exactly once, the stopped one resumes at its
checkpoint step, and the result is bitwise the uninterrupted run's (both stages' weights, optimiser states and metric
logs). `--redo probe` runs the second stage again and only it; `load_run` and `Run.step` read the last stage.

`tests/method_stages_train.py` runs `twostage` (tests/toy_methods.py): stage `pretrain` trains a code for 6 steps,
stage `probe` loads its checkpoint and trains the probes for 6 steps. Each stage appends the step its Learner starts at
to `<stage>/runs.txt`, the count of how often it ran.

(Checked by planting errors in the library: with `_train_stages` passing `resume=False` to `run_stages`, the resumed
runs fail ("already holds a run in stages"); with `Run.checkpoint_dir` returning the run folder, `usseg train` itself
fails at its end (`Run.step` finds no checkpoint); with `stage_settings` fingerprinting the data folder, the run copied
to another folder is refused by `--redo probe`.)
"""
import json
import shutil
from pathlib import Path

import pytest
import torch

from usseg.learner import load_checkpoint
from usseg.learner.stages import read_stages
from usseg.methods import load_run

import toy_methods  # noqa: F401  (registers 'twostage' here too, for load_run)
from procs import assert_same_stage, kill_after, run_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT/'tests'/'method_stages_train.py'
STAGES = ('pretrain', 'probe')


def runs(run_dir, stage): return [int(s) for s in (Path(run_dir)/stage/'runs.txt').read_text().split()]




def assert_same_run(ref, d):
    "Both stages' checkpoints and logs are bitwise the reference's."
    for s in STAGES:
        assert_same_stage(ref, d, s, 6)
    rec = read_stages(d)['stages']
    assert [rec[s]['status'] for s in STAGES] == ['done', 'done']
    assert rec['probe']['outputs'] == {'checkpoint': 'probe/checkpoints/last.pt'}


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp('ref')/'run'
    run_script(SCRIPT, d)
    assert runs(d, 'pretrain') == [0] and runs(d, 'probe') == [0]
    assert json.loads((d/'config.json').read_text())['task']['spec']['method'] == 'twostage'   # the run's config.json, as always
    a, b = load_checkpoint(d/'pretrain'), load_checkpoint(d/'probe')
    assert set(a['optimizers']) == {'head', 'cluster_probe', 'linear_probe'} and set(b['optimizers']) == {'cluster_probe', 'linear_probe'}
    assert torch.equal(a['task']['head.weight'], b['task']['head.weight'])                 # stage 2 started from stage 1's code ...
    assert not torch.equal(a['task']['linear_probe.weight'], b['task']['linear_probe.weight'])   # ... and trained the probes
    return d


def test_killed_in_first_stage(reference, tmp_path):
    d = tmp_path/'run'
    kill_after(SCRIPT, d, 'checkpoint pretrain 4')
    rec = read_stages(d)['stages']
    assert (rec['pretrain']['status'], rec['probe']['status']) == ('running', 'pending')
    assert load_checkpoint(d/'pretrain')['step'] == 4
    out = run_script(SCRIPT, d, '--resume')
    assert runs(d, 'pretrain') == [0, 4] and runs(d, 'probe') == [0]
    assert 'stage pretrain: resuming' in out and 'stage probe: starting' in out
    assert_same_run(reference, d)


def test_killed_in_second_stage(reference, tmp_path):
    d = tmp_path/'run'
    kill_after(SCRIPT, d, 'checkpoint probe 2')
    assert [read_stages(d)['stages'][s]['status'] for s in STAGES] == ['done', 'running']
    out = run_script(SCRIPT, d, '--resume')
    assert runs(d, 'pretrain') == [0] and runs(d, 'probe') == [0, 2]
    assert 'stage pretrain: done, skipped' in out and 'stage probe: resuming' in out
    assert_same_run(reference, d)
    run = load_run(d, device='cpu')                                    # the last stage's task
    assert (run.step, run.checkpoint_dir) == (6, d/'probe')
    for k, v in load_checkpoint(d/'probe')['task'].items(): assert torch.equal(run.task.state_dict()[k], v), k


def test_redo_a_stage(reference, tmp_path):
    d = tmp_path/'run'
    shutil.copytree(reference, d)
    shutil.copytree(reference.parent/'run-data', tmp_path/'run-data')
    out = run_script(SCRIPT, d, '--redo', 'probe')
    assert runs(d, 'pretrain') == [0] and runs(d, 'probe') == [0]      # the probe folder was made anew; pretrain did not run
    assert 'stage pretrain: done, skipped' in out and 'stage probe: starting' in out
    assert_same_run(reference, d)


def test_cli_refusals(tmp_path):
    from usseg.cli import main
    base = ['train', 'probe', '--dataset', 'synthetic', '--data-root', str(tmp_path/'data'), '--out', str(tmp_path/'r'),
            '--backbone', 'vit_tiny8', '--weights', 'random', '--smoke', '--device', 'cpu', '--n-images', '8']
    assert main([*base, '--redo', 'x']) == 2                          # a method in one stage has nothing to redo
    assert not (tmp_path/'r').exists()
