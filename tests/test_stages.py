"""A run in two stages, killed (SIGKILL) in its first stage and, separately, in its second, then resumed: the finished
stage runs exactly once, the stopped one resumes at its checkpoint step, and the result is bitwise the uninterrupted
run's (both stages' weights, optimiser states, the output file between them and the metric logs).

`tests/stages_train.py` holds the two stages: `a` trains 6 steps and writes `a/out.pt`; `b` starts from it and trains
6 steps. Each appends the step its run starts at to `<stage>/runs.txt`, the count of how often it ran.
"""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from usseg.learner import load_checkpoint
from usseg.learner.stages import read_stages

from procs import ENV, assert_same_stage, kill_after, run_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT/'tests'/'stages_train.py'


def run(run_dir, *args): return run_script(SCRIPT, run_dir, *args)


def kill(run_dir, line, *args): kill_after(SCRIPT, run_dir, line, *args)


def runs(run_dir, stage): return [int(s) for s in (Path(run_dir)/stage/'runs.txt').read_text().split()]




def assert_same_run(ref, d):
    "Both stages' checkpoints, the file between them and the logs are bitwise the reference's."
    for s in 'ab':
        assert_same_stage(ref, d, s, 6)
    oa, ob = (torch.load(x/'a'/'out.pt', weights_only=True)['head'] for x in (ref, d))
    for k in oa: assert torch.equal(oa[k], ob[k]), k
    rec = read_stages(d)['stages']
    assert [rec[s]['status'] for s in 'ab'] == ['done', 'done']
    assert rec['a']['outputs'] == {'out': 'a/out.pt'} and rec['b']['outputs'] == {'checkpoint': 'b/checkpoints/last.pt'}


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp('ref')/'run'
    run(d)
    assert runs(d, 'a') == [0] and runs(d, 'b') == [0]
    # the two stages learned something different: b started from a's head and moved it
    ha = torch.load(d/'a'/'out.pt', weights_only=True)['head']
    hb = load_checkpoint(d/'b')['task']
    assert all((hb[f'head.{k}'] - v).abs().max() > 1e-5 for k, v in ha.items())
    return d


def test_killed_in_first_stage(reference, tmp_path):
    d = tmp_path/'run'
    kill(d, 'checkpoint a 4')
    rec = read_stages(d)['stages']
    assert (rec['a']['status'], rec['b']['status']) == ('running', 'pending') and not (d/'a'/'out.pt').exists()
    assert load_checkpoint(d/'a')['step'] == 4
    out = run(d, '--resume')
    assert runs(d, 'a') == [0, 4] and runs(d, 'b') == [0]
    assert 'stage a: resuming' in out and 'stage b: starting' in out
    assert_same_run(reference, d)


def test_killed_in_second_stage(reference, tmp_path):
    d = tmp_path/'run'
    kill(d, 'checkpoint b 4')
    rec = read_stages(d)['stages']
    assert (rec['a']['status'], rec['b']['status']) == ('done', 'running')
    out = run(d, '--resume')
    assert runs(d, 'a') == [0], 'the finished stage ran again'
    assert runs(d, 'b') == [0, 4]
    assert 'stage a: done, skipped' in out and 'stage b: resuming' in out
    assert_same_run(reference, d)
    assert read_stages(d)['stages']['a']['attempts'] == 1 and read_stages(d)['stages']['b']['attempts'] == 2


def test_two_processes(tmp_path):
    "Under torchrun (2 gloo processes) the stages run in step: each finishes before the next starts, rank 0 keeps the record."
    one, two = tmp_path/'one', tmp_path/'two'
    run(one, '--dropout', '0')
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', str(SCRIPT), str(two),
                        '--dropout', '0'], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert runs(two, 'a') == [0] and runs(two, 'b') == [0]
    assert [s['status'] for s in read_stages(two)['stages'].values()] == ['done', 'done']
    assert load_checkpoint(two/'b')['world_size'] == 2
    a, b = load_checkpoint(one/'b')['task'], load_checkpoint(two/'b')['task']
    for k in a: torch.testing.assert_close(b[k], a[k], rtol=1e-6, atol=1e-6, msg=lambda m: f'{k}: {m}')  # as test_learner_ddp.py
