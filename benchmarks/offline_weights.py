"""How long `timm.create_model(name, pretrained=True)` takes to fail offline (HF_HUB_OFFLINE=1) after `import usseg`.

    HF_HUB_OFFLINE=1 python benchmarks/offline_weights.py   ->  benchmarks/results/offline_weights.json
"""
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

CODE = """
import time, usseg, timm
t = time.perf_counter()
try: timm.create_model('vit_small_patch8_224.dino', pretrained=True)
except usseg.WeightsNotFoundError: print(time.perf_counter() - t)
"""

def main(repeats=5):
    env = {**os.environ, 'HF_HUB_OFFLINE': '1'}
    times = [float(subprocess.run([sys.executable, '-c', CODE], capture_output=True, text=True, env=env, check=True).stdout)
             for _ in range(repeats)]
    res = {'what': 'seconds from create_model(pretrained=True) to WeightsNotFoundError, offline',
           'median_s': round(statistics.median(times), 3), 'all_s': [round(t, 3) for t in times],
           'cpu': platform.processor() or platform.machine(), 'n_cpus': os.cpu_count(),
           'load_avg_1m': os.getloadavg()[0]}
    from usseg.core import atomic_write_text   # imported here: the timed subprocesses import usseg themselves
    out = Path(__file__).parent/'results'/'offline_weights.json'
    atomic_write_text(out, json.dumps(res, indent=1) + '\n')
    print(json.dumps(res))

if __name__ == '__main__': main()
