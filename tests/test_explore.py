"""Explorers: no notebook commits widget state, the strip tool removes it, and an explorer redraws headless."""
import json
from pathlib import Path

import matplotlib.pyplot as plt

import strip_widgets
from usseg.explore import explorer, slider, dropdown

ROOT = Path(__file__).resolve().parents[1]


def test_no_notebook_commits_widget_state():
    bad = [p.name for p in sorted((ROOT/'nbs').glob('*.ipynb'))
           if strip_widgets.widget_outputs(json.loads(p.read_text(encoding='utf-8')))]
    assert not bad, f'widget outputs or state in {bad}: run python tools/strip_widgets.py on them'


def test_strip_keeps_figures(tmp_path):
    fig_out = {'output_type': 'display_data', 'metadata': {}, 'data': {'image/png': 'iVBORw0KGgo=', 'text/plain': '<Figure>'}}
    widget_out = {'output_type': 'execute_result', 'metadata': {}, 'execution_count': 3,
                  'data': {strip_widgets.WIDGET_MIME: {'model_id': 'abc', 'version_major': 2, 'version_minor': 0}, 'text/plain': 'VBox()'}}
    nb = {'cells': [{'cell_type': 'code', 'id': 'a', 'metadata': {}, 'execution_count': 3, 'source': 'w',
                     'outputs': [fig_out, widget_out]}],
          'metadata': {'widgets': {'application/vnd.jupyter.widget-state+json': {}}}, 'nbformat': 4, 'nbformat_minor': 5}
    p = tmp_path/'x.ipynb'; p.write_text(json.dumps(nb))
    assert strip_widgets.main(['--check', str(p)]) == 1
    assert strip_widgets.strip_file(p) == 2
    back = json.loads(p.read_text())
    assert back['cells'][0]['outputs'] == [fig_out] and 'widgets' not in back['metadata']
    assert strip_widgets.main(['--check', str(p)]) == 0


def test_explorer_redraws_on_every_control():
    plt.close('all')
    seen = []
    def draw(k=1, name='a'):
        seen.append((k, name)); fig, ax = plt.subplots(); ax.set_title(f'{name}{k}'); return fig
    w = explorer(draw, {'k': slider('k', 1, 9, 3), 'name': dropdown('name', ['a', 'b'])})
    w.controls['k'].value = 7
    w.controls['name'].value = 'b'
    assert seen == [(3, 'a'), (7, 'a'), (7, 'b')]
    assert [c[0] for c in w.calls] == [{'k': 3, 'name': 'a'}, {'k': 7, 'name': 'a'}, {'k': 7, 'name': 'b'}]
    assert all(dt >= 0 for _, dt in w.calls)
    assert plt.get_fignums() == [], 'the explorer must close each figure it shows (else inline backends draw it twice)'


# ---- the course's explorers: every control of every explorer redraws a different figure (headless) ----
import matplotlib.text
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from usseg.explore import (demo_photos, kmeans_explorer, crf_explorer, eicue_explorer, correlation_explorer,
                           saliency_explorer, cam_explorer, train_stego_head)


def _render(fig) -> np.ndarray:
    "The figure's pixels with every text hidden: a control must change the picture, not only echo its value in a title."
    for t in fig.findobj(matplotlib.text.Text): t.set_visible(False)
    fig.canvas.draw()
    a = np.asarray(fig.canvas.buffer_rgba()).copy()
    plt.close(fig)
    return a


def _check_every_control(w, moves: dict):
    "Move each control in turn (what the browser does); each move must redraw with the new value and change the figure."
    assert set(moves) == set(w.controls), f'the test must move every control: {sorted(w.controls)}'
    for name, value in moves.items():
        before = _render(w.draw(**w.calls[-1][0]))
        n = len(w.calls)
        w.controls[name].value = value
        assert len(w.calls) == n + 1, f'moving {name} did not redraw'
        assert w.calls[-1][0][name] == value
        after = _render(w.draw(**w.calls[-1][0]))
        assert before.shape != after.shape or (before != after).any(), f'moving {name} to {value!r} drew the same figure'
    assert plt.get_fignums() == []


@pytest.fixture(scope='module')
def small():
    "Three synthetic scenes, the features of a fixed random conv net (stride 8), cluster logits."
    torch.manual_seed(0)
    photos = demo_photos(3, root='/nonexistent', size=(64, 96))
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 8, stride=8), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 1)).eval()
    with torch.no_grad(): feats = net(photos.img)                           # (3, 16, 8, 12)
    return photos, feats


def test_kmeans_explorer(small):
    photos, feats = small
    _check_every_control(kmeans_explorer(photos, feats), {'k': 9, 'metric': 'euclidean'})


def test_crf_explorer(small):
    photos, feats = small
    logits = F.log_softmax(torch.randn(4, 8, 12, generator=torch.Generator().manual_seed(0))*3, 0)
    _check_every_control(crf_explorer(photos.img[0], logits),
                         {'bi_sxy': 20.0, 'bi_srgb': 20.0, 'bi_compat': 9.0, 'gauss_sxy': 6.0, 'gauss_compat': 0.0, 'n_iter': 0})


def test_eicue_explorer(small):
    photos, feats = small
    _check_every_control(eicue_explorer(photos, feats), {'image': 2, 'k': 6, 'clusters': 3})


def test_correlation_explorer(small):
    photos, feats = small
    head = train_stego_head(feats, dim=8, steps=5)
    torch.manual_seed(1)
    with torch.no_grad(): after = head(feats)
    before = torch.randn_like(after)
    _check_every_control(correlation_explorer(photos, feats, before, after), {'image': 1, 'row': 2, 'col': 3})


def test_saliency_explorer(small):
    photos, _ = small
    g = torch.Generator().manual_seed(0)
    maps = {'a': torch.rand(3, 1, 8, 12, generator=g), 'b': torch.zeros(3, 1, 8, 12)}
    maps['b'][:, :, 1:5, 1:6] = 0.9; maps['b'][:, :, 6, 9:11] = 0.6             # a big blob and a small one (2 % of the image)
    fg = photos.label >= 2
    _check_every_control(saliency_explorer(photos, maps, fg, photos.label >= 0),
                         {'prior': 'b', 'image': 1, 'threshold': 0.3, 'min_area': 0.05})


def test_cam_explorer(small):
    photos, _ = small
    g = torch.Generator().manual_seed(0)
    cams = torch.rand(3, 2, 64, 96, generator=g)
    y = torch.tensor([[1, 1], [1, 0], [0, 1]])
    gts = torch.randint(0, 3, (3, 64, 96), generator=g)
    _check_every_control(cam_explorer(photos.img, cams, y, gts, ['a', 'b']), {'image': 2, 'thr': 0.6})
