"""Training scripts run as separate processes, for the tests that kill a run and resume it.

`run_script` runs one to the end; `kill_after` starts one slowed down (`--delay`) and SIGKILLs it, with everything it
started (its process group), as soon as it prints a given line.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, 'PYTHONPATH': str(ROOT), 'HF_HUB_OFFLINE': '1', 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}


def run_script(script, run_dir, *args, timeout=300) -> str:
    "Run `script RUN_DIR args...` to the end; returns its stdout and stderr (a failure shows them)."
    r = subprocess.run([sys.executable, str(script), str(run_dir), *args], env=ENV, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout + r.stderr


def kill_after(script, run_dir, line, *args, delay=0.3, timeout=120):
    "Start `script RUN_DIR --delay DELAY args...` and SIGKILL it as soon as it prints a line that contains `line`."
    p = subprocess.Popen([sys.executable, str(script), str(run_dir), '--delay', str(delay), *args], env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out, t0 = [], time.time()
    try:
        for got in p.stdout:
            out.append(got)
            if line in got: break
            assert time.time() - t0 < timeout, ''.join(out)
        else: raise AssertionError(f'the run ended before printing {line!r}:\n' + ''.join(out))
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        p.stdout.close()


def records(run_dir) -> list:
    "The lines of a run's `metrics.jsonl` without the timing keys (what two equal runs share bit for bit)."
    from usseg.learner import TIMING_KEYS
    return [{k: v for k, v in json.loads(l).items() if k not in TIMING_KEYS} for l in (Path(run_dir)/'metrics.jsonl').read_text().splitlines()]


def assert_same_stage(ref, d, stage:str, step:int):
    "The checkpoint (step, weights, optimiser states) and the log of `stage` in run `d` are bitwise run `ref`'s."
    import torch
    from usseg.learner import load_checkpoint
    ca, cb = load_checkpoint(Path(ref)/stage), load_checkpoint(Path(d)/stage)
    assert ca['step'] == cb['step'] == step
    assert ca['task'].keys() == cb['task'].keys()
    for k in ca['task']: assert torch.equal(ca['task'][k], cb['task'][k]), (stage, k)
    for name, opt in ca['optimizers'].items():
        for i, st in opt['state'].items():
            for k, v in st.items(): assert torch.equal(v, cb['optimizers'][name]['state'][i][k]), (stage, name, i, k)
    assert records(Path(ref)/stage) == records(Path(d)/stage)
