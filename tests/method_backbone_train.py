"""`usseg.methods.train` on a method whose backbone trains, for `tests/test_methods_backbone.py`.

`finetune` (tests/toy_methods.py) trains `block2` of the registered `bn_conv` backbone (tests/helpers.py) with a code
and its probes on synthetic scenes, on the CPU, 12 steps with a checkpoint every 4. It prints `checkpoint <run> <step>`
after each checkpoint, so a test can kill the process between two of them.

    python tests/method_backbone_train.py RUN_DIR [--bn] [--resume] [--delay SECONDS]
"""
import argparse

import torch

import usseg  # noqa: F401  (compat shim first)
from usseg.methods import train

import toy_methods  # registers 'finetune' and 'bn_conv' (this script's folder is on sys.path)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument('run_dir')
    p.add_argument('--bn', action='store_true', help="the trained block's BatchNorm trains too")
    p.add_argument('--resume', action='store_true')
    p.add_argument('--delay', type=float, default=0.0, help='seconds to sleep after each step')
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    toy_methods.DELAY = a.delay
    train('finetune', 'synthetic', f'{a.run_dir}-data', a.run_dir, backbone='bn_conv', steps=12, save_every=4, device='cpu',
          progress='none', smoke=True, resume=a.resume, config={'backbone_bn': True} if a.bn else None,
          dataset_kw={'n_images': 16, 'n_classes': 5}, callbacks=[toy_methods.Report()])


if __name__ == '__main__':
    main()
