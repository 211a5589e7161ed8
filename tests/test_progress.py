"""Long commands show progress on a terminal and print no progress-bar noise into a log (tqdm's rule: a bar only
when stderr is a terminal). Each command runs twice at toy size: under a pseudo-terminal, as a person at a
terminal runs it, and with stdout and stderr going to a file, as a log or CI does."""
import fcntl
import os
import pty
import re
import select
import struct
import shutil
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

USSEG = shutil.which('usseg') or str(Path(sys.executable).with_name('usseg'))
BAR = re.compile(r'\d+%\|')                                  # tqdm's "NN%|" (a bar drawn on the line)
REDRAW = re.compile(r'\r(?!\n)')                              # a carriage return that redraws a line (the terminal turns \n into \r\n)
ENV = {**os.environ, 'HF_HUB_OFFLINE': '1', 'OMP_NUM_THREADS': '1', 'COLUMNS': '100'}


def in_terminal(args, timeout=600) -> tuple:
    "Run `usseg args` with stdin, stdout and stderr on a pseudo-terminal; returns (exit code, everything it wrote)."
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack('HHHH', 30, 100, 0, 0))   # 30 x 100: a fresh pty is 0 x 0, too narrow to draw on
    p = subprocess.Popen([USSEG, *map(str, args)], stdin=slave, stdout=slave, stderr=slave, env=ENV, close_fds=True)
    os.close(slave)
    out, t0 = b'', time.time()
    try:
        while time.time() - t0 < timeout:
            r, _, _ = select.select([master], [], [], 1.0)
            if r:
                try: chunk = os.read(master, 65536)
                except OSError: break                         # EIO: the child closed the terminal
                if not chunk: break
                out += chunk
            elif p.poll() is not None: break
        p.wait(timeout=30)
    finally:
        if p.poll() is None: p.kill()
        os.close(master)
    return p.returncode, out.decode('utf-8', 'replace')


def in_log(args, tmp_path) -> tuple:
    "Run `usseg args` with stdout and stderr going to a log file; returns (exit code, the log)."
    log = tmp_path/'log.txt'
    with open(log, 'w') as f:
        rc = subprocess.run([USSEG, *map(str, args)], stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, env=ENV, timeout=600).returncode
    return rc, log.read_text()


def check_both(make, tmp_path, expect: str):
    "A bar on the terminal, none in the log, and the command's own output (`expect`) in both; `make(tag)` gives the arguments."
    rc, term = in_terminal(make('term'))
    assert rc == 0, term[-2000:]
    assert BAR.search(term) and REDRAW.search(term), f'no progress bar on a terminal:\n{term[-2000:]}'
    rc, log = in_log(make('log'), tmp_path)
    assert rc == 0, log[-2000:]
    assert not BAR.search(log) and '\r' not in log, f'progress-bar noise in the log:\n{log[-2000:]}'
    assert expect in term and expect in log
    return term, log


DATA = ['--dataset', 'synthetic', '--n-images', '8', '--n-classes', '4', '--backbone', 'vit_tiny8', '--weights', 'random',
        '--image-size', '32', '--device', 'cpu', '--threads', '1']


@pytest.mark.timeout(900)
def test_train_and_evaluate_show_progress_only_on_a_terminal(tmp_path):
    train = lambda tag: ['train', 'probe', *DATA, '--data-root', tmp_path/'data', '--out', tmp_path/f'run_{tag}', '--steps', '4',
                         '--batch-size', '4', '--save-every', '0']
    term, log = check_both(train, tmp_path, 'run saved in')
    assert 'train:' in term and 'train:' not in log            # the training bar's label
    check_both(lambda tag: ['evaluate', tmp_path/'run_term', '--device', 'cpu'], tmp_path, 'mIoU')


@pytest.mark.timeout(600)
def test_baseline_shows_progress_only_on_a_terminal(tmp_path):
    check_both(lambda tag: ['baseline', *DATA, '--data-root', tmp_path/'data'], tmp_path, 'mIoU')
