"""Two DDP processes (torchrun, gloo, CPU) follow a single process on the same global batch.

Each of the two processes loads 4 of the 8 images of every global batch; DDP averages their gradients. The
loss is a mean over equally many pixels per process (no ignored pixels in these scenes) and the head has no
dropout, so the two runs differ only by float rounding (the order of the sums). Measured on this machine after
20 Adam steps: at most 3e-8 absolute on the weights and 4e-8 relative on the logged values; the tolerances (1e-6)
leave room for other CPUs and nothing more.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from usseg.core import set_seed
from usseg.learner import TIMING_KEYS, load_checkpoint

from helpers import ProbeTask, TinyFeatures

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT/'tests'/'learner_train.py'
ENV = {**os.environ, 'PYTHONPATH': str(ROOT), 'HF_HUB_OFFLINE': '1', 'OMP_NUM_THREADS': '1'}
ARGS = ['--steps', '20', '--batch-size', '8', '--save-every', '10', '--log-every', '2', '--eval-every', '10', '--dropout', '0']


def records(run_dir, split):
    lines = (Path(run_dir)/'metrics.jsonl').read_text().splitlines()
    return [{k: v for k, v in json.loads(l).items() if k not in TIMING_KEYS} for l in lines if json.loads(l)['split'] == split]


def test_two_processes_match_one(tmp_path):
    one, two = tmp_path/'one', tmp_path/'two'
    r = subprocess.run([sys.executable, str(SCRIPT), str(one), *ARGS], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                        str(SCRIPT), str(two), *ARGS], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    cfg = json.loads((two/'config.json').read_text())
    assert cfg['world_size'] == 2 and cfg['batch_per_process'] == 4 and cfg['train']['batch_size'] == 8
    a, b = load_checkpoint(one), load_checkpoint(two)
    assert a['step'] == b['step'] == 20 and b['world_size'] == 2 and len(b['rng']) == 2
    for k in a['task']:
        torch.testing.assert_close(b['task'][k], a['task'][k], rtol=1e-6, atol=1e-6, msg=lambda m: f'{k}: {m}')
    assert (a['task']['probe.weight'] - initial_probe_weight()).abs().max() > 1e-3  # training moved the weights

    ta, tb = records(one, 'train'), records(two, 'train')
    assert [r['step'] for r in ta] == [r['step'] for r in tb] == list(range(2, 21, 2))  # rank 0 alone writes: no duplicates
    for x, y in zip(ta, tb):
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], float): assert abs(x[k] - y[k]) <= 1e-6*max(1.0, abs(x[k])), (x['step'], k, x[k], y[k])
            else: assert x[k] == y[k], (k, x[k], y[k])
    ea, eb = records(one, 'eval'), records(two, 'eval')
    assert [r['step'] for r in ea] == [r['step'] for r in eb] == [10, 20]
    for x, y in zip(ea, eb): assert abs(x['acc'] - y['acc']) < 0.05 and abs(x['miou'] - y['miou']) < 0.05


def initial_probe_weight():
    "The probe's weights before training, built as the script builds them."
    set_seed(0)
    return ProbeTask(TinyFeatures(16), n_feats=16, n_classes=5, dim=8, head='nonlinear', dropout=0.0).probe.weight.detach()


def torchrun(run_dir, *args):
    return subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                           str(SCRIPT), str(run_dir), *args], env=ENV, capture_output=True, text=True, timeout=300)


def test_parameters_without_gradient_are_named(tmp_path):
    "A trainable layer that no loss reads: the learner names it after the first step; find_unused_parameters lets it train."
    args = ['--steps', '4', '--batch-size', '8', '--save-every', '2', '--log-every', '2', '--eval-every', '4', '--unused']
    r = torchrun(tmp_path/'fails', *args)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-3000:]
    assert 'trainable parameters got no gradient in the first step (spare.weight, spare.bias)' in out, out[-3000:]
    assert 'find_unused_parameters=True' in out
    r = torchrun(tmp_path/'runs', *args, '--find-unused')
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert load_checkpoint(tmp_path/'runs')['step'] == 4
