"""A toy MaskContrast run through `usseg.methods.train`, for `tests/test_methods_maskcontrast.py`: the smoke setting on
16 synthetic scenes with a random EfficientNet-Lite0 (stride 8), 6 contrastive steps and 4 probe steps, checkpoints
every 2 steps. Prints `checkpoint <stage> <step>` after each checkpoint (so a test can kill the process between two)
and appends the step each stage's Learner starts at to `<stage>/runs.txt`.

    python tests/maskcontrast_train.py RUN_DIR [--resume] [--delay SECONDS]
"""
import argparse
import sys
import time

import usseg  # noqa: F401  (compat shim first)
from usseg.core import set_threads
from usseg.learner import Callback
from usseg.methods import train

DELAY = 0.0


class Report(Callback):
    def on_fit_start(self, learner):
        with open(learner.run_dir/'runs.txt', 'a') as f: f.write(f'{learner.step}\n')
    def on_step_end(self, learner):
        if DELAY: time.sleep(DELAY)
    def on_checkpoint(self, learner, path): print(f'checkpoint {learner.run_dir.name} {learner.step}', flush=True)


def main(argv=None):
    global DELAY
    p = argparse.ArgumentParser()
    p.add_argument('run_dir')
    p.add_argument('--resume', action='store_true')
    p.add_argument('--delay', type=float, default=0.0)
    a = p.parse_args(argv)
    DELAY = a.delay
    set_threads(1)
    train('maskcontrast', 'synthetic', f'{a.run_dir}-data', a.run_dir, backbone='efficientnet_lite0_s8', weights='random', smoke=True,
          steps=6, device='cpu', progress='none', save_every=2, resume=a.resume, callbacks=[Report()],
          config={'probe_steps': 4}, dataset_kw={'n_images': 16, 'n_classes': 5})
    return 0


if __name__ == '__main__':
    sys.exit(main())
