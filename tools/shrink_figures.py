#!/usr/bin/env python
"""Re-encode the PNG outputs of notebooks as 256-colour PNGs (committed outputs are part of the docs: keep them small).

    python tools/shrink_figures.py nbs/12_priors.ipynb [...]

Only images that get smaller are replaced; the notebook is written atomically.
"""
import base64
import io
import json
import os
import sys
import tempfile
from pathlib import Path

from PIL import Image


def shrink_png(data: bytes) -> bytes:
    im = Image.open(io.BytesIO(data))
    q = im.convert('RGB').quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = io.BytesIO(); q.save(out, format='PNG', optimize=True)
    return out.getvalue()


def shrink_notebook(path: Path) -> tuple[int, int]:
    nb = json.loads(path.read_text(encoding='utf-8'))
    before = after = 0
    for c in nb['cells']:
        for o in c.get('outputs', []):
            d = o.get('data', {})
            if 'image/png' not in d: continue
            raw = base64.b64decode(d['image/png'] if isinstance(d['image/png'], str) else ''.join(d['image/png']))
            small = shrink_png(raw)
            before += len(raw)
            if len(small) < len(raw): d['image/png'] = base64.b64encode(small).decode(); after += len(small)
            else: after += len(raw)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix='.tmp')
    os.chmod(tmp, path.stat().st_mode)
    with os.fdopen(fd, 'w', encoding='utf-8') as f: json.dump(nb, f, indent=1, ensure_ascii=False); f.write('\n')
    os.replace(tmp, path)
    return before, after


if __name__ == '__main__':
    for p in sys.argv[1:]:
        b, a = shrink_notebook(Path(p))
        print(f'{p}: PNG outputs {b/1024:.0f} KiB -> {a/1024:.0f} KiB')
