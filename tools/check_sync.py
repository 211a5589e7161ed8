#!/usr/bin/env python
"""Fail if `nbdev_export`, `nbdev_clean` or the README generation would change any file, or if `usseg/` has unused imports.

    python tools/check_sync.py

Runs the three generators and compares the generated and cleaned files before and after, so it works
in a clean clone (CI) and in a working tree with uncommitted edits alike. Then runs `ruff check --select F401,F811 usseg`
(an unused or redefined import): fix it in the notebook the module comes from; a name re-exported on purpose goes in
the module's `__all__` (nbdev: `_all_ = [...]`). Last, it refuses a notebook cell that mixes imports with other
code: the docs build (nbdev) executes every cell that imports, without the cells before it, so such a cell
fails there while `nbdev_test` passes.
"""
import ast
import json
import re
import hashlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WATCH = ['usseg', 'nbs', 'README.md', 'README_files']


def snapshot() -> dict:
    out = {}
    for w in WATCH:
        p = ROOT/w
        files = [p] if p.is_file() else sorted(f for f in p.rglob('*') if f.is_file() and '__pycache__' not in f.parts) if p.exists() else []
        for f in files: out[str(f.relative_to(ROOT))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def mixed_import_cells(nbs:Path=ROOT/'nbs') -> list:
    "Code cells nbdev's docs build would execute alone (they import) that also run other code: `notebook cell N: first line`."
    bad = []
    for f in sorted(nbs.glob('*.ipynb')):
        for i, c in enumerate(json.loads(f.read_text())['cells']):
            s = ''.join(c['source'])
            if c['cell_type'] != 'code' or 'nbdev_export()' in s: continue
            if re.search(r'^#\|\s*(export|exports|exporti|exec_doc|eval:\s*false)', s, re.M): continue
            try: nodes = list(ast.walk(ast.parse('\n'.join(l for l in s.splitlines() if not l.lstrip().startswith(('%', '!'))))))
            except SyntaxError: continue
            if any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in nodes) and any(isinstance(n, (ast.Expr, ast.Assign)) for n in nodes):
                bad.append(f'{f.name} cell {i}: {s.splitlines()[0][:70]}')
    return bad


LINT = [sys.executable, '-m', 'ruff', 'check', '--select', 'F401,F811', '--output-format', 'concise', 'usseg']

STEPS = [('nbdev_export', ['nbdev_export']),
         ('nbdev_clean', ['nbdev_clean']),
         ('README generation', [sys.executable, str(ROOT/'tools'/'readme.py')])]


def main():
    bad = False
    for name, cmd in STEPS:
        before = snapshot()
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if r.returncode:
            print(f'{name} failed:\n{r.stdout}{r.stderr}', file=sys.stderr); return 1
        after = snapshot()
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        if changed:
            bad = True
            print(f'{name} changed {len(changed)} file(s): ' + ', '.join(changed[:20]), file=sys.stderr)
    r = subprocess.run(LINT, cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        print(f'ruff: unused or redefined imports in usseg/ (fix the notebooks they come from; a name re-exported on '
              f'purpose goes in `_all_`):\n{r.stdout}{r.stderr}', file=sys.stderr)
        if not bad: return 1
    mixed = mixed_import_cells()
    if mixed:
        print('cells that import and also run other code (the docs build runs them without the cells before them, '
              'and fails): move the imports into a cell of their own:\n  ' + '\n  '.join(mixed), file=sys.stderr)
        if not bad: return 1
    if bad:
        print('The notebooks, the package and README.md are out of sync: run `nbdev_export && nbdev_clean && make readme` '
              'and commit the result.', file=sys.stderr)
        return 1
    print('in sync: nbdev_export, nbdev_clean and the README generation change nothing; no unused imports in usseg/')
    return 0


if __name__ == '__main__': sys.exit(main())
