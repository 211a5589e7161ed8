"""An explorer in JupyterLab 4, driven in headless Chromium: the widgets render, and moving a control redraws.

The notebook here is small (no features, no photos) so that the check fits in CI's budget; the explorers of the
course pages are checked the same way by hand with `python tests/jupyter_browser.py nbs/PAGE.ipynb --screenshots DIR`.
"""
import json
import os

import pytest

from docs_check import find_chromium
from jupyter_browser import check_notebook

needs_browser = pytest.mark.skipif(find_chromium() is None and not os.environ.get('USSEG_REQUIRE_BROWSER'),
                                   reason="Debian's chromium is not installed (CI installs it; set USSEG_REQUIRE_BROWSER=1 to fail instead)")

CELLS = [
    "%matplotlib inline\nimport matplotlib.pyplot as plt\nimport numpy as np",
    "from usseg.explore import explorer, slider, dropdown",
    "def draw(k=2, colour='C0'):\n"
    "    fig, ax = plt.subplots(figsize=(3, 1.5))\n"
    "    x = np.linspace(0, 1, 50)\n"
    "    ax.plot(x, x**k, color=colour); ax.set_title(f'x^{k}')\n"
    "    return fig",
    "w = explorer(draw, {'k': slider('power', 1, 6, 2), 'colour': dropdown('colour', ['C0', 'C1', 'C2'])}, title='a test')\nw",
]


def _notebook(path):
    cells = [{'cell_type': 'code', 'id': f'c{i}', 'metadata': {}, 'execution_count': None, 'outputs': [], 'source': s}
             for i, s in enumerate(CELLS)]
    path.write_text(json.dumps({'cells': cells, 'metadata': {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}},
                                'nbformat': 4, 'nbformat_minor': 5}))


@needs_browser
@pytest.mark.timeout(300)
def test_explorer_redraws_in_jupyterlab(tmp_path):
    nb = tmp_path/'explore_check.ipynb'
    _notebook(nb)
    r = check_notebook(nb, screenshots=os.environ.get('USSEG_SCREENSHOTS'), timeout=float(os.environ.get("USSEG_BROWSER_TIMEOUT", 180)))
    assert not r.errors, r.errors
    assert len(r.explorers) == 1, f'expected one explorer, found {len(r.explorers)}'
    ctrls = r.explorers[0].controls
    assert [(c[0], c[1]) for c in ctrls] == [('power', 'slider'), ('colour', 'menu')], ctrls
    assert all(c[2] for c in ctrls), f'a control did not redraw the figure: {ctrls}'
    assert all('redrawn in' in c[4] for c in ctrls), ctrls
    assert nb.read_text() == nb.read_text() and not list(tmp_path.glob('_browser_check_*')), 'the copy was not removed'
