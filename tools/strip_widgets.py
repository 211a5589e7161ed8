#!/usr/bin/env python
"""Remove widget outputs and widget state from notebooks, keeping every other output (the static figures).

    python tools/strip_widgets.py nbs/30_cluster.ipynb [...]
    python tools/strip_widgets.py --check nbs/*.ipynb      # exit 1 and name the notebooks that hold widget state

An explorer (`usseg.explore.explorer`) executed by nbconvert leaves a widget view in its cell's outputs and the
widgets' state in the notebook's metadata: neither renders in the docs, and both change on every run. The page
shows the draw function's figure for the default setting as a normal output instead. Notebooks are written
atomically.
"""
import json
import os
import sys
import tempfile
from pathlib import Path

WIDGET_MIME = 'application/vnd.jupyter.widget-view+json'
STATE_KEYS = ('widgets',)


def widget_outputs(nb: dict) -> int:
    "How many outputs of `nb` are widget views, plus one if its metadata holds widget state."
    n = sum(WIDGET_MIME in o.get('data', {}) for c in nb['cells'] for o in c.get('outputs', []))
    return n + any(k in nb.get('metadata', {}) for k in STATE_KEYS)


def strip(nb: dict) -> dict:
    "`nb` without widget views in its outputs and without widget state in its metadata."
    for c in nb['cells']:
        if 'outputs' in c: c['outputs'] = [o for o in c['outputs'] if WIDGET_MIME not in o.get('data', {})]
    for k in STATE_KEYS: nb.get('metadata', {}).pop(k, None)
    return nb


def strip_file(path: Path) -> int:
    nb = json.loads(path.read_text(encoding='utf-8'))
    n = widget_outputs(nb)
    if not n: return 0
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix='.tmp')
    os.chmod(tmp, path.stat().st_mode)
    with os.fdopen(fd, 'w', encoding='utf-8') as f: json.dump(strip(nb), f, indent=1, ensure_ascii=False); f.write('\n')
    os.replace(tmp, path)
    return n


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    check = '--check' in args
    paths = [Path(a) for a in args if a != '--check']
    if not paths: print(__doc__.strip()); return 2
    bad = []
    for p in paths:
        if check:
            if widget_outputs(json.loads(p.read_text(encoding='utf-8'))): bad.append(str(p))
        else:
            n = strip_file(p)
            print(f'{p}: {n} widget output(s) removed' if n else f'{p}: no widget state')
    if bad: print('widget state in: ' + ', '.join(bad) + ' (run python tools/strip_widgets.py on them)'); return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
