"""The installed `usseg` command: the demo, a train -> evaluate -> predict round trip, your own backbone and a non-square
size through the front door, `--threads` on every command, and one-line errors that write nothing."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

USSEG = shutil.which('usseg') or str(Path(sys.executable).with_name('usseg'))


def run(*args, cwd=None):
    return subprocess.run([USSEG, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=900)


def test_version():
    r = run('--version')
    assert r.returncode == 0 and r.stdout.startswith('usseg ')


def test_demo_writes_figure_and_json(tmp_path):
    r = run('demo', '--out', tmp_path/'out', '--n-images', '8', '--size', '48', '--steps', '4', '--device', 'cpu')
    assert r.returncode == 0, r.stderr
    assert (tmp_path/'out'/'demo.png').read_bytes()[:4] == b'\x89PNG'
    res = json.loads((tmp_path/'out'/'demo.json').read_text())
    assert res['n_images'] == 8 and 0 <= res['miou'] <= 100
    assert res['settings']['steps'] == 4 and (tmp_path/'out'/'stego_run'/'checkpoints'/'last.pt').is_file()
    assert abs(res['gain']['miou'] - (res['stego']['miou'] - res['kmeans']['miou'])) < 1e-9   # the gain over k-means is reported
    assert 'mIoU' in r.stdout and 'over k-means' in r.stdout
    assert 'step 4/4 (100 %)' in r.stdout and f"done in {res['seconds']['total']:.0f} s" in r.stdout   # progress lines in a log, the time
    assert res['settings']['config'] == 'StegoConfig.demo()' and res['settings']['backbone'].startswith('efficientnet_lite0 (ImageNet')


def test_demo_on_a_terminal_shows_bars_not_lines(tmp_path):
    "With stderr a terminal (a pseudo-terminal here) the demo draws tqdm bars there and prints no per-step lines; in a log (the test above) it prints the lines."
    import fcntl
    import os
    import pty
    import struct
    import termios
    import threading
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack('HHHH', 24, 120, 0, 0))   # a terminal 120 columns wide (a new pty has 0)
    chunks = []
    def read():                                 # drain the terminal while the demo writes to it
        while True:
            try: c = os.read(master, 65536)
            except OSError: return
            if not c: return
            chunks.append(c)
    t = threading.Thread(target=read, daemon=True); t.start()
    r = subprocess.run([USSEG, 'demo', '--out', str(tmp_path/'out'), '--n-images', '8', '--size', '48', '--steps', '4', '--device', 'cpu'],
                       stdout=subprocess.PIPE, stderr=slave, text=True, timeout=900)
    os.close(slave); t.join(10); os.close(master)
    err = b''.join(chunks)
    assert r.returncode == 0, err.decode(errors='replace')
    assert 'train: 100%' in err.decode(errors='replace') and '4/4' in err.decode(errors='replace')    # the training bar
    assert 'step 4/4' not in r.stdout and 'done in' in r.stdout                                         # no log lines; the time


def test_demo_on_camvid_trains_on_val_and_scores_test(tmp_path):
    "`usseg demo --dataset camvid`: the pretrained backbone and StegoConfig.camvid() on CamVid photos, trained on val (no train split here) and scored on test (issue 13; a fake tree, 2 steps)."
    from helpers import make_fake_tree
    root = make_fake_tree('camvid', tmp_path/'data', n=3, size=(48, 64))
    for d in ('train', 'trainannot'): shutil.rmtree(root/'CamVid'/d)
    r = run('demo', '--dataset', 'camvid', '--data-root', root, '--out', tmp_path/'out', '--steps', '2', '--device', 'cpu', '--threads', '1')
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path/'out'/'demo.json').read_text())
    assert (res['train_split'], res['eval_split'], res['n_images']) == ('val', 'test', 3)
    assert res['settings']['config'] == 'StegoConfig.camvid()' and res['settings']['image_size'] == [352, 480] and res['settings']['steps'] == 2
    assert 'trained on val (3 frames), scored on test (3 frames)' in r.stdout and 'step 2/2 (100 %)' in r.stdout
    assert (tmp_path/'out'/'demo.png').read_bytes()[:4] == b'\x89PNG' and not (tmp_path/'out'/'data').exists()


def test_train_evaluate_predict_round_trip(tmp_path):
    "usseg train then usseg evaluate --json on synthetic scenes with --weights random --image-size 64 on CPU (issue 5)."
    r = run('train', 'probe', '--dataset', 'synthetic', '--data-root', tmp_path/'data', '--out', tmp_path/'run',
            '--backbone', 'vit_tiny8', '--weights', 'random', '--steps', '6', '--batch-size', '4', '--image-size', '64',
            '--device', 'cpu', '--n-images', '8', '--n-classes', '5')
    assert r.returncode == 0, r.stderr
    assert (tmp_path/'run'/'checkpoints'/'last.pt').is_file() and (tmp_path/'run'/'config.json').is_file()
    r = run('evaluate', tmp_path/'run', '--json', '--device', 'cpu')
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)            # stdout is JSON and nothing else
    assert res['n_images'] == 8 and 0 <= res['acc'] <= 100 and 0 <= res['miou'] <= 100
    assert res['linear']['acc'] >= 0 and len(res['cluster']['assignment']) == 5
    imgs = next((tmp_path/'data'/'synthetic').iterdir())/'val'/'img'
    r = run('predict', tmp_path/'run', imgs, '--out', tmp_path/'pred', '--device', 'cpu')
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path/'pred').glob('*_overlay.png'))) == 8


@pytest.mark.parametrize('args', [
    ['demo', '--size', '4'], ['demo', '--n-images', '0'], ['demo', '--size', 'x'], ['demo', '--bogus'], ['nope'], [],
    ['demo', '--dataset', 'camvid'], ['demo', '--dataset', 'camvid', '--data-root', 'missing'], ['demo', '--size', '40'],
    ['train', 'stego', '--dataset', 'synthetic'],                                     # --out missing
    ['train', 'probe', '--dataset', 'nowhere', '--out', 'r'],                         # unknown dataset
    ['train', 'probe', '--dataset', 'synthetic', '--out', 'r', '--weights', 'w.pth'],  # no such weights file
    ['train', 'probe', '--dataset', 'camvid', '--data-root', 'missing', '--out', 'r', '--weights', 'random', '--backbone', 'vit_tiny8'],
    ['train', 'no_such_method', '--dataset', 'synthetic', '--out', 'r', '--weights', 'random'],     # no such method
    ['train', 'stego', '--dataset', 'synthetic', '--out', 'r', '--weights', 'random', '--backbone', 'vit_tiny8', '--set', 'unknown_key=1'],
    ['train', 'hp', '--dataset', 'synthetic', '--out', 'r', '--weights', 'random', '--backbone', 'vit_tiny8', '--set', 'in_dim=8'],
    ['evaluate', 'no_run'], ['predict', 'no_run', 'x.png', '--out', 'o'],
    ['baseline', '--dataset', 'camvid', '--data-root', 'missing', '--weights', 'random'],
    ['data', 'prepare', 'cityscapes27', '--root', 'd', '--no-download'],
    ['train', 'probe', '--dataset', 'synthetic', '--out', 'r', '--weights', 'random', '--backbone', 'vit_tiny8', '--image-size', '48', '50'],
    ['train', 'probe', '--dataset', 'synthetic', '--out', 'r', '--weights', 'random', '--backbone', 'no_module_here:build'],
    ['baseline', '--dataset', 'synthetic', '--weights', 'random', '--image-size', '48x'],
    ['evaluate', 'no_run', '--threads', '0'],
])
def test_bad_arguments_one_line_nothing_written(tmp_path, args):
    r = run(*args, cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and 'error' in lines[0], r.stderr
    assert not (tmp_path/'r').exists() and not (tmp_path/'o').exists() and not (tmp_path/'usseg_demo').exists()
    if '--set' in args: assert 'its settings are: dim, dropout, extra_clusters, lr, cluster_lr' in lines[0], lines[0]   # the keys that exist


MY_BACKBONES = """
import torch
from torch import nn
from usseg.backbones import Backbone

class PatchConv(Backbone):
    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        model = nn.Conv2d(3, 16, 8, 8)
        with torch.no_grad():
            for p in model.parameters(): p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        super().__init__(model, 'patch_conv', patch_size=8, embed_dim=16)
    def forward(self, img):
        self._check_image(img)
        with self._grad(): return self.model(img)

def build(seed=0): return PatchConv(seed)
"""


def test_own_backbone_wide_images_curves(tmp_path):
    "--backbone module:factory (a module in the current folder), --image-size H W and HxW, curves.png; evaluate rebuilds the backbone."
    (tmp_path/'my_backbones.py').write_text(MY_BACKBONES)
    data = ('--dataset', 'synthetic', '--data-root', tmp_path/'data', '--n-images', '8', '--n-classes', '5', '--device', 'cpu')
    r = run('train', 'stego', *data, '--out', tmp_path/'run', '--backbone', 'my_backbones:build', '--smoke', '--steps', '3',
            '--image-size', '48', '80', '--threads', '1', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path/'run'/'curves.png').read_bytes()[:4] == b'\x89PNG' and 'curves in' in r.stdout
    spec = json.loads((tmp_path/'run'/'config.json').read_text())['task']['spec']
    assert (spec['backbone'], spec['image_size'], spec['eval_size'], spec['backbone_class']) == ('my_backbones:build', [48, 80], [48, 80], '')
    r = run('evaluate', tmp_path/'run', '--json', '--device', 'cpu', '--threads', 'auto', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)['n_images'] == 8
    r = run('baseline', *data, '--backbone', 'my_backbones:build', '--image-size', '48x80', '--json', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)['settings']['image_size'] == [48, 80]


@pytest.mark.parametrize('args,threads', [(['evaluate', 'no_run', '--threads', '3'], 3), (['evaluate', 'no_run'], None),
                                          (['predict', 'no_run', 'x.png', '--out', 'o', '--threads', 'auto'], 'auto'),
                                          (['baseline', '--dataset', 'camvid', '--data-root', 'missing', '--threads', '2'], 2),
                                          (['train', 'probe', '--dataset', 'synthetic', '--out', 'r', '--weights', 'w.pth', '--threads', '2'], 2),
                                          (['data', 'prepare', 'cityscapes27', '--root', 'd', '--no-download', '--threads', '1'], 1),
                                          (['demo', '--size', '20', '--threads', '2'], 2)])
def test_threads_set_once_at_start(monkeypatch, tmp_path, args, threads):
    "Every command takes --threads and calls usseg.core.set_threads once, before its work (None: $USSEG_NUM_THREADS or auto)."
    import usseg.core
    from usseg.cli import main
    calls = []
    monkeypatch.setattr(usseg.core, 'set_threads', lambda n=None: calls.append(n))
    monkeypatch.chdir(tmp_path)
    if args[0] == 'train': (tmp_path/'w.pth').write_bytes(b'not a checkpoint')
    assert main(args) == 2                      # each fails on its input, after setting the threads
    assert calls == [threads]


def test_baseline_on_real_camvid():
    "`usseg baseline --dataset camvid` on the real CamVid copy with a random ViT-S/8 (issue 4; small here, full run in the notes)."
    from usseg.data import shared_data
    root = shared_data('camvid_segnet')
    if root is None: pytest.skip('the CamVid copy (../shared/data/camvid_segnet, or $USSEG_SHARED_DATA) is not present')
    r = run('baseline', '--dataset', 'camvid', '--data-root', root, '--backbone', 'dino_vits8', '--weights', 'random', '--split', 'val',
            '--image-size', '64', '--max-images', '6', '--device', 'cpu', '--json')
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res['n_images'] == 6 and res['settings']['fit']['split'] == 'test' and not res['settings']['fit']['transductive']
    assert len(res['cluster']['iou']) == 11 and 0 < res['acc'] < 100


def test_camvid_cli_equals_python_api(tmp_path):
    "CamVid without a train split (the shared copy): `usseg baseline` and `usseg train stego` + `usseg evaluate` give the Python API's numbers for the same seed, training on val and reporting test (issue 13; toy size, random weights)."
    import torch
    from helpers import make_fake_tree
    from usseg.backbones import load_backbone
    from usseg.data import get_dataset
    from usseg.data.transforms import EvalTransform
    from usseg.evaluate import baseline
    from usseg.methods import train
    torch.set_num_threads(1)
    root = make_fake_tree('camvid', tmp_path/'data', n=4, size=(48, 64))
    for d in ('train', 'trainannot'): shutil.rmtree(root/'CamVid'/d)
    common = ('--data-root', root, '--backbone', 'vit_tiny8', '--weights', 'random', '--seed', '1', '--device', 'cpu', '--threads', '1')
    r = run('baseline', '--dataset', 'camvid', '--image-size', '32', '--json', *common)
    assert r.returncode == 0, r.stderr
    cli = json.loads(r.stdout)
    assert (cli['settings']['split'], cli['settings']['fit']['split']) == ('test', 'val')
    ds = lambda s: get_dataset('camvid', root, s, transform=EvalTransform(32))
    api = baseline(load_backbone('vit_tiny8', weights='random', seed=1), ds('val'), ds('test'), seed=1, device='cpu')
    assert abs(cli['miou'] - api.miou) < 1e-3 and abs(cli['acc'] - api.acc) < 1e-3, (cli['miou'], api.miou)
    r = run('train', 'stego', '--dataset', 'camvid', '--out', tmp_path/'cli', '--smoke', '--image-size', '32', '--eval-size', '32', *common)
    assert r.returncode == 0, r.stderr
    r = run('evaluate', tmp_path/'cli', '--json', '--device', 'cpu', '--threads', '1')
    assert r.returncode == 0, r.stderr
    cli = json.loads(r.stdout)
    run_ = train('stego', 'camvid', root, tmp_path/'api', backbone='vit_tiny8', weights='random', seed=1, smoke=True, image_size=32,
                 eval_size=32, device='cpu', progress='none')
    assert (run_.spec.train_split, run_.spec.eval_split) == ('val', 'test')
    api = run_.evaluate(save=False, device='cpu')
    assert abs(cli['cluster']['miou'] - api.cluster['miou']) < 1e-3 and abs(cli['cluster']['acc'] - api.cluster['acc']) < 1e-3, \
        (cli['cluster'], api.cluster)
