"""Every notebook follows the course anatomy, stays small, and keeps the rules nbdev's docs build relies on."""
import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (ROOT/'nbs').glob('*.ipynb') if not p.name.startswith('_'))


def cells(nb_path):
    return json.loads(nb_path.read_text(encoding='utf-8'))['cells']


def src(c): return ''.join(c['source']) if isinstance(c['source'], list) else c['source']


@pytest.mark.parametrize('nb', NOTEBOOKS, ids=lambda p: p.name)
def test_anatomy(nb):
    cs = cells(nb)
    title = src(cs[0])
    assert cs[0]['cell_type'] == 'markdown' and re.match(r'^# \S', title), 'first cell: `# Title`'
    assert re.search(r'^> \S', title, re.M), 'first cell: `> one-line summary` under the title'
    badge = src(cs[1])
    assert 'colab.research.google.com' in badge and f'nbs/{nb.name}' in badge, 'second cell: Colab badge for this notebook'
    colab = src(cs[2])
    assert cs[2]['cell_type'] == 'code' and '#| hide' in colab and '/content' in colab and 'pip install' in colab, \
        'third cell: hidden install cell that runs only on Colab'


@pytest.mark.parametrize('nb', NOTEBOOKS, ids=lambda p: p.name)
def test_clean_and_small(nb):
    assert nb.stat().st_size < 1_500_000, f'{nb.name} is {nb.stat().st_size/1e6:.1f} MB: keep committed outputs small'
    for c in cells(nb):
        if c['cell_type'] == 'code':
            assert c.get('execution_count') is None, 'run nbdev_clean'
            for o in c.get('outputs', []):
                assert 'application/vnd.jupyter.widget-view+json' not in o.get('data', {}), 'widget state in outputs'


@pytest.mark.parametrize('nb', NOTEBOOKS, ids=lambda p: p.name)
def test_imports_in_their_own_cells(nb):
    "nbdev runs every cell that contains an import when it builds the docs: such cells must hold only imports."
    for c in cells(nb):
        if c['cell_type'] != 'code': continue
        s = src(c)
        if s.lstrip().startswith(('!', '%')) or not s.strip(): continue
        body = '\n'.join(l for l in s.splitlines() if not l.lstrip().startswith(('#', '!', '%')))
        try: tree = ast.parse(body)
        except SyntaxError: continue
        stmts = tree.body
        has_import = any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in stmts)
        if not has_import: continue
        is_export_last = 'nbdev_export' in s
        others = [n for n in stmts if not isinstance(n, (ast.Import, ast.ImportFrom))]
        assert not others or is_export_last or '#| export' in s or '#|export' in s, \
            f'{nb.name}: a cell mixes imports and code:\n{s[:300]}'
