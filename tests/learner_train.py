"""A small training run for the learner's process-level tests (resume after SIGKILL/SIGTERM, DDP under torchrun).

A linear probe with a trainable head on a tiny frozen conv net, on synthetic scenes, on the CPU. The dataset adds a
random flip and colour jitter drawn from `random`, NumPy and PyTorch, so the data path consumes all three generators.

    python tests/learner_train.py RUN_DIR [--steps N] [--resume] ...
    torchrun --standalone --nproc_per_node 2 tests/learner_train.py RUN_DIR ...
"""
import argparse
import random
import time

import numpy as np
import torch

import usseg  # noqa: F401  (compat shim first)
from usseg.core import set_seed
from usseg.data.synthetic import SyntheticScenes
from usseg.learner import Callback, Learner, ProgressBar, TrainConfig

from helpers import ProbeTask, TinyFeatures  # tests/helpers.py: this script's folder is on sys.path


class Augmented(torch.utils.data.Dataset):
    "Synthetic scenes with a random horizontal flip (torch), brightness (NumPy) and contrast (random)."
    def __init__(self, ds): self.ds, self.n_classes = ds, ds.n_classes
    def __len__(self): return len(self.ds)
    def __getitem__(self, i):
        it = self.ds[i]
        img, label = it['img'], it['label']
        if torch.rand(()) < 0.5: img, label = img.flip(-1), label.flip(-1)
        img = img*(1 + 0.2*(random.random() - 0.5)) + float(np.random.uniform(-0.1, 0.1))
        return {'img': img, 'label': label, 'index': i}


class Delay(Callback):
    "Sleep after each step, so a test can interrupt the run between two checkpoints."
    def __init__(self, seconds): self.seconds = seconds
    def on_step_end(self, learner): time.sleep(self.seconds)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument('run_dir')
    p.add_argument('--steps', type=int, default=40)
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--save-every', type=int, default=10)
    p.add_argument('--log-every', type=int, default=5)
    p.add_argument('--eval-every', type=int, default=20)
    p.add_argument('--num-workers', type=int, default=0)
    p.add_argument('--dropout', type=float, default=0.1)
    p.add_argument('--head', default='nonlinear')
    p.add_argument('--clip', type=float, default=1.0)
    p.add_argument('--delay', type=float, default=0.0, help='seconds to sleep after each step')
    p.add_argument('--resume', action='store_true')
    p.add_argument('--unused', action='store_true', help='add a trainable layer that no loss reads (DDP needs find_unused_parameters)')
    p.add_argument('--find-unused', action='store_true', help='TrainConfig(find_unused_parameters=True)')
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    set_seed(0)
    train = Augmented(SyntheticScenes('train', n_images=36, size=32, n_classes=5))
    val = SyntheticScenes('val', n_images=8, size=32, n_classes=5)
    task = ProbeTask(TinyFeatures(16), n_feats=16, n_classes=5, dim=8, head=a.head, dropout=a.dropout,
                     ema_decay=0.9, warmup=5, total=a.steps)
    if a.unused: task.spare = torch.nn.Linear(2, 2)
    cfg = TrainConfig(max_steps=a.steps, batch_size=a.batch_size, seed=0, clip_grad_norm=a.clip, num_workers=a.num_workers,
                      device='cpu', log_every=a.log_every, eval_every=a.eval_every, save_every=a.save_every, n_samples=0,
                      progress='lines', find_unused_parameters=a.find_unused)
    cbs = [ProgressBar('lines')] + ([Delay(a.delay)] if a.delay else [])
    Learner(task, train, a.run_dir, cfg, eval_fn=lambda t, step: t.evaluate(val), callbacks=cbs).fit(resume=a.resume)


if __name__ == '__main__':
    main()
