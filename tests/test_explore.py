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
