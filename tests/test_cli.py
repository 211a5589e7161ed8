"""The installed `usseg` command: the demo runs, bad arguments give one line and write nothing."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

USSEG = shutil.which('usseg') or str(Path(sys.executable).with_name('usseg'))


def run(*args, cwd=None):
    return subprocess.run([USSEG, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_version():
    r = run('--version')
    assert r.returncode == 0 and r.stdout.startswith('usseg ')


def test_demo_writes_figure(tmp_path):
    r = run('demo', '--out', str(tmp_path/'out'), '--n-images', '3', '--size', '48')
    assert r.returncode == 0, r.stderr
    png = tmp_path/'out'/'scenes.png'
    assert png.read_bytes()[:4] == b'\x89PNG'
    assert 'sky' in r.stdout


@pytest.mark.parametrize('args', [['demo', '--size', '4'], ['demo', '--n-images', '0'], ['demo', '--size', 'x'],
                                  ['demo', '--bogus'], ['nope'], []])
def test_bad_arguments_one_line_nothing_written(tmp_path, args):
    r = run(*args, cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and 'error' in lines[0]
    assert list(tmp_path.iterdir()) == []
