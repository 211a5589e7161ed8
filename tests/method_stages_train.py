"""`usseg train twostage ...` (the command line, in this process) on the toy method in two stages, for
`tests/test_methods_stages.py`.

`twostage` (tests/toy_methods.py) trains a code on a frozen `bn_conv` backbone for 6 steps in stage `pretrain`, then
starts from that checkpoint and trains the probes for 6 steps in stage `probe`; checkpoints every 2 steps. Each stage
appends the step its Learner starts at to `<stage>/runs.txt` and prints `checkpoint <stage> <step>` after each
checkpoint, so a test can kill the process between two of them.

    python tests/method_stages_train.py RUN_DIR [--resume] [--redo STAGE] [--delay SECONDS]
"""
import argparse
import sys

import usseg  # noqa: F401  (compat shim first)
from usseg.cli import main as usseg_main

import toy_methods  # registers 'twostage' and 'bn_conv' (this script's folder is on sys.path)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument('run_dir')
    p.add_argument('--resume', action='store_true')
    p.add_argument('--redo', default=None)
    p.add_argument('--delay', type=float, default=0.0, help='seconds to sleep after each step')
    a = p.parse_args(argv)
    toy_methods.DELAY = a.delay
    args = ['train', 'twostage', '--dataset', 'synthetic', '--data-root', f'{a.run_dir}-data', '--out', a.run_dir,
            '--backbone', 'bn_conv', '--smoke', '--device', 'cpu', '--n-images', '16', '--n-classes', '5', '--save-every', '2', '--threads', '1']
    args += ['--resume'] * a.resume + (['--redo', a.redo] if a.redo else [])
    return usseg_main(args)


if __name__ == '__main__':
    sys.exit(main())
