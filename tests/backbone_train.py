"""A run that fine-tunes the last block of a small BatchNorm backbone, for `tests/test_learner_backbone.py`.

`BNConvBackbone` (tests/helpers.py) has a stem and two blocks, each conv + BatchNorm + ReLU. Its `block2` trains
(`Backbone.unfreeze(('block2',), bn=...)`), the rest stays frozen; a 1x1 head on top is trained with cross-entropy on
synthetic scenes with a random flip, on the CPU. It prints `checkpoint <step>` after each checkpoint, so a test can
kill the process between two of them.

    python tests/backbone_train.py RUN_DIR [--bn] [--resume] [--delay SECONDS]
"""
import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

import usseg  # noqa: F401  (compat shim first)
from usseg.core import set_seed
from usseg.data.synthetic import SyntheticScenes
from usseg.learner import Callback, Learner, Task, TrainConfig

from helpers import BNConvBackbone  # tests/helpers.py: this script's folder is on sys.path


class Flipped(torch.utils.data.Dataset):
    "Synthetic scenes with a random horizontal flip (the data path draws random numbers)."
    def __init__(self, ds): self.ds = ds
    def __len__(self): return len(self.ds)
    def __getitem__(self, i):
        it = self.ds[i]
        if torch.rand(()) < 0.5: return {**it, 'img': it['img'].flip(-1), 'label': it['label'].flip(-1)}
        return it


class FineTune(Task):
    "A 1x1 head on a backbone whose `block2` trains; cross-entropy on the labels."
    def __init__(self, backbone, n_classes:int, bn:bool, lr:float=1e-2, backbone_lr:float=5e-2):
        super().__init__()
        self.backbone = backbone.unfreeze(('block2',), bn=bn)
        self.checkpoint_exclude = ()  # the backbone trains: all of it goes into the checkpoint
        self.drop, self.head = nn.Dropout2d(0.1), nn.Conv2d(backbone.embed_dim, n_classes, 1)
        self.lr, self.backbone_lr = lr, backbone_lr
    def training_step(self, batch, step):
        img = batch['img']
        logits = F.interpolate(self.head(self.drop(self.backbone(img))), img.shape[-2:], mode='bilinear', align_corners=False)
        return {'loss': F.cross_entropy(logits, batch['label'], ignore_index=-1)}
    def configure_optimizers(self):
        return {'backbone': torch.optim.SGD([p for p in self.backbone.parameters() if p.requires_grad], lr=self.backbone_lr, momentum=0.9),
                'head': torch.optim.Adam(self.head.parameters(), lr=self.lr)}


class Report(Callback):
    def __init__(self, delay): self.delay = delay
    def on_step_end(self, learner):
        if self.delay: time.sleep(self.delay)
    def on_checkpoint(self, learner, path): print(f'checkpoint {learner.step}', flush=True)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument('run_dir')
    p.add_argument('--bn', action='store_true', help="the trained block's BatchNorm trains too")
    p.add_argument('--steps', type=int, default=12)
    p.add_argument('--resume', action='store_true')
    p.add_argument('--delay', type=float, default=0.0, help='seconds to sleep after each step')
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    set_seed(0)
    data = Flipped(SyntheticScenes('train', n_images=24, size=32, n_classes=5))
    task = FineTune(BNConvBackbone(16, seed=0), 5, a.bn)
    cfg = TrainConfig(max_steps=a.steps, batch_size=4, seed=0, save_every=4, log_every=2, n_samples=0, device='cpu', progress='none')
    Learner(task, data, a.run_dir, cfg, callbacks=[Report(a.delay)]).fit(resume=a.resume)


if __name__ == '__main__':
    main()
