"""Test scaffolding for the learner: a small task the learner's tests, pages and benchmark train.

`ProbeTask` is a real task, not a stub: frozen features, a trainable 1x1-conv head (STEGO's "code") and a linear
probe trained with cross-entropy on the labels, with STEGO's two learning rates. `TinyFeatures` is a small random
conv net that stands in for a frozen ViT on a CPU. None of this is part of the `usseg` package: the methods'
real heads live in `usseg.models`, their tasks in `usseg.methods`.

`BNConvBackbone` is a small BatchNorm backbone for the tests of a backbone that trains.

`nbs/40_learner.ipynb` writes the first three classes in the open, without exporting them (its `Learner` checks
`isinstance(task, Task)` against the `Task` that page defines, so it cannot import these);
`tests/test_learner_parts.py::test_helpers_match_the_learner_page` checks that the two copies agree. Tests import this
module directly (`tests/conftest.py` puts this folder on `sys.path`), `tests/learner_train.py` runs from this folder,
and the other learner pages add the folder to `sys.path` in a hidden `#| exec_doc` cell.
"""
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from usseg.backbones import Backbone
from usseg.core import make_palette, show_grid
from usseg.learner import EMA, Task, isolated_rng, warmup_cosine

__all__ = ['TinyFeatures', 'ProbeHead', 'ProbeTask', 'BNConvBackbone']
#: The classes `nbs/40_learner.ipynb` writes in the open (checked against this module).
LEARNER_PAGE = ['TinyFeatures', 'ProbeHead', 'ProbeTask']


class TinyFeatures(nn.Module):
    "A small random conv net `(B, 3, H, W) -> (B, dim, H/4, W/4)`: a stand-in for a frozen ViT in tests."
    def __init__(self, dim:int=32, seed:int=0):
        super().__init__()
        with isolated_rng(seed):
            self.net = nn.Sequential(nn.Conv2d(3, dim, 3, 2, 1), nn.ReLU(), nn.Conv2d(dim, dim, 3, 2, 1), nn.ReLU(), nn.Conv2d(dim, dim, 1))
        self.n_feats = dim
    def forward(self, x): return self.net(x)


class ProbeHead(nn.Module):
    "STEGO's head: a linear 1×1 conv, plus (nonlinear) a 1×1 MLP, both on one dropout draw of the features."
    def __init__(self, n_feats:int, dim:int, kind:str='linear', dropout:float=0.1):
        super().__init__()
        if kind not in ('linear', 'nonlinear'): raise ValueError(f"head must be 'linear' or 'nonlinear' (got {kind!r})")
        self.drop = nn.Dropout2d(dropout)
        self.linear = nn.Conv2d(n_feats, dim, 1)
        self.mlp = nn.Sequential(nn.Conv2d(n_feats, n_feats, 1), nn.ReLU(), nn.Conv2d(n_feats, dim, 1)) if kind == 'nonlinear' else None
    def forward(self, f):  # f: (B, C, h, w) -> code (B, D, h, w)
        f = self.drop(f)
        return self.linear(f) if self.mlp is None else self.linear(f) + self.mlp(f)


class ProbeTask(Task):
    "Frozen features -> trainable head -> linear probe, trained with cross-entropy on the labels (two Adam optimisers)."
    checkpoint_exclude = ('backbone',)
    def __init__(self, backbone:nn.Module, # frozen: `(B, 3, H, W) -> (B, n_feats, h, w)`
                 n_feats:int, n_classes:int, dim:int=70, # code channels D (STEGO: 70)
                 head:str='linear', dropout:float=0.1,
                 lr_head:float=5e-4, lr_probe:float=5e-3, # STEGO's learning rates
                 ema_decay:float|None=None, # keep an EMA of the head (used by `predict` / `evaluate`)
                 warmup:int=0, total:int=0, # warm-up / cosine schedule for the head's lr (total=0: constant)
                ):
        super().__init__()
        self.backbone = backbone.requires_grad_(False).eval()
        self.head = ProbeHead(n_feats, dim, head, dropout)
        self.probe = nn.Conv2d(dim, n_classes, 1)
        self.ema = EMA(self.head, ema_decay) if ema_decay else None
        self._hp = dict(n_feats=n_feats, n_classes=n_classes, dim=dim, head=head, dropout=dropout, lr_head=lr_head,
                        lr_probe=lr_probe, ema_decay=ema_decay, warmup=warmup, total=total)
        self.n_classes = n_classes
    def hparams(self): return dict(self._hp)
    def train(self, mode:bool=True):
        super().train(mode); self.backbone.eval()  # the frozen backbone stays in eval mode
        return self
    def logits(self, img, ema:bool=False):  # img (B, 3, H, W) -> (B, K, H, W)
        with torch.no_grad(): f = self.backbone(img)  # (B, C, h, w)
        code = (self.ema if ema and self.ema is not None else self.head)(f)  # (B, D, h, w)
        return F.interpolate(self.probe(code), size=img.shape[-2:], mode='bilinear', align_corners=False)
    def training_step(self, batch, step):
        logits, label = self.logits(batch['img']), batch['label']
        loss = F.cross_entropy(logits, label, ignore_index=-1)
        with torch.no_grad():
            ok = label >= 0
            acc = 100*(logits.argmax(1)[ok] == label[ok]).float().mean()  # percent, like `evaluate`
        return {'loss': loss, 'acc': acc}
    def configure_optimizers(self):
        opts = {'head': torch.optim.Adam(self.head.parameters(), lr=self._hp['lr_head']),
                'probe': torch.optim.Adam(self.probe.parameters(), lr=self._hp['lr_probe'])}
        if not self._hp['total']: return opts
        return opts, {'head': warmup_cosine(opts['head'], self._hp['warmup'], self._hp['total'])}
    def after_step(self, step):
        if self.ema is not None: self.ema.update(self.head)
    @torch.no_grad()
    def predict(self, img, ema:bool=True):  # -> (B, H, W) class ids
        return self.logits(img, ema).argmax(1)
    @torch.no_grad()
    def evaluate(self, data:Dataset, batch_size:int=32, ema:bool=True) -> dict:
        "Pixel accuracy and mIoU (percent) of the probe on `data`, from a confusion matrix."
        dev, K, was_training = self.probe.weight.device, self.n_classes, self.training
        cm = torch.zeros(K, K, dtype=torch.int64)
        self.eval()
        for b in DataLoader(data, batch_size=batch_size):
            pred, y = self.predict(b['img'].to(dev), ema).cpu(), b['label']
            ok = y >= 0
            cm += torch.bincount(y[ok]*K + pred[ok], minlength=K*K).view(K, K)
        self.train(was_training)
        tp, fp, fn = cm.diag().double(), cm.sum(0).double() - cm.diag(), cm.sum(1).double() - cm.diag()
        iou = tp/(tp + fp + fn)
        return {'acc': float(100*tp.sum()/cm.sum()), 'miou': float(100*iou[~iou.isnan()].mean())}
    @torch.no_grad()
    def show_samples(self, batch):
        pal = make_palette(self.n_classes)
        pred = self.predict(batch['img']).cpu()
        return show_grid([list(batch['img'].cpu()), list(batch['label'].cpu()), list(pred)],
                         row_titles=['image', 'truth', 'probe'], palette=pal, size=1.1)


class BNConvBackbone(Backbone):
    "A small ResNet-like `Backbone` with BatchNorm, `(B, 3, H, W) -> (B, dim, H/4, W/4)`: stem, block1, block2 (fine-tuning tests)."
    def __init__(self, dim:int=16, seed:int=0):
        conv = lambda cin, stride: nn.Sequential(nn.Conv2d(cin, dim, 3, stride, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU())
        with isolated_rng(seed):
            model = nn.Sequential(OrderedDict(stem=conv(3, 2), block1=conv(dim, 1), block2=conv(dim, 2)))
            for m in model.modules():  # BatchNorm with non-trivial scale, shift and statistics, as a pretrained net has
                if isinstance(m, nn.BatchNorm2d):
                    for t in (m.weight, m.bias, m.running_mean): t.data.uniform_(-0.5, 0.5)
                    m.running_var.data.uniform_(0.5, 1.5)
        super().__init__(model, 'bn_conv', patch_size=4, embed_dim=dim)
    def forward(self, img):
        self._check_image(img)
        with self._grad(): return self.model(img)
