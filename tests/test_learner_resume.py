"""A training process killed mid-run (SIGKILL) or stopped by SIGTERM resumes to bitwise the same run; SIGINT (Ctrl-C)
and SIGTERM save a checkpoint at the step they interrupt.

The reference runs 40 steps without interruption and without DataLoader workers. The interrupted runs use two
workers, so this also checks that the data (with random augmentations) does not depend on the number of workers.
On one CPU thread every operation is deterministic, so the comparison is exact: weights, EMA, optimiser and
scheduler states, random-generator states and every logged number (timing fields aside).
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from usseg.learner import TIMING_KEYS, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT/'tests'/'learner_train.py'
ENV = {**os.environ, 'PYTHONPATH': str(ROOT), 'HF_HUB_OFFLINE': '1', 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}
STEPS = ['--steps', '40', '--save-every', '10', '--log-every', '5', '--eval-every', '20']


def run(run_dir, *args):
    r = subprocess.run([sys.executable, str(SCRIPT), str(run_dir), *STEPS, *args], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def launch(run_dir, *args):
    "Start a training process in its own process group (so its DataLoader workers can be killed with it)."
    return subprocess.Popen([sys.executable, str(SCRIPT), str(run_dir), *STEPS, *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for_line(proc, text, timeout=120):
    "Read the process's output until a line contains `text`; returns everything read."
    out, t0 = [], time.time()
    for line in proc.stdout:
        out.append(line)
        if text in line: return ''.join(out)
        assert time.time() - t0 < timeout, ''.join(out)
    raise AssertionError(f'process ended before printing {text!r}:\n' + ''.join(out))


def records(run_dir):
    lines = (Path(run_dir)/'metrics.jsonl').read_text().splitlines()
    return [{k: v for k, v in json.loads(l).items() if k not in TIMING_KEYS} for l in lines]


def assert_same_run(a, b):
    "Bitwise-equal final checkpoints and equal metric logs."
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca['step'] == cb['step'] == 40
    assert ca['task'].keys() == cb['task'].keys()
    for k in ca['task']: assert torch.equal(ca['task'][k], cb['task'][k]), k
    for name in ca['optimizers']:
        sa, sb = ca['optimizers'][name]['state'], cb['optimizers'][name]['state']
        for i in sa:
            for k in sa[i]: assert torch.equal(sa[i][k], sb[i][k]), (name, i, k)
    assert ca['schedulers'] == cb['schedulers']
    assert torch.equal(ca['rng'][0]['torch'], cb['rng'][0]['torch'])
    ra, rb = records(a), records(b)
    assert len(ra) == 10 and ra == rb  # 8 train records (every 5 steps) + 2 evaluations


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp('ref')/'run'
    run(d, '--num-workers', '0')
    return d


def test_sigkill_then_resume_is_exact(reference, tmp_path):
    d = tmp_path/'run'
    p = launch(d, '--num-workers', '2', '--delay', '0.15')
    try:
        wait_for_line(p, 'train step     15')  # the checkpoint of step 10 is on disk, the one of step 20 is not
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None: os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == -signal.SIGKILL
    assert load_checkpoint(d)['step'] == 10
    assert max(r['step'] for r in records(d)) >= 15  # records past the checkpoint: resume must drop them
    out = run(d, '--num-workers', '2', '--resume')
    assert 'train step     15' in out and 'train step     10' not in out  # continued from step 10
    assert_same_run(reference, d)


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT], ids=['SIGTERM', 'SIGINT'])
def test_signal_saves_checkpoint(reference, tmp_path, sig):
    "SIGTERM (a scheduler's preemption) and SIGINT (Ctrl-C) save a checkpoint at the step they interrupt."
    d = tmp_path/'run'
    p = launch(d, '--delay', '0.1')
    try:
        wait_for_line(p, 'train step     15')
        p.send_signal(sig)
        rest, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None: os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode != 0, rest
    assert f'training stopped by {sig.name} after step' in rest, rest
    step = int(rest.split(f'training stopped by {sig.name} after step ')[1].split(';')[0])
    assert 15 <= step < 40 and load_checkpoint(d)['step'] == step  # saved at the interruption, not only every 10 steps
    if sig == signal.SIGTERM:  # and the run continues exactly (SIGKILL above covers the same path for a crash)
        run(d, '--resume')
        assert_same_run(reference, d)
