"""Your own photos, end to end on CPU with the offline backbone (the own-photos tutorial, nbs/60_tutorial.own_images):
a folder of real photos (CamVid test photos copied into a temporary folder stand in for yours) -> usseg train
--dataset folder -> usseg evaluate (the folder has label maps) -> usseg predict on a flat folder of photos without
labels -> a mask, a colour mask and an overlay per photo."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

USSEG = shutil.which('usseg') or str(Path(sys.executable).with_name('usseg'))


def run(*args):
    return subprocess.run([USSEG, *map(str, args)], capture_output=True, text=True, timeout=900)


def own_folder(camvid: Path, dest: Path, n_train: int = 8, n_val: int = 4) -> list:
    "Copy CamVid test photos into `dest/imgs/<split>` and their labels into `dest/labels/<split>` (void 11 -> 255, ignored)."
    photos = sorted((camvid/'CamVid'/'test').glob('*.png'))[::20][:n_train + n_val]
    for split, files in (('train', photos[:n_train]), ('val', photos[n_train:])):
        (dest/'imgs'/split).mkdir(parents=True); (dest/'labels'/split).mkdir(parents=True)
        for f in files:
            shutil.copy(f, dest/'imgs'/split/f.name)
            lab = np.array(Image.open(camvid/'CamVid'/'testannot'/f.name)); lab[lab == 11] = 255
            Image.fromarray(lab).save(dest/'labels'/split/f.name)
    return photos


@pytest.mark.timeout(900)
def test_own_photos_train_evaluate_predict(tmp_path):
    from usseg.data import shared_data
    camvid = shared_data('camvid_segnet')
    if camvid is None: pytest.skip('the CamVid copy (../shared/data/camvid_segnet, or $USSEG_SHARED_DATA) is not present')
    photos = own_folder(camvid, tmp_path/'mine')
    r = run('train', 'stego', '--dataset', 'folder', '--data-root', tmp_path/'mine', '--out', tmp_path/'run',
            '--backbone', 'efficientnet_lite0', '--steps', '10', '--batch-size', '4', '--image-size', '160',
            '--device', 'cpu', '--threads', '1', '--save-every', '0')
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path/'run'/'checkpoints'/'last.pt').is_file() and (tmp_path/'run'/'curves.png').is_file()
    r = run('evaluate', tmp_path/'run', '--device', 'cpu', '--json')
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout)
    assert res['n_images'] == 4 and len(res['cluster']['iou']) == 11 and 0 < res['acc'] <= 100   # 11 classes: void ignored
    flat = tmp_path/'just_photos'; flat.mkdir()                        # photos as a camera leaves them: no labels, one folder
    for f in photos[-3:]: shutil.copy(f, flat/f.name)
    r = run('predict', tmp_path/'run', flat, '--out', tmp_path/'pred', '--device', 'cpu')
    assert r.returncode == 0, r.stderr[-3000:]
    for f in photos[-3:]:
        for kind in ('mask', 'color', 'overlay'):
            p = tmp_path/'pred'/f'{f.stem}_{kind}.png'
            assert p.is_file(), f'{p.name} missing: {sorted(x.name for x in (tmp_path/"pred").iterdir())}'
        m = np.array(Image.open(tmp_path/'pred'/f'{f.stem}_mask.png'))
        assert m.shape == (240, 320) and m.max() < 11     # a class id per pixel; the 360 x 480 photo shrunk to 2 x the eval size, 160
