"""Images per second of one training step of the learner: a frozen ViT-S/8 (random weights), STEGO's head
(384 -> 70, a linear 1x1 conv plus a 1x1 MLP) and a linear probe (70 -> 27) trained with cross-entropy.

The time covers `Learner.train_step` on a batch already on the device: the frozen forward pass, the head,
the loss, backward, two Adam steps and the logging collective. Data loading is not included.

    python benchmarks/train_step.py                                   # CPU, fp32, eager (short run)
    python benchmarks/train_step.py --device cuda --precision fp32 bf16 --compile   # eager and compiled, fp32 and bf16

Writes benchmarks/results/train_step_<device>.json (one entry per precision and compile setting).
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import usseg  # noqa: F401  (compat shim before timm)
import timm
from usseg.core import atomic_write_text, default_device, set_seed
from usseg.learner import Learner, TrainConfig

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]/'tests'))
from _common import time_train_steps  # noqa: E402
from helpers import ProbeTask  # noqa: E402  (test scaffolding: tests/helpers.py)


class ViTFeatures(nn.Module):
    "A timm ViT as a frozen feature extractor: (B, 3, H, W) -> (B, C, H/p, W/p), the last block after the final norm."
    def __init__(self, vit):
        super().__init__()
        self.vit, self.patch = vit, vit.patch_embed.patch_size[0]
    def forward(self, x):
        t = self.vit.forward_features(x)[:, self.vit.num_prefix_tokens:]  # (B, h*w, C)
        return t.transpose(1, 2).reshape(len(x), -1, x.shape[-2]//self.patch, x.shape[-1]//self.patch)


class RandomScenes(torch.utils.data.Dataset):
    "Random images and labels of the benchmark's size (the loop never reads them: batches are fed directly)."
    def __init__(self, n, size, n_classes): self.n, self.size, self.k = n, size, n_classes
    def __len__(self): return self.n
    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {'img': torch.randn(3, self.size, self.size, generator=g),
                'label': torch.randint(0, self.k, (self.size, self.size), generator=g), 'index': i}


def measure(device, precision, compiled, batch_size, image_size, steps, warmup, n_classes=27):
    # torch.compile specialises on the int `step` once, then recompiles it as dynamic: warm up past both compilations
    if compiled: warmup = max(warmup, 3)
    set_seed(0)
    vit = timm.create_model('vit_small_patch8_224', pretrained=False, num_classes=0, dynamic_img_size=True)
    task = ProbeTask(ViTFeatures(vit), n_feats=vit.num_features, n_classes=n_classes, dim=70, head='nonlinear')
    data = RandomScenes(batch_size, image_size, n_classes)
    with tempfile.TemporaryDirectory() as d:
        cfg = TrainConfig(max_steps=steps + warmup, batch_size=batch_size, precision=precision, compile=compiled,
                          device=str(device), progress='none', n_samples=0)
        learner = Learner(task, data, d, cfg).setup()
        batch = {k: v.to(learner.device) for k, v in torch.utils.data.default_collate([data[i] for i in range(batch_size)]).items()}
        timed = time_train_steps(learner, batch, warmup, steps)
        dt = timed.pop('sec_per_step')
    res = {'precision': precision, 'compile': compiled, 'img_per_s': round(batch_size/dt, 2), 'sec_per_step': round(dt, 4),
           'steps_timed': steps, 'warmup_steps': warmup, **timed}
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cpu', help='cpu, cuda or auto (default: %(default)s)')
    p.add_argument('--precision', nargs='+', default=['fp32'], choices=['fp32', 'bf16', 'fp16'])
    p.add_argument('--compile', action='store_true', help='also measure torch.compile (besides eager)')
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--image-size', type=int, default=224)
    p.add_argument('--steps', type=int, default=3, help='timed steps per setting')
    p.add_argument('--warmup', type=int, default=1, help='untimed steps first (at least 3 with --compile: compilation happens here)')
    p.add_argument('--threads', type=int, default=0, help='CPU threads (0: PyTorch default)')
    p.add_argument('--out', default=None, help='JSON path (default: benchmarks/results/train_step_<device>.json)')
    a = p.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    device = default_device(a.device)
    load_before, results = os.getloadavg()[0], []
    for precision in a.precision:
        for compiled in ([False, True] if a.compile else [False]):
            r = measure(device, precision, compiled, a.batch_size, a.image_size, a.steps, a.warmup)
            print(json.dumps(r), flush=True)
            results.append(r)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else (platform.processor() or platform.machine())
    out = {'benchmark': 'learner train step', 'model': 'frozen vit_small_patch8_224 (random weights) + head 384->70 '
           '(linear + MLP) + linear probe 70->27, cross-entropy, 2 Adam optimisers',
           'device': device.type, 'device_name': name, 'cpu_threads': torch.get_num_threads(), 'cpu_count': os.cpu_count(),
           'load_average_1min': [round(load_before, 2), round(os.getloadavg()[0], 2)],  # before / after: other jobs share the CPU
           'batch_size': a.batch_size,
           'image_size': a.image_size, 'torch': torch.__version__, 'python': sys.version.split()[0],
           'date': time.strftime('%Y-%m-%d'), 'results': results}
    path = Path(a.out or Path(__file__).parent/'results'/f'train_step_{device.type}.json')
    atomic_write_text(path, json.dumps(out, indent=1) + '\n')
    print('wrote', path)


if __name__ == '__main__':
    main()
