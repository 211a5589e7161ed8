"""README.md is generated, current, and its quickstart is the two commands CI relies on."""
import re
import subprocess
import sys


def quickstart_commands(readme: str) -> list:
    sec = readme.split('## Quickstart', 1)[1].split('\n## ', 1)[0]
    return [b.strip() for b in re.findall(r'```sh\n(.*?)```', sec, re.S)]


def test_readme_is_current(root):
    r = subprocess.run([sys.executable, str(root/'tools'/'readme.py'), '--check'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_quickstart_two_commands_and_ci_runs_the_test_one(root):
    cmds = quickstart_commands((root/'README.md').read_text())
    assert len(cmds) == 2, cmds
    assert all('\n' not in c for c in cmds), 'each quickstart step is one command line'
    assert 'usseg demo' in cmds[0] and 'constraints.txt' in cmds[0]
    ci = (root/'.ci'/'run').read_text()
    assert any(line.strip() == cmds[1] for line in ci.splitlines()), f'.ci/run does not call `{cmds[1]}`'
