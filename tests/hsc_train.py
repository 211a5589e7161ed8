"""`usseg train hsc ...` (the command line, in this process) on the smoke setting, for `tests/test_methods_hsc.py`.

The three stages of HSC run in turn: `cam` and `segmenter` train 4 steps each with a checkpoint every 2 steps, and
`pseudo_labels` writes one CAM file and one label file per training image. This script makes each of them say where
it is, so that a test can kill the process at a known point: a callback added to the learner's default callbacks
prints `checkpoint <stage> <step>` after each checkpoint, and the writer of the pseudo-label stage's files prints
`item <stage>/<folder> <i>` after each file; both then sleep `--delay` seconds. Neither changes what is computed.

    python tests/hsc_train.py RUN_DIR [--resume] [--redo STAGE] [--delay SECONDS] [--method hsc|cam]
"""
import argparse
import sys
import time
from pathlib import Path

import usseg  # noqa: F401  (compat shim first)
import usseg.learner.stages as stages
import usseg.methods.run as run
from usseg.cli import main as usseg_main
from usseg.learner import Callback

DELAY = 0.0


class Report(Callback):
    "Print `checkpoint <stage> <step>` after each checkpoint; sleep `DELAY` after each step."
    def on_step_end(self, learner):
        if DELAY: time.sleep(DELAY)
    def on_checkpoint(self, learner, path): print(f'checkpoint {learner.run_dir.name} {learner.step}', flush=True)


_callbacks, _save = run.default_callbacks, stages.atomic_save

def callbacks(cfg): return _callbacks(cfg) + [Report()]

def save(obj, path):
    "The stages module's atomic writer, then a line naming the item written."
    _save(obj, path)
    p = Path(path)
    print(f'item {p.parent.parent.name}/{p.parent.name} {int(p.stem)}', flush=True)
    if DELAY: time.sleep(DELAY)


def main(argv=None):
    global DELAY
    p = argparse.ArgumentParser()
    p.add_argument('run_dir')
    p.add_argument('--resume', action='store_true')
    p.add_argument('--redo', default=None)
    p.add_argument('--delay', type=float, default=0.0, help='seconds to sleep after each step and each item')
    p.add_argument('--method', default='hsc')
    a = p.parse_args(argv)
    DELAY = a.delay
    run.default_callbacks, stages.atomic_save = callbacks, save
    args = ['train', a.method, '--dataset', 'synthetic', '--data-root', f'{a.run_dir}-data', '--out', a.run_dir,
            '--backbone', 'efficientnet_lite0_s8', '--weights', 'random', '--smoke', '--device', 'cpu', '--n-images', '12',
            '--n-classes', '5', '--save-every', '2', '--threads', '1', '--eval-images', '6']
    args += ['--resume'] * a.resume + (['--redo', a.redo] if a.redo else [])
    return usseg_main(args)


if __name__ == '__main__':
    sys.exit(main())
