"""Shared bits of the benchmark scripts: machine description and writing results."""
import json
import os
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent/'results'


def machine() -> dict:
    "What the numbers were measured on (the load average matters: these CPUs are shared)."
    return {'cpu_count': os.cpu_count(), 'torch_threads': torch.get_num_threads(), 'torch': torch.__version__,
            'python': platform.python_version(), 'processor': platform.processor() or platform.machine(),
            'cuda': torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            'load_average_1_5_15': [round(x, 2) for x in os.getloadavg()], 'date': time.strftime('%Y-%m-%d %H:%M:%S')}


def write(name: str, result: dict) -> Path:
    "Write `result` as `results/<name>.json`, or to `name` itself when it is a path ending in `.json`."
    from usseg.core import atomic_write_text
    p = Path(name) if name.endswith('.json') else RESULTS/f'{name}.json'
    atomic_write_text(p, json.dumps(result, indent=1) + '\n')
    print(f'wrote {p}')
    return p


def timeit(fn, repeat: int = 3, warmup: int = 1) -> dict:
    "Median and min wall time of `fn()` in seconds."
    for _ in range(warmup): fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    ts.sort()
    return {'median_s': round(ts[len(ts)//2], 4), 'min_s': round(ts[0], 4), 'repeat': repeat}


def cpu_model() -> str:
    "The CPU's model name (from /proc/cpuinfo where there is one)."
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'): return line.split(':', 1)[1].strip()
    except OSError: pass
    return platform.processor() or 'unknown'


def time_train_steps(learner, batch: dict, warmup: int, steps: int) -> dict:
    "Seconds per `learner.train_step(batch)` after `warmup` untimed steps (CUDA synchronised; peak memory reset after warm-up)."
    cuda = learner.device.type == 'cuda'
    t0 = time.perf_counter()
    for _ in range(warmup): learner.train_step(batch)
    if cuda: torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    t1 = time.perf_counter()
    for _ in range(steps): logs = learner.train_step(batch)
    if cuda: torch.cuda.synchronize()
    out = {'sec_per_step': (time.perf_counter() - t1)/steps, 'warmup_sec': round(t1 - t0, 2), 'final_loss': round(logs['loss'], 4)}
    if cuda: out['peak_memory_gib'] = round(torch.cuda.max_memory_allocated()/2**30, 2)
    return out
