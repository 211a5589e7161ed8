"""Issue 18, done when: the CamVid STEGO run of the issue (a timm network as a `Backbone` of your own, STEGO trained on
CamVid val and evaluated on test at a non-square size, the data on a read-only drive, timm imported before usseg) is a
handful of lines of the public API. Here at toy size: a fake CamVid tree of 60 x 80 photos, a random EfficientNet-Lite0
cut at stride 8, 48 x 64 training and evaluation, two steps, in a fresh interpreter, as a user's script would run."""
import ctypes
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import make_fake_tree

#: The user's script: everything after the import lines is what the issue's run needs, and nothing is private.
SCRIPT = textwrap.dedent('''
    try: import timm                         # first, as users do
    except RuntimeError as e: print('import timm first:', e)   # torchvision built for another torch: usseg repairs it below
    import json, sys
    import torch
    import usseg
    import timm
    from usseg.backbones import Backbone
    from usseg.methods import load_run, train

    class Lite0S8(Backbone):
        "timm's EfficientNet-Lite0 up to its last stride-8 stage (random weights here; ImageNet's in the issue)."
        def __init__(self, seed=0):
            torch.manual_seed(seed)
            net = timm.create_model('tf_efficientnet_lite0', pretrained=False, features_only=True, out_indices=(2,))
            super().__init__(net, 'my_lite0_s8', patch_size=8, embed_dim=net.feature_info.channels()[-1])
        def forward(self, img):
            self._check_image(img)
            with self._grad(): return self.model(img)[-1]

    root, out = sys.argv[1], sys.argv[2]
    run = train('stego', 'camvid', root, out, backbone=Lite0S8(), image_size=(48, 64), eval_size=(48, 64), steps=2,
                train_split='val', eval_split='test', smoke=True, device='cpu', progress='none', feature_cache=True)
    res = run.evaluate(save=False)
    again = load_run(out, device='cpu', backbone=Lite0S8())
    x = again.spec.split_dataset('test')[0]['img'][None]
    same = torch.equal(again.task.code(x), run.task.cpu().eval().code(x))
    print(json.dumps({'n_images': res.n_images, 'miou': res.headline['miou'], 'shape': list(x.shape), 'same_code': same}))
''')


def _drop_file_override():
    "In the child, before exec: a root user loses the capabilities that ignore file permissions (so chmod binds it too)."
    if os.geteuid() != 0: return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):                     # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        if libc.prctl(24, cap, 0, 0, 0) != 0: raise OSError(ctypes.get_errno(), 'prctl(PR_CAPBSET_DROP) failed')


def _tree(root:Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob('*'))}


def _set_writable(root:Path, on:bool):
    for p in [root, *root.rglob('*')]:
        m = p.stat().st_mode
        p.chmod(m | stat.S_IWUSR if on else m & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _python(code_or_args, tmp_path, **kw):
    env = {**os.environ, 'USSEG_HOME': str(tmp_path/'home'), 'HF_HUB_OFFLINE': '1', 'MPLBACKEND': 'Agg', 'OMP_NUM_THREADS': '1',
           'PYTHONPATH': str(Path(__file__).parents[1])}
    return subprocess.run([sys.executable, *code_or_args], capture_output=True, text=True, env=env, cwd=tmp_path,
                          preexec_fn=_drop_file_override, timeout=900, check=False, **kw)


def test_camvid_stego_run_through_the_front_door(tmp_path):
    root = make_fake_tree('camvid', tmp_path/'camvid', n=4, size=(60, 80))
    (tmp_path/'user_run.py').write_text(SCRIPT)
    _set_writable(root, False)
    try:
        before = _tree(root)
        probe = _python(['-c', f'open({str(root/"CamVid"/"probe.txt")!r}, "w")'], tmp_path)
        if probe.returncode == 0: pytest.skip('the data folder cannot be made read-only here (a root user that keeps its capabilities)')
        assert 'PermissionError' in probe.stderr, probe.stderr
        r = _python([str(tmp_path/'user_run.py'), str(root), str(tmp_path/'run')], tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        assert _tree(root) == before                                   # nothing written, nothing touched in the data
    finally: _set_writable(root, True)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res['n_images'] == 4 and 0 <= res['miou'] <= 100           # evaluated on the 4 test photos
    assert res['shape'] == [1, 3, 48, 64] and res['same_code'] is True  # at the training aspect ratio; the run reloads
    spec = json.loads((tmp_path/'run'/'config.json').read_text())['task']['spec']
    assert (spec['dataset'], spec['train_split'], spec['eval_split']) == ('camvid', 'val', 'test')
    assert (spec['backbone'], spec['image_size'], spec['eval_size']) == ('my_lite0_s8', [48, 64], [48, 64])
    assert spec['backbone_class'].endswith('Lite0S8')
    assert list((tmp_path/'home'/'cache'/'nns').rglob('*.npz'))         # derived files went to the cache
    assert list((tmp_path/'home'/'cache'/'features').rglob('*'))
