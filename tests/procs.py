"""Training scripts run as separate processes, for the tests that kill a run and resume it.

`run_script` runs one to the end; `kill_after` starts one slowed down (`--delay`) and SIGKILLs it, with everything it
started (its process group), as soon as it prints a given line.
"""
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
