"""Test scaffolding: a small task the learner's tests, pages and benchmark train; fake dataset trees; a local file server.

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

`make_fake_tree` writes a few random images in each dataset's upstream layout (the data pages and tests read them) and
`serve_files` serves a folder over HTTP on localhost, with resumes and cut connections on demand (the download pages and
tests fetch from it). The data pages import them the same way.
"""
import http.server
import re
import socket
import threading
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from usseg.backbones import Backbone
from usseg.core import make_palette, show_grid
from usseg.data import INVALID, CamVid, Cityscapes27, CocoStuff27, Potsdam3, VOC2012, pascal_palette
from usseg.learner import EMA, Task, isolated_rng, warmup_cosine

__all__ = ['TinyFeatures', 'ProbeHead', 'ProbeTask', 'BNConvBackbone', 'make_fake_tree', 'serve_files']
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


# ------------------------------------------------------------------ fake dataset trees (the data pages, tests/test_data_*.py)
def _raw_values(cls) -> np.ndarray:
    return np.flatnonzero(cls.lut != INVALID)

def _save_png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, np.uint8)).save(path)

def make_fake_tree(name:str, root:str|Path, n:int=3, # images per split
                   size=(24, 32), seed:int=0) -> Path:
    "Write `n` random images per split of dataset `name` in its upstream layout under `root`; returns `root`."
    rng = np.random.default_rng(seed)
    root, (H, W) = Path(root), size
    img = lambda: rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    def lab(cls): return rng.choice(_raw_values(cls), (H, W)).astype(np.uint8)
    if name == 'camvid':
        for s in CamVid.splits:
            for i in range(n):
                _save_png(root/'CamVid'/s/f'{s}_{i:03d}.png', img()); _save_png(root/'CamVid'/f'{s}annot'/f'{s}_{i:03d}.png', lab(CamVid))
    elif name == 'cocostuff27':
        for s in ('train', 'val'):
            ids = [f'{s}{i:012d}' for i in range(n)]
            for i in ids:
                p = root/'cocostuff'/'images'/f'{s}2017'/f'{i}.jpg'; p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img()).save(p, quality=95); _save_png(root/'cocostuff'/'annotations'/f'{s}2017'/f'{i}.png', lab(CocoStuff27))
            lst = root/'cocostuff'/'curated'/f'{s}2017'/CocoStuff27.lists[s]; lst.parent.mkdir(parents=True, exist_ok=True)
            lst.write_text('\n'.join(ids) + '\n')
    elif name == 'cityscapes27':
        for s in Cityscapes27.splits:
            for i in range(n):
                city = ('aachen', 'bremen')[i % 2]
                stem = f'{city}_{i:06d}_000019'
                _save_png(root/'cityscapes'/'leftImg8bit'/s/city/f'{stem}_leftImg8bit.png', img())
                _save_png(root/'cityscapes'/'gtFine'/s/city/f'{stem}_gtFine_labelIds.png', rng.integers(0, 34, (H, W)))
    elif name == 'potsdam3':
        from scipy.io import savemat
        (root/'potsdam'/'imgs').mkdir(parents=True, exist_ok=True); (root/'potsdam'/'gt').mkdir(parents=True, exist_ok=True)
        ids = {s: [f'{s}_{i}' for i in range(n)] for s in ('train', 'val', 'unlabelled_train')}
        for s, lst in zip(ids, ('labelled_train.txt', 'labelled_test.txt', 'unlabelled_train.txt')):
            for i in ids[s]:
                savemat(root/'potsdam'/'imgs'/f'{i}.mat', {'img': rng.integers(0, 256, (H, W, 4), dtype=np.uint8)})
                if s != 'unlabelled_train': savemat(root/'potsdam'/'gt'/f'{i}.mat', {'gt': lab(Potsdam3)})
            (root/'potsdam'/lst).write_text('\n'.join(ids[s]) + '\n')
        (root/'potsdam'/'all.txt').write_text('\n'.join(sum(ids.values(), [])) + '\n')
    elif name == 'voc2012':
        voc = root/'VOCdevkit'/'VOC2012'
        ids = {s: [f'2007_{s[:2]}{i:04d}' for i in range(n)] for s in ('train', 'val', 'sbd')}
        for s, lst in ids.items():
            for i in lst:
                p = voc/'JPEGImages'/f'{i}.jpg'; p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img()).save(p, quality=95)
                m = lab(VOC2012)
                if s != 'sbd':
                    pim = Image.fromarray(m); pim.putpalette(pascal_palette(256).ravel().tolist())   # L -> P, values kept
                    (voc/'SegmentationClass').mkdir(parents=True, exist_ok=True); pim.save(voc/'SegmentationClass'/f'{i}.png')
                _save_png(voc/'SegmentationClassAug'/f'{i}.png', m)
                _save_png(voc/'saliency_supervised_model'/f'{i}.png', (rng.random((H, W)) > 0.5)*255)
        sets = voc/'ImageSets'/'Segmentation'; sets.mkdir(parents=True, exist_ok=True)
        for s in ('train', 'val'): (sets/f'{s}.txt').write_text('\n'.join(ids[s]) + '\n')
        (sets/'trainval.txt').write_text('\n'.join(ids['train'] + ids['val']) + '\n')
    elif name == 'folder':
        for s in ('train', 'val'):
            for i in range(n):
                _save_png(root/'imgs'/s/f'img{i}.png', img()); _save_png(root/'labels'/s/f'img{i}.png', rng.integers(0, 4, (H, W)))
    else: raise ValueError(f'no fake tree for {name!r}; known: camvid, cocostuff27, cityscapes27, potsdam3, voc2012, folder')
    return root


# ------------------------------------------------------------------ a local file server (the download page, tests/test_data_external.py)
@contextmanager
def serve_files(folder:str|Path, honour_range:bool=True, cut_after:int|None=None, cut_times:int=1):
    "Serve `folder` over HTTP on localhost in a thread; yields the server (`.url`, `.requests`)."
    folder, state = Path(folder), {'cuts': 0}
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a): pass
        def do_GET(self):
            p = folder/self.path.lstrip('/').split('?')[0]
            server.requests.append((self.path, self.headers.get('Range')))
            if not p.is_file(): self.send_error(404); return
            data = p.read_bytes()
            m = re.match(r'bytes=(\d+)-', self.headers.get('Range') or '')
            start = int(m[1]) if m and honour_range else 0
            if start >= len(data) and m and honour_range:
                self.send_response(416); self.send_header('Content-Range', f'bytes */{len(data)}'); self.end_headers(); return
            body = data[start:]
            self.send_response(206 if start else 200)
            if start: self.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
            self.send_header('Content-Length', str(len(body))); self.send_header('Accept-Ranges', 'bytes' if honour_range else 'none')
            self.end_headers()
            if cut_after is not None and state['cuts'] < cut_times and len(body) > cut_after:
                state['cuts'] += 1
                self.wfile.write(body[:cut_after]); self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR); self.close_connection = True; return
            self.wfile.write(body)
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    server.requests, server.url = [], f'http://127.0.0.1:{server.server_address[1]}'
    t = threading.Thread(target=server.serve_forever, daemon=True); t.start()
    try: yield server
    finally: server.shutdown(); server.server_close()
