#!/usr/bin/env python
"""usseg against the reference implementations, step for step: each method's training step (head + loss, forward and
backward) run in usseg and in the paper's own code on identical inputs, interleaved in one process.

    python benchmarks/vs_reference.py --ref-root DIR                      # DIR holds STEGO/ HP/ SmooSeg/ EAGLE/
    python benchmarks/vs_reference.py --ref-stego PATH --methods stego    # one checkout named explicitly
    python benchmarks/vs_reference.py --ref-root DIR --device cuda        # + usseg bf16 autocast and torch.compile
    python benchmarks/vs_reference.py --markdown [JSON]                   # print the BENCHMARKS.md table from the results

The reference code is never part of usseg: fetch the repositories yourself at the commits that
`shared/reference/methods_stego_family.md` names (mhamilton723/STEGO eb4d6b52, hynnsk/HP 89136446,
mc-lan/SmooSeg 1eecdec7, MICV-yonsei/EAGLE 5f2976c4) and give their path; without one the script says so and
skips. It imports their modules as they are; four generic shims make that possible on a machine without network
or their training stack, none of them on the path the timed step takes:
  * modules their files import but this environment lacks (`wget`, `torchmetrics`, `pytorch_lightning`, `hydra`,
    `wandb`, `seaborn`, `kmeans_pytorch`, `torch._six`, `torch.utils.tensorboard`, ...; the list is recorded in the
    results) are replaced by empty stand-ins while their files are imported: logging, data and plotting code that
    the head and loss never call (a stand-in that were called would fail the step);
  * on a CPU run, `.cuda()` (tensors and modules) returns the object on the CPU: their constructors and HP's loss
    move things to the GPU unconditionally;
  * while their featurizers are built, `torch.hub.load_state_dict_from_url` returns nothing to load (no network;
    their DINO is replaced by a stand-in anyway);
  * `torch.inverse` (EAGLE's Laplacian) runs at one thread when more are set: this torch CPU build's MKL hangs on
    a batched inverse with 2 threads (issue 19); both sides run under the same shim.
Their DINO backbone is replaced by a stand-in that returns stored tokens (and keys and attention logits), so the
step starts where the frozen backbone ends, as usseg's does (a stand-in `ViTBackbone` with the same stored data).

What is timed, per method (COCO-Stuff settings, ViT-S/8 at 224 px: a 28x28 grid of 384 channels):
  * STEGO (batch 16): usseg `StegoMethod.training_step` (the head on the images and their neighbours, the
    correspondence loss); reference: `DinoFeaturizer.forward` on each (its head), `ContrastiveCorrelationLoss`
    and the weighted sum of `train_segmentation.py::training_step`.
  * HP (batch 8 on a CPU, `--hp-batch`; the paper's 64, the default on a GPU, is 64x the loss work):
    usseg `HpMethod.training_step`;
    reference: `DinoFeaturizer.forward(train=True)` (head, EMA head, local propagation) on the images and on their
    augmented view, the projection head, `SupConLoss` and the consistency term, as `run.py::run` combines them.
  * SmooSeg (batch 32): usseg `SmooSegMethod.training_step`; reference: `Projection`, `Prediction`,
    `Energy_minimization_loss`.
  * EAGLE (batch 32): usseg `EagleMethod.training_step`; reference: `DinoFeaturizer.forward` three times (the image,
    its positive, which EAGLE's data sets to the image itself, and its blurred view), `CorrespondenceLoss`,
    `EigenLoss` (EiCue) twice, the two eigen cluster probes, the projection head and `newLocalGlobalInfoNCE`
    twice, combined as `train_segmentation_eigen.py::training_step` does after step 200.
usseg's training step also trains its cluster and linear probes on the detached code; the reference loss paths
compared here hold no probes, so the usseg task's probes are switched off on the instance (`no_probes`). Optimiser
steps and EMA updates are excluded on both sides, except HP's, which upstream performs inside the forward pass.

The outputs are checked first: with dropout off on both sides (it draws its masks in a different order) and the
same seed, the loss and the gradient of every trained weight are compared, and the largest difference recorded.
Then each side is timed with dropout on, all sides in turn (the order reversed every other round), `--repeats` times
after a warm-up, at each thread count. A ratio is reference time / usseg time (> 1: usseg is faster), taken per round
from steps timed next to each other, and summarised as the median and the range of those paired ratios.
glibc's allocator is part of the story (BENCHMARKS.md, issue 19): on a CPU each method's case is built in two worker
processes from the same seed, one under the C library's malloc defaults, one after `usseg.core.reuse_freed_memory()`
(what `Learner.setup` does on a CPU); the parent asks them for one step at a time, so the four sides interleave in
time while each process keeps its own allocator state. Three ratios follow: both under glibc's defaults (the code
alone, as the issue measured it), both reusing freed memory (the code alone, without page faults), and the reference
under glibc's defaults against usseg reusing freed memory (what a user of each gets).
Results: benchmarks/results/vs_reference_<device>.json (written atomically).
"""
import argparse
import contextlib
import ctypes
import importlib
import importlib.abc
import importlib.machinery
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

import usseg  # noqa: F401  (compat shim before torchvision/timm)
from usseg.backbones import _heads_to_grid, _to_grid
from usseg.core import atomic_write_text
from usseg.methods import get_method

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, cpu_model, machine  # noqa: E402

METHODS = ('stego', 'hp', 'smooseg', 'eagle')             # MaskContrast and HSC: add a Case below as they land
REPO_DIRS = {'stego': 'STEGO', 'hp': 'HP', 'smooseg': 'SmooSeg', 'eagle': 'EAGLE'}
COMMITS = {'stego': 'eb4d6b52', 'hp': '89136446', 'smooseg': '1eecdec7', 'eagle': '5f2976c4'}
GRID, PATCH, C, HEADS = 28, 8, 384, 6                     # ViT-S/8 at 224 px

# ----------------------------------------------------------------------------------------------- importing their code
#: Modules the reference files import at the top for logging, data, plotting or training; stubbed only if missing here.
STUB_CANDIDATES = ('wget', 'torchmetrics', 'pytorch_lightning', 'lightning_fabric', 'hydra', 'omegaconf', 'wandb',
                   'seaborn', 'kmeans_pytorch', 'cv2', 'einops', 'torchvision', 'tensorboard', 'torch.utils.tensorboard',
                   'torch._six', 'pydensecrf', 'sklearn', 'azureml', 'pymatting', 'imageio', 'tqdm')


class _Stand:
    "Anything a stubbed module is asked for: callable, subscriptable, usable as a base class; never a number."
    def __init__(self, name): self._name = name
    def __call__(self, *a, **k): return _Stand(f'{self._name}()')
    def __getattr__(self, k): return _Stand(f'{self._name}.{k}')
    def __getitem__(self, k): return _Stand(f'{self._name}[]')
    def __mro_entries__(self, bases): return (object,)
    def __repr__(self): return f'<stand-in {self._name}>'


class _StubModule(types.ModuleType):
    def __init__(self, name):
        super().__init__(name)
        self.__path__, self.__file__ = [], None
    def __getattr__(self, k):
        if k.startswith('__'): raise AttributeError(k)
        return _Stand(f'{self.__name__}.{k}')


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    "Serves a stand-in module for each listed name (and its submodules)."
    def __init__(self, names): self.names = tuple(names)
    def _mine(self, fullname): return any(fullname == n or fullname.startswith(n + '.') for n in self.names)
    def find_spec(self, fullname, path=None, target=None):
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True) if self._mine(fullname) else None
    def create_module(self, spec): return _StubModule(spec.name)
    def exec_module(self, module): pass


def _importable(name: str) -> bool:
    try: importlib.import_module(name); return True
    except Exception: return False


@contextlib.contextmanager
def reference_import(root: Path):
    """Import modules from a reference checkout `root` (its folder first on `sys.path`, missing third-party modules
    stubbed). On exit every module loaded from `root` leaves `sys.modules` again (the objects stay alive), so the
    four repositories' `utils`, `modules`, `dino` do not collide; modules of the same names loaded before are restored."""
    root = Path(root).resolve()
    stubbed = [n for n in STUB_CANDIDATES if not _importable(n)]
    own_tops = {p.stem for p in root.iterdir() if p.suffix == '.py' or (p.is_dir() and not p.name.startswith('.'))}
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split('.')[0] in own_tops}
    finder = _StubFinder(stubbed)
    sys.meta_path.insert(0, finder); sys.path.insert(0, str(root))
    dont_write, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield stubbed
    finally:
        sys.dont_write_bytecode = dont_write
        sys.path.remove(str(root)); sys.meta_path.remove(finder)
        for k in list(sys.modules):
            m = sys.modules[k]
            f = getattr(m, '__file__', None)
            if isinstance(m, _StubModule) or (f and Path(f).resolve().is_relative_to(root)) or k.split('.')[0] in own_tops:
                del sys.modules[k]
        sys.modules.update(saved)


@contextlib.contextmanager
def cuda_calls_stay_on(device: torch.device):
    "On a CPU run: `Tensor.cuda()` and `Module.cuda()` return the object unmoved (the reference calls them unconditionally)."
    if device.type == 'cuda': yield; return
    t_cuda, m_cuda = torch.Tensor.cuda, nn.Module.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self
    try: yield
    finally: torch.Tensor.cuda, nn.Module.cuda = t_cuda, m_cuda


@contextlib.contextmanager
def single_thread_inverse():
    "`torch.inverse` at one thread (this CPU build's MKL hangs on a batched inverse with more); same result."
    inv = torch.inverse
    def one_thread(*a, **k):
        n = torch.get_num_threads()
        if n == 1 or not a or a[0].device.type != 'cpu': return inv(*a, **k)
        torch.set_num_threads(1)
        try: return inv(*a, **k)
        finally: torch.set_num_threads(n)
    torch.inverse = one_thread
    try: yield
    finally: torch.inverse = inv


class _NoWeights(dict):
    "What the offline `torch.hub.load_state_dict_from_url` returns: loading it changes nothing."


@contextlib.contextmanager
def no_weight_download():
    """While their featurizers are built: `torch.hub.load_state_dict_from_url` returns an empty state dict that
    `load_state_dict` accepts as a no-op (no network here, and their DINO is replaced by a stand-in anyway)."""
    hub, load = torch.hub.load_state_dict_from_url, nn.Module.load_state_dict
    def offline(*a, **k): return _NoWeights()
    def load_state_dict(self, sd, *a, **k):
        if isinstance(sd, _NoWeights): return torch.nn.modules.module._IncompatibleKeys([], [])
        return load(self, sd, *a, **k)
    torch.hub.load_state_dict_from_url, nn.Module.load_state_dict = offline, load_state_dict
    try: yield
    finally: torch.hub.load_state_dict_from_url, nn.Module.load_state_dict = hub, load


# --------------------------------------------------------------------------------------------------------- allocator
def have_glibc() -> bool:
    "Whether this process runs on glibc (whose malloc settings `usseg.core.reuse_freed_memory` changes)."
    try: ctypes.CDLL(None).gnu_get_libc_version; return True
    except (OSError, AttributeError, TypeError): return False


# ------------------------------------------------------------------------------------------------------------ inputs
class Store:
    """Backbone outputs for `n` images, as a frozen DINO ViT-S/8 would give them: the tokens (class token first) of
    the last `n_blocks` blocks, their keys, and the last block's attention logits. Images belong to a few
    'objects' laid out in blobs, so that the losses see structure (random noise would leave HP without positives).
    Image `i` is an image tensor whose pixel [0, 0, 0] holds `i`: both stand-in backbones read it back."""
    def __init__(self, n, n_blocks=1, keys=False, attention=False, seed=0, perturb=None):
        g = torch.Generator().manual_seed(seed)
        N, K, d = GRID*GRID, 8, C//HEADS
        protos = torch.randn(K, C, generator=g)
        blobs = F.interpolate(torch.randn(n, K, 4, 4, generator=g), (GRID, GRID), mode='bilinear', align_corners=False).argmax(1)
        if perturb is not None: blobs[perturb[1]:] = blobs[perturb[0]:perturb[0] + n - perturb[1]]   # views share layouts
        base = protos[blobs.flatten(1)] + 0.8*torch.randn(n, N, C, generator=g)                          # (n, N, C)
        self.tokens = []                                                                                 # per block (n, 1+N, C)
        for _ in range(n_blocks):
            t = torch.cat([torch.randn(n, 1, C, generator=g), base + 0.3*torch.randn(n, N, C, generator=g)], 1)
            self.tokens.append(F.layer_norm(t, (C,)))
        self.keys = [(t @ (torch.randn(C, C, generator=g)/C**.5)).view(n, 1 + N, HEADS, d).transpose(1, 2).contiguous()
                     for t in self.tokens] if keys else None                                             # (n, heads, 1+N, d)
        if attention:
            q = (self.tokens[-1] @ (torch.randn(C, C, generator=g)/C**.5)).view(n, 1 + N, HEADS, d).transpose(1, 2)
            k = (self.tokens[-1] @ (torch.randn(C, C, generator=g)/C**.5)).view(n, 1 + N, HEADS, d).transpose(1, 2)
            self.logits = (q @ k.transpose(-2, -1)) * d**-0.5 * 4                                        # (n, heads, 1+N, 1+N)
            self.probs = self.logits.softmax(-1)
        else: self.logits = self.probs = None
        colours = torch.rand(K, 3, generator=g)*4 - 2
        lab = F.interpolate(blobs[:, None].float(), (GRID*PATCH,)*2, mode='nearest')[:, 0].long()
        self.images = colours[lab].permute(0, 3, 1, 2) + 0.3*torch.randn(n, 3, GRID*PATCH, GRID*PATCH, generator=g)
        self.images[:, 0, 0, 0] = torch.arange(n, dtype=torch.float32)

    def to(self, device):
        for k in ('tokens', 'keys'):
            v = getattr(self, k)
            if v is not None: setattr(self, k, [t.to(device) for t in v])
        for k in ('logits', 'probs', 'images'):
            v = getattr(self, k)
            if v is not None: setattr(self, k, v.to(device))
        return self

    def batch(self, idx): return self.images[list(idx)]

    @staticmethod
    def index(img): return img[:, 0, 0, 0].round().long()


class StandInViT(nn.Module):
    "usseg's side: a `ViTBackbone` look-alike returning the stored outputs through usseg's own token-to-map layout."
    def __init__(self, store: Store, depth=12):
        super().__init__()
        self.store, self.embed_dim, self.n_heads, self.depth, self.patch_size = store, C, HEADS, depth, PATCH
        self.name, self.weights = 'dino_vits8 (stand-in)', 'random'
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)   # gives the module a device

    def features(self, img, n=1, kinds=('tokens',), attention=False):
        i, s = Store.index(img), self.store
        kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
        res = {}
        for kind in kinds:
            if kind == 'tokens': res[kind] = [_to_grid(t[i], GRID, GRID) for t in s.tokens[-n:]]
            elif kind == 'keys': res[kind] = [_heads_to_grid(k[i], GRID, GRID) for k in s.keys[-n:]]
            else: raise ValueError(kind)
        if attention: res['attention'] = s.probs[i]
        return res

    def forward(self, img): return self.features(img)['tokens'][0]


class RefViT(nn.Module):
    "The reference's side: `get_intermediate_feat(img, n)` of their DINO ViT, from the stored outputs."
    def __init__(self, store: Store):
        super().__init__()
        self.store = store

    def get_intermediate_feat(self, img, n=1):
        i, s = Store.index(img), self.store
        feats = [t[i] for t in s.tokens]
        B = len(i)
        attn = s.logits[i] if s.logits is not None else torch.empty(B, HEADS, 1, 1, device=img.device).expand(B, HEADS, 1 + GRID*GRID, 1 + GRID*GRID)
        attns = [attn]*len(feats)
        qkvs = [k[i].unsqueeze(0).expand(3, *k[i].shape) for k in s.keys] if s.keys is not None else [None]*len(feats)
        return feats, attns, qkvs


class _ZeroProbe(nn.Module):
    "A linear probe that costs nothing: zero logits of one pixel (with labels of one ignored pixel, a zero loss)."
    def __init__(self, k): super().__init__(); self.k = k
    def forward(self, code): return code.new_zeros(code.shape[0], self.k, 1, 1)


def no_probes(task):
    "Switch usseg's probes off on this task instance: the reference loss paths compared here have none."
    zero = lambda code, label: {'cluster_loss': code.new_zeros(()), 'linear_loss': code.new_zeros(())}
    object.__setattr__(task, 'probe_losses', zero)                      # STEGO, HP, EAGLE: SegTask.probe_losses
    task.linear_probe = _ZeroProbe(task.n_classes)                       # SmooSeg calls the linear probe itself
    return task


def set_dropout(modules, p):
    for m in modules:
        for mm in m.modules():
            if isinstance(mm, nn.Dropout2d): mm.p = p


def copy_(dst: torch.Tensor, src: torch.Tensor):
    with torch.no_grad(): dst.copy_(src)


# ------------------------------------------------------------------------------------------------------------- cases
@dataclass
class Case:
    "One method: both steps as closures, the weights whose gradients must agree, and what to say about it."
    method: str
    batch: int
    ref_step: object                 # () -> loss tensor (backward done)
    pairs: list                      # [(name, reference parameter, usseg parameter)]
    modules: list                    # every module with dropout (both sides)
    dropout: float
    settings: str
    notes: list = field(default_factory=list)
    usseg_model: object = None       # the usseg task (bf16 / compile variants)
    usseg_fn: object = None          # (batch dict, step) -> usseg's training_step output (variants)
    usseg_value: object = None       # output dict -> the number compared with the reference's loss
    step: int = 0
    usseg_batch: object = None
    diagnose: object = None          # () -> dict: per-component comparison where the totals can differ legitimately

    def usseg_step(self):
        "usseg's side, timed: the task's training step on the stored batch, backward, and the value compared with the reference's loss."
        _grad_zero(self.usseg_model.parameters())
        out = self.usseg_fn(self.usseg_batch, self.step)
        out['loss'].backward()
        return self.usseg_value(out)


def _grad_zero(params):
    for p in params: p.grad = None


def stego_case(root, device, tmp, batch=None):
    M = get_method('stego')
    cfg = M.default_config('cocostuff27', 'dino_vits8')
    B = batch or cfg.batch_size
    store = Store(2*B, seed=1).to(device)
    with reference_import(Path(root)/'src') as stubbed, cuda_calls_stay_on(device), no_weight_download():
        mods = importlib.import_module('modules')
        rcfg = SimpleNamespace(dino_patch_size=PATCH, dino_feat_type='feat', model_type='vit_small', projection_type='nonlinear',
                               pretrained_weights=None, dropout=True)
        net = mods.DinoFeaturizer(cfg.dim, rcfg)
        lcfg = SimpleNamespace(feature_samples=cfg.feature_samples, neg_samples=cfg.neg_samples, pointwise=cfg.pointwise,
                               zero_clamp=cfg.zero_clamp, stabalize=cfg.stabilize, use_salience=False,
                               pos_intra_shift=cfg.pos_intra_shift, pos_inter_shift=cfg.pos_inter_shift, neg_inter_shift=cfg.neg_inter_shift)
        loss_fn = mods.ContrastiveCorrelationLoss(lcfg)
    net.model = RefViT(store)
    net.to(device).train()
    task = no_probes(M.build(StandInViT(store), cfg.n_classes, cfg).to(device).train())
    h = task.head
    pairs = [('linear.weight', net.cluster1[0].weight, h.linear.weight), ('linear.bias', net.cluster1[0].bias, h.linear.bias),
             ('nonlinear.0.weight', net.cluster2[0].weight, h.nonlinear[0].weight), ('nonlinear.0.bias', net.cluster2[0].bias, h.nonlinear[0].bias),
             ('nonlinear.2.weight', net.cluster2[2].weight, h.nonlinear[2].weight), ('nonlinear.2.bias', net.cluster2[2].bias, h.nonlinear[2].bias)]
    for _, r, u in pairs: copy_(u, r)
    img, img_pos = store.batch(range(B)), store.batch(range(B, 2*B))
    batch = {'img': img, 'img_pos': img_pos, 'label': torch.full((B, 1, 1), -1, dtype=torch.long, device=device)}

    def ref_step():
        _grad_zero(net.parameters())
        feats, code = net(img)
        feats_pos, code_pos = net(img_pos)
        intra, _, inter, _, neg, _ = loss_fn(feats, feats_pos, None, None, code, code_pos)
        loss = (cfg.pos_inter_weight*inter.mean() + cfg.pos_intra_weight*intra.mean() + cfg.neg_inter_weight*neg.mean())*cfg.correspondence_weight
        loss.backward()
        return loss.detach()

    return Case('stego', B, ref_step, pairs, [net, task], cfg.dropout, getattr(cfg, 'source', 'StegoConfig.cocostuff27()'),
                notes=[f'stubbed on import: {", ".join(stubbed) or "nothing"}'], usseg_model=task,
                usseg_fn=task.training_step, usseg_batch=batch, usseg_value=lambda o: o['corr_loss'])


def hp_case(root, device, tmp, batch=None, step=6000):
    M = get_method('hp')
    cfg = M.default_config('cocostuff27', 'dino_vits8')
    B = batch or cfg.batch_size
    store = Store(2*B, attention=True, seed=2, perturb=(0, B)).to(device)    # images B..2B-1: the augmented views
    opt = {'pretrained': {'dino_patch_size': PATCH, 'dino_feat_type': 'feat', 'model_type': 'vit_small', 'projection_type': 'nonlinear',
                          'pretrained_weights': None, 'dropout': True},
           'spatial_size': GRID, 'ema_m': cfg.ema_m}
    loss_opt = {'model': {'spatial_size': GRID}, 'rho': cfg.rho, 'loss_version': 1, 'reweighting': int(cfg.reweighting)}
    with reference_import(root) as stubbed, cuda_calls_stay_on(device), no_weight_download():
        featurizer = importlib.import_module('model.dino.DinoFeaturizer')
        loss_mod = importlib.import_module('loss')
        net = featurizer.DinoFeaturizer(cfg.dim, opt)
        supcon = loss_mod.SupConLoss(temperature=cfg.tau)
    net.model = RefViT(store)
    net.to(device).train()
    for m in (net.ema_model1, net.ema_model2): m.eval()
    project_head = nn.Linear(cfg.dim, cfg.dim).to(device)
    task = no_probes(M.build(StandInViT(store), cfg.n_classes, cfg).to(device).train())
    h = task.head
    pairs = [('head.linear.weight', net.cluster1[0].weight, h.linear.weight), ('head.linear.bias', net.cluster1[0].bias, h.linear.bias),
             ('head.nonlinear.0.weight', net.cluster2[0].weight, h.nonlinear[0].weight), ('head.nonlinear.0.bias', net.cluster2[0].bias, h.nonlinear[0].bias),
             ('head.nonlinear.2.weight', net.cluster2[2].weight, h.nonlinear[2].weight), ('head.nonlinear.2.bias', net.cluster2[2].bias, h.nonlinear[2].bias),
             ('projection.weight', project_head.weight, task.projection.linear.weight), ('projection.bias', project_head.bias, task.projection.linear.bias)]
    for _, r, u in pairs: copy_(u, r)
    for src, dst in ((net.ema_model1[0], task.ema_head.linear), (net.ema_model2[0], task.ema_head.nonlinear[0]), (net.ema_model2[2], task.ema_head.nonlinear[2])):
        copy_(dst.weight, src.weight); copy_(dst.bias, src.bias)
    # reference pools: one random patch per image, as upstream, of fp16-representable unit vectors (upstream keeps them in
    # fp16 under CUDA autocast; on a CPU its matmul needs one dtype, so both sides get the same values in fp32 there)
    g = torch.Generator().manual_seed(3)
    def pool(maps):
        P = cfg.pool_size
        i, j = torch.randint(0, len(maps), (P,), generator=g), torch.randint(0, GRID*GRID, (P,), generator=g)
        return F.normalize(maps.flatten(2)[i.to(maps.device), :, j.to(maps.device)].float(), dim=1).half()
    with torch.no_grad():
        feats0 = _to_grid(store.tokens[-1], GRID, GRID)
        pool_ag, pool_sp = pool(feats0), pool(task.ema_head(feats0))
    dt = torch.float16 if device.type == 'cuda' else torch.float32
    ref_pool_ag, ref_pool_sp = pool_ag.to(dt), pool_sp.to(dt)
    task.pool_ag.copy_(pool_ag.float()); task.pool_sp.copy_(pool_sp.float()); task.pool_step.fill_(0)
    task.steps_per_epoch, task.total_steps = None, cfg.max_steps
    lmbd = (step - cfg.warmup)/(cfg.max_steps - cfg.warmup)
    img, img_aug = store.batch(range(B)), store.batch(range(B, 2*B))
    batch = {'img': img, 'img_aug': img_aug, 'label': torch.full((B, 1, 1), -1, dtype=torch.long, device=device)}
    flat = lambda x: x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    full_opt = {**loss_opt}

    def ref_step():
        _grad_zero(list(net.parameters()) + list(project_head.parameters()))
        out = net(img, train=True)
        out_aug = net(img_aug)
        f = F.normalize(flat(out[0].clone().detach()), dim=1)
        z = F.normalize(project_head(flat(out[1])), dim=1)
        z_aug = F.normalize(project_head(flat(out_aug[1])), dim=1)
        consistency = torch.mean(nn.PairwiseDistance()(z, z_aug))
        z_mix = F.normalize(project_head(flat(out[3])), dim=1)
        s_pr = F.normalize(flat(out[2]), dim=1)
        l_sup = supcon(z, modeloutput_s_pr=s_pr, modeloutput_f=f, Pool_ag=ref_pool_ag, Pool_sp=ref_pool_sp,
                       opt=full_opt, lmbd=lmbd, modeloutput_z_mix=z_mix)
        loss = l_sup + consistency*cfg.consistency_weight
        loss.backward()
        return loss.detach()

    notes = [f'stubbed on import: {", ".join(stubbed) or "nothing"}',
             f'batch {B} (the paper: {cfg.batch_size}); step {step}: lambda = {lmbd:.4f}',
             'HP builds its loss masks and weights in float16 (upstream `SupConLoss`), usseg in float32; usseg reads the '
             "attention as probabilities (log taken), upstream as logits: the two agree to rounding, not to the bit",
             'upstream updates the EMA head inside the forward pass (timed); usseg in `after_step` (not timed)']
    return Case('hp', B, ref_step, pairs, [net, task], cfg.dropout, getattr(cfg, 'source', 'HpConfig.cocostuff27()'),
                notes=notes, usseg_model=task, usseg_fn=task.training_step, usseg_batch=batch, step=step,
                usseg_value=lambda o: o['hp_loss'] + cfg.consistency_weight*o['consistency'])


def smooseg_case(root, device, tmp, batch=None):
    M = get_method('smooseg')
    cfg = M.default_config('cocostuff27', 'dino_vits8')
    B = batch or cfg.batch_size
    store = Store(B, seed=4).to(device)
    with reference_import(root) as stubbed, cuda_calls_stay_on(device), no_weight_download():
        mods = importlib.import_module('modules')
        rcfg = SimpleNamespace(dim=cfg.dim, n_feats=C, projection_type='nonlinear', dropout=True, alpha=cfg.ema_m,
                               pointwise=cfg.pointwise, pos_intra_shift=cfg.pos_intra_shift, neg_inter_shift=cfg.neg_inter_shift)
        K = cfg.n_classes + cfg.extra_clusters
        projection = mods.Projection(rcfg)
        prediction = mods.Prediction(rcfg, K)
        energy = mods.Energy_minimization_loss(rcfg, K)
    projection.to(device).train(); prediction.to(device).train()
    task = no_probes(M.build(StandInViT(store), cfg.n_classes, cfg).to(device).train())
    p = task.projection
    pairs = [('projection.linear.weight', projection.cluster1[0].weight, p.linear.weight), ('projection.linear.bias', projection.cluster1[0].bias, p.linear.bias),
             ('projection.nonlinear.0.weight', projection.cluster2[0].weight, p.nonlinear[0].weight),
             ('projection.nonlinear.0.bias', projection.cluster2[0].bias, p.nonlinear[0].bias),
             ('projection.nonlinear.2.weight', projection.cluster2[2].weight, p.nonlinear[2].weight),
             ('projection.nonlinear.2.bias', projection.cluster2[2].bias, p.nonlinear[2].bias),
             ('prototypes (student)', prediction.local_clusters, task.predictor.phi_s)]
    for _, r, u in pairs: copy_(u, r)
    copy_(task.predictor.phi_t, prediction.global_clusters)
    img = store.batch(range(B))
    batch = {'img': img, 'label': torch.full((B, 1, 1), -1, dtype=torch.long, device=device)}
    # SmooSeg's featurizer returns contiguous (B, C, h, w) features (`.contiguous()` after the permute), usseg's backbone a view
    ref_vit = RefViT(store)
    def ref_features(x):
        with torch.no_grad(): return ref_vit.get_intermediate_feat(x)[0][0][:, 1:].reshape(len(x), GRID, GRID, C).permute(0, 3, 1, 2).contiguous()

    def ref_step():
        _grad_zero(list(projection.parameters()) + list(prediction.parameters()))
        feats, code = projection(ref_features(img))
        local, glob = prediction(code)
        smooth, data, _, _ = energy(feats, local, glob, temperature=cfg.temperature)
        loss = smooth + data
        loss.backward()
        return loss.detach()

    return Case('smooseg', B, ref_step, pairs, [projection, task], cfg.dropout, getattr(cfg, 'source', 'SmooSegConfig.cocostuff27()'),
                notes=[f'stubbed on import: {", ".join(stubbed) or "nothing"}',
                       "the reference's featurizer makes its features contiguous (B, C, h, w) (inside its no-grad backbone call, "
                       'timed here on its side); usseg passes the backbone\'s token layout on'],
                usseg_model=task, usseg_fn=task.training_step, usseg_batch=batch, usseg_value=lambda o: o['energy'])


def eagle_case(root, device, tmp, batch=None, step=1000):
    M = get_method('eagle')
    cfg = replace(M.default_config('cocostuff27', 'dino_vits8'), colour_space='upstream')   # upstream's colours: the same graph
    B = batch or cfg.batch_size
    store = Store(2*B, n_blocks=cfg.n_blocks, keys=True, seed=5, perturb=(0, B)).to(device)   # B..2B-1: the blurred views
    rcfg = SimpleNamespace(dino_patch_size=PATCH, dino_feat_type='KK', model_type='vit_small', projection_type='nonlinear',
                           pretrained_weights=None, dropout=True, dim=cfg.dim,
                           neg_samples=cfg.neg_samples, feature_samples=cfg.feature_samples, pointwise=cfg.pointwise, zero_clamp=cfg.zero_clamp,
                           stabalize=cfg.stabilize, shift_bias=cfg.shift_bias, shift_value=cfg.shift_value,
                           eigen_cluster=cfg.eigen_k, dataset_name='cocostuff27', centroid_mode='prototype',
                           contrastive_temp=cfg.tau, global_loss_weight=cfg.gamma, extra_clusters=cfg.extra_clusters)
    with reference_import(Path(root)/'src_EAGLE') as stubbed, cuda_calls_stay_on(device), no_weight_download():
        mods = importlib.import_module('modules')
        eig = importlib.import_module('eigen_modules')
        net = mods.DinoFeaturizer(cfg.dim, rcfg)
        corr = mods.CorrespondenceLoss(rcfg)
        eigen_loss = eig.EigenLoss(rcfg)
        probe_e = mods.ClusterLookup(cfg.eigen_k - 1, cfg.eigen_clusters)
        probe_e_aug = mods.ClusterLookup(cfg.eigen_k - 1, cfg.eigen_clusters)
        nce = mods.newLocalGlobalInfoNCE(rcfg, cfg.n_classes)
    net.model = RefViT(store)
    net.to(device).train()
    project_head = nn.Linear(cfg.dim, cfg.dim).to(device)
    probe_e.to(device); probe_e_aug.to(device)
    task = no_probes(M.build(StandInViT(store), cfg.n_classes, cfg).to(device).train())
    h = task.head
    pairs = [('head.linear.weight', net.cluster1[0].weight, h.linear.weight), ('head.linear.bias', net.cluster1[0].bias, h.linear.bias),
             ('head.nonlinear.0.weight', net.cluster2[0].weight, h.nonlinear[0].weight), ('head.nonlinear.0.bias', net.cluster2[0].bias, h.nonlinear[0].bias),
             ('head.nonlinear.2.weight', net.cluster2[2].weight, h.nonlinear[2].weight), ('head.nonlinear.2.bias', net.cluster2[2].bias, h.nonlinear[2].bias),
             ('projection.weight', project_head.weight, task.projection.linear.weight), ('projection.bias', project_head.bias, task.projection.linear.bias),
             ('eigen_probe', probe_e.clusters, task.eigen_probe.clusters), ('eigen_probe_aug', probe_e_aug.clusters, task.eigen_probe_aug.clusters)]
    for _, r, u in pairs: copy_(u, r)
    img, img_aug = store.batch(range(B)), store.batch(range(B, 2*B))
    batch = {'img': img, 'img_aug': img_aug, 'label': torch.full((B, 1, 1), -1, dtype=torch.long, device=device)}
    u = min(1 if step > cfg.step_schedulers else 0, cfg.momentum_limit)
    D = cfg.dim

    def ref_step():
        _grad_zero(list(net.parameters()) + list(project_head.parameters()) + [probe_e.clusters, probe_e_aug.clusters])
        feats, feats_kk, code, code_kk = net(img)
        feats_pos, feats_pos_kk, code_pos, code_pos_kk = net(img)           # EAGLE's data: img_pos is the image itself
        feats_aug, feats_aug_kk, code_aug, code_aug_kk = net(img_aug)
        z_pos = F.normalize(project_head(code_pos_kk.permute(0, 2, 3, 1).reshape(-1, D)), dim=1)
        z_aug = F.normalize(project_head(code_aug_kk.permute(0, 2, 3, 1).reshape(-1, D)), dim=1)
        def gram(k):
            k = k.view(k.shape[0], k.shape[1], -1)
            return F.normalize(torch.matmul(k.transpose(2, 1), k), dim=1)
        g_pos, g_aug = gram(feats_pos_kk), gram(feats_aug_kk)
        pos, _, neg, _ = corr(feats_kk, feats_pos_kk, feats_aug_kk, code_kk, code_pos_kk, code_aug_kk)
        pos, neg = pos.mean(), neg.mean()
        def eigen(f, c, probe):
            vec = eigen_loss(img, f.reshape(B, f.shape[1], -1).permute(0, 2, 1), c.reshape(B, c.shape[1], -1).permute(0, 2, 1), g_pos, None, neg_sample=5)
            vec = vec[:, :, 1:].reshape(B, GRID, GRID, -1).permute(0, 3, 1, 2)
            l, logp = probe(vec, 1, log_probs=True)
            return l, logp.argmax(1)
        l_e, lab = eigen(feats_pos_kk, code_pos_kk, probe_e)
        l_e_aug, lab_aug = eigen(feats_aug_kk, code_aug_kk, probe_e_aug)
        local = nce(z_pos, z_aug, lab, g_pos)
        local_aug = nce(z_aug, z_pos, lab_aug, g_aug)
        loss = ((l_e_aug + l_e)/2 + (cfg.pos_inter_weight*pos + cfg.neg_inter_weight*neg)*cfg.correspondence_weight*(1.0 - u)
                + (cfg.nce_weight*local + cfg.nce_aug_weight*local_aug)*u)
        loss.backward()
        return loss.detach()

    @torch.no_grad()
    def diagnose():
        "EAGLE's pieces one by one, for the image and for its blurred view (dropout off): where the two part, and by how much."
        from usseg.losses.eagle import (code_affinity, colour_affinity, eagle_correspondence_loss, eicue, key_similarity,
                                        normalized_laplacian, object_contrastive_loss, patch_colours)
        from usseg.models.heads import flatten_pixels
        out, views = {}, {}
        for view, x, probe, uprobe in (('image', img, probe_e, task.eigen_probe), ('blurred', img_aug, probe_e_aug, task.eigen_probe_aug)):
            _, fkk, _, ckk = net(x)
            kk = task.keys(x)
            uf, uc = task.head(kk, return_feats=True)
            g = F.normalize(torch.matmul(fkk.flatten(2).transpose(2, 1), fkk.flatten(2)), dim=1)
            vec = eigen_loss(img, fkk.flatten(2).permute(0, 2, 1), ckk.flatten(2).permute(0, 2, 1), g, None, neg_sample=5)
            vec = vec[:, :, 1:].reshape(B, GRID, GRID, -1).permute(0, 3, 1, 2)
            uvec = eicue(uc, img, **task.cfg.eicue_kwargs()).vectors            # both sides colour the graph with `img`
            _, lp = probe(vec, 1, log_probs=True)
            _, up = uprobe(uvec, 1.0, log_probs=True)
            # the graphs themselves: upstream's Laplacian (its own methods, on its 28x28 colours) against usseg's
            cf = ckk.flatten(2).permute(0, 2, 1)
            lap_r = eigen_loss.laplacian(torch.bmm(cf, cf.transpose(1, 2)), eigen_loss.color_affinity(
                F.interpolate(img, (GRID, GRID), mode='bilinear', align_corners=False).permute(0, 2, 3, 1)))
            lap_u = normalized_laplacian(code_affinity(uc) + colour_affinity(patch_colours(img, (GRID, GRID), 'upstream'), task.cfg.sigma))
            ev = torch.linalg.eigvalsh(lap_r.double())
            k = task.cfg.eigen_k
            per_image = (vec - uvec).flatten(1).abs().amax(1)
            out[view] = {'code_bit_identical': bool(torch.equal(uc, ckk)), 'key_similarity_bit_identical': bool(torch.equal(g, key_similarity(kk))),
                         'laplacian_max_abs_diff': (lap_r - lap_u).abs().max().item(),
                         'eigenvalues_max_abs_diff': (ev[:, :k] - torch.linalg.eigvalsh(lap_u.double())[:, :k]).abs().max().item(),
                         'smallest_gap_between_kept_eigenvalues': (ev[:, 1:k + 1] - ev[:, :k]).min().item(),
                         'eicue_vectors_max_abs_diff': (vec - uvec).abs().max().item(),
                         'images_whose_eicue_vectors_differ_over_1e-3': int((per_image > 1e-3).sum()),
                         'eicue_labels_differing': int((lp.argmax(1) != up.argmax(1)).sum()), 'pixels': lp.argmax(1).numel()}
            views[view] = (fkk, ckk, uf, uc, kk, g, lp.argmax(1))
        (fkk, ckk, uf, uc, kk, g, lab), (fa, ca, ufa, uca, kka, ga, laba) = views['image'], views['blurred']
        torch.manual_seed(0); p1, _, n1, _ = corr(fkk, fkk, fa, ckk, ckk, ca)
        torch.manual_seed(0); p2, n2 = eagle_correspondence_loss(uf, uf, ufa, uc, uc, uca, **task.cfg.corr_kwargs())
        z, za = (F.normalize(project_head(c.permute(0, 2, 3, 1).reshape(-1, D)), dim=1) for c in (ckk, ca))
        uz, uza = task.projection(flatten_pixels(uc)), task.projection(flatten_pixels(uca))
        out['correspondence_bit_identical'] = bool(torch.equal(p1.mean(), p2) and torch.equal(n1.mean(), n2))
        out['object_contrast_with_upstream_labels_bit_identical'] = bool(
            torch.equal(nce(z, za, lab, g), object_contrastive_loss(uz, uza, lab, key_similarity(kk), **task.cfg.nce_kwargs())) and
            torch.equal(nce(za, z, laba, ga), object_contrastive_loss(uza, uz, laba, key_similarity(kka), **task.cfg.nce_kwargs())))
        return out

    notes = [f'stubbed on import: {", ".join(stubbed) or "nothing"}', f'step {step}: u = {u}',
             "upstream's EiCue divides through an explicit inverse and matrix products, usseg elementwise: the eigenvectors agree "
             'to rounding, and a near-tie in the eigen-probe argmax can move a pixel to another object',
             "usseg runs with colour_space='upstream' (the normalised image / 255, as EAGLE); its default 'rgb' costs the same"]
    return Case('eagle', B, ref_step, pairs, [net, task], cfg.dropout, getattr(cfg, 'source', 'EagleConfig.cocostuff27()'),
                notes=notes, usseg_model=task, usseg_fn=task.training_step, usseg_batch=batch, step=step,
                usseg_value=lambda o: o['eagle'].detach(), diagnose=diagnose)


CASES = {'stego': stego_case, 'hp': hp_case, 'smooseg': smooseg_case, 'eagle': eagle_case}


# ----------------------------------------------------------------------------------------------------------- running
def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize()


def check(case: Case, device, seed=0, variants=None) -> dict:
    "Dropout off on both sides, the same seed: the largest differences of the loss and of every gradient."
    set_dropout(case.modules, 0.0)
    vout = {}
    try:
        torch.manual_seed(seed); lr = case.ref_step()
        gr = {n: r.grad.detach().clone() for n, r, _ in case.pairs}
        for v, f in (variants or {}).items():              # usseg's bf16 / compiled step against the reference's fp32
            torch.manual_seed(seed); lv = f()
            rel = [((u.grad.float() - gr[n].float()).abs().max() / gr[n].float().abs().max().clamp_min(1e-30)).item()
                   for n, _, u in case.pairs if u.grad is not None]
            vout[v] = {'loss': lv.item(), 'loss_abs_diff': abs(lv.item() - lr.item()), 'grad_max_rel_diff': max(rel) if rel else None}
        torch.manual_seed(seed); lu = case.usseg_step()
        gu = {n: u.grad.detach().clone() if u.grad is not None else None for n, _, u in case.pairs}
    finally: set_dropout(case.modules, case.dropout)
    out = {'loss_reference': lr.item(), 'loss_usseg': lu.item(), 'loss_abs_diff': abs(lr.item() - lu.item()),
           'loss_bit_identical': bool(torch.equal(lr.float(), lu.float()))}
    diffs, rel = {}, {}
    for n in gr:
        if gu[n] is None: diffs[n] = None; continue
        d = (gr[n].float() - gu[n].float()).abs().max().item()
        diffs[n] = d
        rel[n] = d / max(gr[n].float().abs().max().item(), 1e-30)
    out['grad_max_abs_diff'] = diffs
    out['grad_max_rel_diff'] = max(rel.values()) if rel else None
    out['grads_bit_identical'] = all(gu[n] is not None and torch.equal(gr[n], gu[n]) for n in gr)
    if vout: out['variants'] = vout
    return out


def variant_step(case: Case, variant: str, device):
    "usseg's step as a user would run it on a GPU: 'bf16' under autocast, 'compile' through torch.compile (fp32)."
    task, batch, fn, step_no = case.usseg_model, case.usseg_batch, case.usseg_fn, case.step
    run = torch.compile(fn) if variant == 'compile' else fn
    def step():
        _grad_zero(task.parameters())
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=variant == 'bf16'): out = run(batch, step_no)
        out['loss'].backward()
        return case.usseg_value(out)
    return step


def profile_sides(sides: dict, device, steps=1, top=12) -> dict:
    """Where each side's step spends its time: minor page faults and kernel (system) CPU seconds per step, counted
    apart, then `torch.profiler`'s operators by self time per step (dropout on, current thread count)."""
    import resource
    out = {}
    for side, f in sides.items():
        f(); sync(device)
        r0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.perf_counter()
        for _ in range(steps): f()
        sync(device)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device.type == 'cuda' else [])
        with torch.profiler.profile(activities=acts) as prof:
            for _ in range(steps): f()
            sync(device)
        ev = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
        out[side] = {'wall_s_per_step': round((time.perf_counter() - t0)/steps, 4),
                     'minor_page_faults_per_step': round((r1.ru_minflt - r0.ru_minflt)/steps),
                     'system_cpu_s_per_step': round((r1.ru_stime - r0.ru_stime)/steps, 4),
                     'user_cpu_s_per_step': round((r1.ru_utime - r0.ru_utime)/steps, 4),
                     'top_ops_self_cpu_ms_per_step': {e.key: round(e.self_cpu_time_total/1e3/steps, 1) for e in ev}}
    return out


def time_sides(sides: dict, repeats, warmup) -> dict:
    """Each side is a callable that runs one step and returns its seconds; all run in turn, the order reversed every
    other round (the sides of both malloc settings live in two processes, so their steps interleave in time)."""
    times = {k: [] for k in sides}
    for f in sides.values():
        for _ in range(warmup): f()
    names = list(sides)
    for r in range(repeats):
        for k in (names if r % 2 == 0 else names[::-1]): times[k].append(sides[k]())
    return times


def ratio(a: list, b: list) -> dict:
    "Paired ratios a[i] / b[i] of steps timed next to each other: their median and range."
    rs = [x/y for x, y in zip(a, b)]
    return {'median': round(statistics.median(rs), 3), 'min': round(min(rs), 3), 'max': round(max(rs), 3),
            'of_medians': round(statistics.median(a)/statistics.median(b), 3)}


def summarise(times: dict, pairs: dict) -> dict:
    out = {k: {'median_s': round(statistics.median(ts), 4), 'min_s': round(min(ts), 4), 'max_s': round(max(ts), 4),
               'times_s': [round(t, 4) for t in ts]} for k, ts in times.items()}
    for name, (a, b) in pairs.items(): out[name] = ratio(times[a], times[b])
    return out


class Worker:
    """A child process holding one method's case (both sides, built from the same seed in every worker) under one
    malloc setting: 'glibc' leaves the C library's defaults alone, 'reuse' calls `usseg.core.reuse_freed_memory()`
    first. The parent sends it JSON commands; a step is timed inside the worker, around the step alone."""
    def __init__(self, spec: dict):
        self.spec = spec
        self.proc = subprocess.Popen([sys.executable, __file__, '--worker', json.dumps(spec)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)

    def ask(self, op: str, **kw):
        self.proc.stdin.write(json.dumps({'op': op, **kw}) + '\n'); self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line: raise RuntimeError(f"the {self.spec['malloc']} worker for {self.spec['method']} died (exit {self.proc.wait()})")
        r = json.loads(line)
        if 'error' in r: raise RuntimeError(f"{self.spec['malloc']} worker: {r['error']}")
        return r['result']

    def close(self):
        try:
            if self.proc.poll() is None: self.ask('quit')
        except Exception: pass
        try: self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired: self.proc.kill()


def worker_main(spec: dict):
    "The worker's loop (`--worker SPEC`): build the case, then answer info / check / profile / step / rss / quit."
    reply_to = os.fdopen(os.dup(1), 'w', buffering=1)
    os.dup2(2, 1)                                          # anything else printed goes to stderr, not into the protocol
    if spec['malloc'] == 'reuse':
        from usseg import core
        if not hasattr(core, 'reuse_freed_memory'): raise SystemExit('--malloc reuse needs usseg.core.reuse_freed_memory (issue 19)')
        core.reuse_freed_memory()
    global GRID
    GRID = spec['grid']
    device = torch.device(spec['device'])
    method = spec['method']
    with cuda_calls_stay_on(device), single_thread_inverse(), tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)                              # both sides' initial weights come from here: the same in every worker
        case = CASES[method](Path(spec['root']), device, Path(tmp), batch=spec['batch'])
        extra = {f'usseg_{v}': variant_step(case, v, device) for v in spec['variants']}
        steps = {'reference': case.ref_step, 'usseg': case.usseg_step, **extra}
        for line in sys.stdin:
            cmd = json.loads(line)
            try:
                if cmd['op'] == 'quit': reply_to.write(json.dumps({'result': None}) + '\n'); break
                if 'threads' in cmd: torch.set_num_threads(cmd['threads'])
                if cmd['op'] == 'info': r = {'batch': case.batch, 'settings': case.settings, 'notes': case.notes}
                elif cmd['op'] == 'check':
                    r = check(case, device, variants=extra)
                    if case.diagnose is not None:
                        set_dropout(case.modules, 0.0)
                        try: r['components'] = case.diagnose()
                        finally: set_dropout(case.modules, case.dropout)
                elif cmd['op'] == 'profile': r = profile_sides({'reference': case.ref_step, 'usseg': case.usseg_step}, device)
                elif cmd['op'] == 'step':
                    f = steps[cmd['side']]
                    sync(device); t = time.perf_counter(); f(); sync(device)
                    r = time.perf_counter() - t
                elif cmd['op'] == 'rss':
                    import resource
                    r = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/2**20, 2)
                else: raise ValueError(f"unknown op {cmd['op']}")
                reply_to.write(json.dumps({'result': r}) + '\n')
            except Exception as e:
                import traceback
                reply_to.write(json.dumps({'error': f'{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}'}) + '\n')


def run_method(method, root, device, threads, repeats, warmup, variants, profile=False, malloc='glibc', batch=None, grid=28) -> dict:
    "One method: the check in the first worker, then profiles and interleaved timings across the workers."
    t0 = time.perf_counter()
    modes = ['glibc', 'reuse'] if malloc == 'both' else [malloc]
    workers = {}
    try:
        for i, mode in enumerate(modes):                 # variants run in the last worker (usseg's own setting on a CPU)
            workers[mode] = Worker({'method': method, 'root': str(root), 'device': str(device), 'malloc': mode, 'grid': grid,
                                    'batch': batch, 'variants': variants.get(method, []) if i == len(modes) - 1 else []})
        first = workers[modes[0]]
        info = first.ask('info')
        res = {'method': method, 'batch': info['batch'], 'settings': info['settings'], 'reference': f'{REPO_DIRS[method]} at {root}',
               'reference_commit_expected': COMMITS[method], 'notes': info['notes'], 'malloc_settings': modes, 'by_threads': {}}
        res['check'] = first.ask('check', threads=threads[0])
        if 'components' in res['check']: print(f'[{method}] components: {res["check"]["components"]}', flush=True)
        print(f"[{method}] check: loss {res['check']['loss_reference']:.6g} vs {res['check']['loss_usseg']:.6g} "
              f"(bit-identical: {res['check']['loss_bit_identical']}), grads bit-identical: {res['check']['grads_bit_identical']}, "
              f"max rel diff {res['check']['grad_max_rel_diff']}", flush=True)
        sides, pairs = {}, {}
        for mode in modes:
            sfx = '_reuse' if mode == 'reuse' and len(modes) == 2 else ''
            for side in ('reference', 'usseg'): sides[side + sfx] = (workers[mode], side)
            pairs[f'ratio_reference{sfx}_over_usseg{sfx}'] = (f'reference{sfx}', f'usseg{sfx}')
        if len(modes) == 2: pairs['ratio_reference_over_usseg_reuse'] = ('reference', 'usseg_reuse')   # what users of each get
        for v in variants.get(method, []):
            sides[f'usseg_{v}'] = (workers[modes[-1]], f'usseg_{v}')
            pairs[f'ratio_reference_over_usseg_{v}'] = (next(iter(sides)), f'usseg_{v}')
        if profile:
            res['profile'] = {}
            for mode in modes:
                sfx = '_reuse' if mode == 'reuse' and len(modes) == 2 else ''
                for side, pr in workers[mode].ask('profile', threads=threads[0]).items():
                    res['profile'][side + sfx] = pr
                    print(f"[{method}] profile {side + sfx} ({threads[0]} thread): {pr['wall_s_per_step']} s/step, {pr['minor_page_faults_per_step']} "
                          f"page faults and {pr['system_cpu_s_per_step']} s system time per step; top ops (ms/step): "
                          + ', '.join(f'{k} {v}' for k, v in list(pr['top_ops_self_cpu_ms_per_step'].items())[:6]), flush=True)
        for n in threads if repeats > 0 else []:
            la = [round(x, 2) for x in os.getloadavg()]
            calls = {k: (lambda w=w, side=side, n=n: w.ask('step', side=side, threads=n)) for k, (w, side) in sides.items()}
            times = time_sides(calls, repeats, warmup)
            s = summarise(times, pairs)
            s['load_average_before'] = la
            s['load_average_after'] = [round(x, 2) for x in os.getloadavg()]
            res['by_threads'][str(n)] = s
            print(f"[{method}] {n} thread(s), load {la}: " + '; '.join(f"{k} {s[k]['median_s']:.3f} s" for k in sides) + ' | '
                  + '; '.join(f"{k[len('ratio_'):]} {s[k]['median']:.3f} [{s[k]['min']:.3f}, {s[k]['max']:.3f}]" for k in pairs), flush=True)
        res['peak_rss_gib'] = {mode: w.ask('rss') for mode, w in workers.items()}
    finally:
        for w in workers.values(): w.close()
    res['seconds_total'] = round(time.perf_counter() - t0, 1)
    return res


# ---------------------------------------------------------------------------------------------------------- markdown
def markdown(d: dict) -> str:
    "The BENCHMARKS.md table from a results JSON: one row per method and thread count, each ratio with its range."
    cols = [('ratio_reference_over_usseg', 'glibc defaults, both'), ('ratio_reference_reuse_over_usseg_reuse', 'reuse_freed_memory, both'),
            ('ratio_reference_over_usseg_reuse', 'reference (glibc) / usseg (reuse)')]
    rows = [m for m in d.get('methods', []) if 'by_threads' in m and m['by_threads']]
    present = [(k, t) for k, t in cols if any(k in s for m in rows for s in m['by_threads'].values())]
    extra = sorted({k for m in rows for s in m['by_threads'].values() for k in s
                    if k.startswith('ratio_reference') and k not in dict(cols)})
    head = ['method (batch)', 'threads', 'reference s/step', 'usseg s/step'] + [f'ratio: {t}' for _, t in present] \
           + [k[len('ratio_'):].replace('_over_', ' / ') for k in extra] + ['load avg', 'outputs (dropout off, same seed)']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|'*len(head)]
    for m in rows:
        c = m['check']
        eq = ('loss bit-identical' if c['loss_bit_identical'] else f"loss Δ {c['loss_abs_diff']:.1e}") + \
             (', gradients bit-identical' if c['grads_bit_identical'] else f", gradients rel. Δ {c['grad_max_rel_diff']:.1e}")
        for n, s in m['by_threads'].items():
            ref = s.get('reference', s.get('reference_reuse'))
            us = s.get('usseg', s.get('usseg_reuse'))
            cells = [f"{m['method']} ({m['batch']})", n, f"{ref['median_s']:.3f}", f"{us['median_s']:.3f}"]
            cells += [f"**{s[k]['median']:.2f}** ({s[k]['min']:.2f}-{s[k]['max']:.2f})" if k in s else '' for k, _ in present + [(e, '') for e in extra]]
            cells += [f"{s['load_average_before'][0]:.1f}-{s['load_average_after'][0]:.1f}", eq]
            lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


# -------------------------------------------------------------------------------------------------------------- main
def resolve_roots(a) -> dict:
    roots = {}
    for m in a.methods:
        p = getattr(a, f'ref_{m}') or (Path(a.ref_root)/REPO_DIRS[m] if a.ref_root else None)
        roots[m] = Path(p) if p else None
    return roots


def run_all(a, out_path=None) -> dict:
    "Every method in turn; with `out_path`, the figures so far are written after each method (a run stopped at a time limit keeps them)."
    device = torch.device(a.device)
    roots = resolve_roots(a)
    variants = {m: [v for v in a.variants if v != 'compile' or m in a.compile_methods] for m in a.methods}
    out = {'benchmark': 'usseg vs reference implementations: training step (head + loss), forward and backward',
           'device': str(device), 'gpu': torch.cuda.get_device_name() if device.type == 'cuda' else None,
           'malloc': a.malloc, 'threads': a.threads_list,
           'repeats': a.repeats or 'default (5; HP and EAGLE 3)', 'warmup': a.warmup, 'grid': a.grid, 'cpu': cpu_model(),
           'machine': machine(), 'methods': []}
    for m in a.methods:
        root = roots[m]
        if root is None or not root.is_dir():
            msg = (f'no reference checkout for {m}: pass --ref-root DIR (with {REPO_DIRS[m]}/ in it) or --ref-{m} PATH'
                   if root is None else f'{root} is not a folder: give the path of a {REPO_DIRS[m]} checkout')
            print(f'[{m}] skipped: {msg}', flush=True)
            out['methods'].append({'method': m, 'skipped': msg}); continue
        try:
            batch = a.batch or ((a.hp_batch or (64 if device.type == 'cuda' else 8)) if m == 'hp' else None)
            repeats = 0 if a.check_only else a.repeats or (3 if m in ('hp', 'eagle') else 5)
            out['methods'].append(run_method(m, root, device, a.threads_list, repeats, a.warmup, variants, a.profile,
                                             a.malloc, batch=batch, grid=a.grid))
        except Exception as e:                      # one broken method must not lose the others' figures
            import traceback; traceback.print_exc()
            out['methods'].append({'method': m, 'error': f'{type(e).__name__}: {e}'})
        if out_path: atomic_write_text(out_path, json.dumps({**out, 'partial': True}, indent=1) + '\n')
    out['machine_after'] = machine()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--ref-root', help='folder holding the checkouts STEGO/ HP/ SmooSeg/ EAGLE/ (e.g. .refs/)')
    for m in METHODS: p.add_argument(f'--ref-{m}', help=f'path of the {REPO_DIRS[m]} checkout (overrides --ref-root)')
    p.add_argument('--methods', nargs='+', default=list(METHODS), choices=METHODS)
    p.add_argument('--device', default='cpu')
    p.add_argument('--threads', dest='threads_list', nargs='+', type=int, default=None,
                   help='torch CPU threads, one timing each (default: 1 2 on a CPU; the current count on a GPU)')
    p.add_argument('--repeats', type=int, default=0, help='timed steps per side (default: 5; HP and EAGLE 3)')
    p.add_argument('--check-only', action='store_true', help='compare the outputs, time nothing')
    p.add_argument('--profile', action='store_true', help="also profile each side's step: page faults, system time, top operators")
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--hp-batch', type=int, default=0, help="HP's batch (default: the paper's 64 on a GPU, 8 on a CPU, where 64 runs out of memory)")
    p.add_argument('--batch', type=int, default=0, help="every method's batch (default: the paper's; HP: --hp-batch)")
    p.add_argument('--grid', type=int, default=28, help='patch grid (28: 224 px with patch 8; EAGLE upstream accepts only 28 or 14)')
    p.add_argument('--malloc', choices=['both', 'glibc', 'reuse'], default=None,
                   help="the malloc settings the steps run under, one worker process each: glibc (the C library's defaults, "
                        "untouched), reuse (usseg.core.reuse_freed_memory), both (two workers, steps interleaved: the default on "
                        "a CPU with glibc; elsewhere glibc)")
    p.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    p.add_argument('--variants', nargs='*', choices=['bf16', 'compile'], default=None,
                   help="usseg's step also under bf16 autocast and torch.compile, against the reference's fp32 (default: both on a GPU)")
    p.add_argument('--compile-methods', nargs='*', default=['stego', 'smooseg'], choices=METHODS,
                   help="methods whose usseg step gets the torch.compile variant (HP's per-image loop and EAGLE's per-object medoids "
                        'recompile for every batch; default: stego smooseg)')
    p.add_argument('--out', default=None, help='JSON path (default benchmarks/results/vs_reference_<device>.json)')
    p.add_argument('--markdown', nargs='?', const='', default=None, metavar='JSON',
                   help='print the BENCHMARKS.md table of a results file (default: the one for --device) and exit')
    a = p.parse_args(argv)
    cuda = torch.device(a.device).type == 'cuda'
    a.threads_list = a.threads_list or ([torch.get_num_threads()] if cuda else [1, 2])
    if a.worker: return worker_main(json.loads(a.worker))
    a.malloc = a.malloc or ('both' if not cuda and have_glibc() else 'glibc')
    if a.malloc != 'glibc' and not have_glibc(): p.error(f'--malloc {a.malloc} needs glibc (this C library is not)')
    a.variants = (['bf16', 'compile'] if cuda else []) if a.variants is None else a.variants
    out_path = Path(a.out) if a.out else RESULTS/f'vs_reference_{torch.device(a.device).type}.json'
    if a.markdown is not None:
        src = Path(a.markdown) if a.markdown else out_path
        print(markdown(json.loads(src.read_text()))); return
    roots = resolve_roots(a)
    if not any(r is not None for r in roots.values()):
        print('vs_reference: skipped, no reference checkout given. Fetch mhamilton723/STEGO, hynnsk/HP, mc-lan/SmooSeg and '
              'MICV-yonsei/EAGLE at the commits in shared/reference/methods_stego_family.md and pass --ref-root DIR '
              '(or --ref-stego PATH, ...).')
        return
    result = run_all(a, out_path)
    atomic_write_text(out_path, json.dumps(result, indent=1) + '\n')
    print(f'wrote {out_path}')
    print(markdown(result))


if __name__ == '__main__':
    main()
