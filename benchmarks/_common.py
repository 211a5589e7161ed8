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
    from usseg.core import atomic_write_text
    p = RESULTS/f'{name}.json'
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
