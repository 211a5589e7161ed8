"""Toy methods registered for the tests of the method side of the house: a method whose backbone trains
(`FineTuneMethod`, `tests/test_methods_backbone.py`) and a method in two stages (`TwoStageMethod`,
`tests/test_methods_stages.py`). Importing this module registers them (`finetune`, `twostage`) and the small BatchNorm
backbone they train on (`bn_conv`, `tests/helpers.py:BNConvBackbone`), as a user registers their own.

Both are real methods, not stubs: `FineTuneMethod` trains a code (a 1x1 conv on the backbone's features) with a
cross-entropy through a classifier on the code, so the gradient reaches the backbone's trained block; its probes are
`SegTask`'s. `TwoStageMethod` trains the same code in a `pretrain` stage, then starts from its weights and trains only
the probes in a `probe` stage.
"""
import time
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from usseg.backbones import register_backbone
from usseg.learner import Callback, load_task_state
from usseg.methods import register_method
from usseg.methods.base import MethodConfig, SegTask

from helpers import BNConvBackbone

#: Seconds each training step sleeps (set by the scripts' `--delay`, so a test can kill a run between checkpoints).
DELAY = 0.0


def bn_conv(seed:int=0) -> BNConvBackbone: return BNConvBackbone(16, seed=seed)


class Report(Callback):
    "Append the step a Learner run starts at to its `runs.txt`, print `checkpoint <folder> <step>` after each checkpoint, sleep `DELAY` after each step."
    def on_fit_start(self, learner):
        with open(learner.run_dir/'runs.txt', 'a') as f: f.write(f'{learner.step}\n')
    def on_step_end(self, learner):
        if DELAY: time.sleep(DELAY)
    def on_checkpoint(self, learner, path): print(f'checkpoint {learner.run_dir.name} {learner.step}', flush=True)


@dataclass
class FineTuneConfig(MethodConfig):
    "A toy setting: a 5-channel code on `bn_conv`, whose `block2` trains (SGD)."
    dataset: str = 'synthetic'
    dim: int = 8
    lr: float = 1e-2
    backbone_lr: float|None = 5e-2
    freeze_backbone: bool = False
    backbone_train: tuple = ('block2',)
    batch_size: int = 4
    max_steps: int = 12
    image_size: int = 32
    source: str = 'tests/toy_methods.py'
    paper: ClassVar[str] = 'finetune'

    @classmethod
    def smoke(cls): return cls()


class FineTuneMethod(SegTask):
    "A code on a backbone that trains, supervised through a classifier on the code; the probes as every method."
    name = 'finetune'
    Config = FineTuneConfig

    def __init__(self, backbone, n_classes:int, dim:int, extra_clusters:int=0, cfg=None):
        super().__init__(backbone, n_classes, dim, extra_clusters, cfg)
        self.drop = nn.Dropout2d(cfg.dropout)
        self.head = nn.Conv2d(backbone.embed_dim, dim, 1)
        self.classifier = nn.Conv2d(dim, n_classes, 1)

    def code(self, img): return self.head(self.drop(self.features(img)))

    def training_step(self, batch, step):
        img, code = batch['img'], self.code(batch['img'])
        logits = F.interpolate(self.classifier(code), img.shape[-2:], mode='bilinear', align_corners=False)
        ce = F.cross_entropy(logits, batch['label'], ignore_index=-1)
        probes = self.probe_losses(code, batch['label'])
        return {'loss': ce + probes['cluster_loss'] + probes['linear_loss'], 'ce': ce.detach(), **{k: v.detach() for k, v in probes.items()}}

    def configure_optimizers(self):
        return {'head': torch.optim.Adam([*self.head.parameters(), *self.classifier.parameters()], lr=self.cfg.lr),
                **self.probe_optimizers(self.cfg.cluster_lr, self.cfg.linear_lr),
                **self.backbone_optimizer(torch.optim.SGD, momentum=0.9)}


@dataclass
class TwoStageConfig(FineTuneConfig):
    "The same code on a frozen `bn_conv`; 6 steps per stage, the probe stage at its own learning rate."
    freeze_backbone: bool = True
    max_steps: int = 6
    probe_lr: float = 2e-2
    paper: ClassVar[str] = 'twostage'


class TwoStageMethod(FineTuneMethod):
    "Stage `pretrain` trains the code (as `finetune`, with a frozen backbone); stage `probe` starts from it and trains the probes only."
    name, Config = 'twostage', TwoStageConfig
    stages = ('pretrain', 'probe')
    stage = 'pretrain'

    def training_step(self, batch, step):
        if self.stage == 'pretrain': return super().training_step(batch, step)
        with torch.no_grad(): code = self.code(batch['img'])
        probes = self.probe_losses(code, batch['label'])
        return {'loss': probes['cluster_loss'] + probes['linear_loss'], **{k: v.detach() for k, v in probes.items()}}

    def configure_optimizers(self):
        if self.stage == 'pretrain': return super().configure_optimizers()
        return self.probe_optimizers(self.cfg.probe_lr, self.cfg.probe_lr)

    def run_stage(self, name, spec, ctx):
        self.stage = name
        if name == 'probe': load_task_state(self, ctx.input('pretrain', 'checkpoint'))   # read from its file: on resume stage 1 did not run
        data = self.training_data(spec.split_dataset(spec.train_split, train=True), asdict(spec))
        self.fit_stage(ctx, data, callbacks=[Report()])
        return {'checkpoint': ctx.output('checkpoints/last.pt')}


register_backbone('bn_conv', bn_conv, used_by='tests: a small BatchNorm backbone')
register_method('finetune', FineTuneMethod)
register_method('twostage', TwoStageMethod)
