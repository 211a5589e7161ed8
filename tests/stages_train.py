"""Two toy stages for `tests/test_stages.py`: stage `a` trains the learner's probe for 6 steps and writes `a/out.pt`
(its head's weights); stage `b` starts its head from `a/out.pt` and trains 6 more steps with another learning rate.

Each stage appends the step its Learner starts at to `<stage>/runs.txt` (the run counter), and prints
`checkpoint <stage> <step>` after each checkpoint, so a test can kill the process between two of them.

    python tests/stages_train.py RUN_DIR [--resume] [--delay SECONDS] [--dropout P]
    torchrun --standalone --nproc_per_node 2 tests/stages_train.py RUN_DIR ...
"""
import argparse
import time

import torch

import usseg  # noqa: F401  (compat shim first)
from usseg.core import atomic_save, set_seed
from usseg.data.synthetic import SyntheticScenes
from usseg.learner import Callback, Learner, TrainConfig
from usseg.learner.stages import run_stages

from helpers import ProbeTask, TinyFeatures  # tests/helpers.py: this script's folder is on sys.path


class Report(Callback):
    "Record where the stage's run starts, print each checkpoint, and sleep after each step."
    def __init__(self, stage, delay): self.stage, self.delay = stage, delay
    def on_fit_start(self, learner):
        if not learner.is_main: return
        with open(learner.run_dir/'runs.txt', 'a') as f: f.write(f'{learner.step}\n')
    def on_step_end(self, learner):
        if self.delay: time.sleep(self.delay)
    def on_checkpoint(self, learner, path): print(f'checkpoint {self.stage} {learner.step}', flush=True)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument('run_dir')
    p.add_argument('--resume', action='store_true')
    p.add_argument('--delay', type=float, default=0.0, help='seconds to sleep after each step')
    p.add_argument('--dropout', type=float, default=0.1)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    data = SyntheticScenes('train', n_images=16, size=32, n_classes=5)

    def learner(ctx, task):
        cfg = TrainConfig(max_steps=6, batch_size=4, seed=0, save_every=2, log_every=2, n_samples=0, device='cpu', progress='none')
        return Learner(task, data, ctx.dir, cfg, callbacks=[Report(ctx.name, a.delay)])

    def stage_a(ctx):
        set_seed(0)  # a stage seeds what it builds: on resume, the stages before it did not run
        task = ProbeTask(TinyFeatures(16), n_feats=16, n_classes=5, dim=8, dropout=a.dropout, lr_head=ctx.settings['lr'])
        learner(ctx, task).fit(resume=ctx.resume)
        if ctx.dist.is_main: atomic_save({'head': task.head.state_dict()}, ctx.dir/'out.pt')  # one process writes
        return {'out': ctx.output('out.pt')}

    def stage_b(ctx):
        set_seed(1)
        task = ProbeTask(TinyFeatures(16), n_feats=16, n_classes=5, dim=8, dropout=a.dropout, lr_head=ctx.settings['lr'])
        task.head.load_state_dict(torch.load(ctx.input('a', 'out'), weights_only=True)['head'])
        learner(ctx, task).fit(resume=ctx.resume)
        return {'checkpoint': ctx.output('checkpoints/last.pt')}

    run_stages(a.run_dir, {'a': stage_a, 'b': stage_b}, {'a': {'lr': 1e-3}, 'b': {'lr': 5e-4}}, resume=a.resume, device='cpu')


if __name__ == '__main__':
    main()
