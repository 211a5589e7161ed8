#!/usr/bin/env python
"""Generate README.md from nbs/index.ipynb, offline (nbdev_readme needs Quarto).

    python tools/readme.py          # write README.md (and README_files/ for figures)
    python tools/readme.py --check  # exit 1 if README.md is stale

Markdown cells are copied; code cells appear as Python blocks unless marked `#| echo: false`; hidden
cells (`#| hide`, `#| include: false`) are dropped; figures are written to README_files/ under a name
derived from their content, so an unchanged notebook gives byte-identical output. Relative links into
`nbs/` (images, other notebooks) are rewritten to work from the repository root.
"""
import argparse
import base64
import hashlib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'tools'))
from build_docs import ANSI, directives, _text  # noqa: E402


def fix_links(md: str) -> str:
    "Relative targets in nbs/ become relative to the repository root."
    def sub(m):
        target = m.group(2)
        if re.match(r'^(https?:|mailto:|#|/)', target): return m.group(0)
        return f'{m.group(1)}(nbs/{target})'
    return re.sub(r'(!?\[[^\]]*\])\(([^)\s]+)\)', sub, md)


def title_block(src: str) -> str:
    "nbdev's title cell (`# Title` and `> summary`) stays as it is in GitHub markdown."
    return src.strip()


def render(nb_path: Path = ROOT/'nbs'/'index.ipynb'):
    nb = json.loads(nb_path.read_text(encoding='utf-8'))
    out, figs = ['<!-- Generated from nbs/index.ipynb by tools/readme.py: edit the notebook, then run `make readme`. -->\n'], {}
    for i, c in enumerate(nb['cells']):
        src = _text(c['source'])
        if c['cell_type'] == 'markdown':
            out.append(fix_links(title_block(src) if i == 0 else src.strip()) + '\n')
            continue
        if c['cell_type'] != 'code': continue
        opts, code = directives(src)
        if 'hide' in opts or opts.get('include') == 'false': continue
        if opts.get('echo') != 'false' and code.strip(): out.append(f'```python\n{code}\n```\n')
        if opts.get('output') == 'false': continue
        for o in c.get('outputs', []):
            d = o.get('data', {})
            if o.get('output_type') == 'stream' and _text(o.get('text')).strip():
                out.append('```\n' + ANSI.sub('', _text(o['text'])).rstrip() + '\n```\n')
            elif 'image/png' in d:
                raw = base64.b64decode(_text(d['image/png']))
                name = f'README_files/figure-{hashlib.sha1(raw).hexdigest()[:12]}.png'
                figs[name] = raw
                out.append(f'![]({name})\n')
            elif 'text/markdown' in d: out.append(_text(d['text/markdown']).strip() + '\n')
            elif 'text/plain' in d: out.append('```\n' + _text(d['text/plain']).rstrip() + '\n```\n')
    return '\n'.join(out), figs


def main(argv=None):
    ap = argparse.ArgumentParser(description='Generate README.md from nbs/index.ipynb.')
    ap.add_argument('--check', action='store_true', help='only check that README.md is up to date')
    a = ap.parse_args(argv)
    text, figs = render()
    readme, fdir = ROOT/'README.md', ROOT/'README_files'
    old_figs = {f'README_files/{p.name}' for p in fdir.glob('*')} if fdir.exists() else set()
    stale = (not readme.exists() or readme.read_text(encoding='utf-8') != text or old_figs != set(figs)
             or any((ROOT/n).read_bytes() != b for n, b in figs.items()))
    if a.check:
        if stale: print('README.md is stale: run `make readme` (python tools/readme.py) and commit it', file=sys.stderr)
        return 1 if stale else 0
    if stale:
        fdir.mkdir(exist_ok=True)
        for n in old_figs - set(figs): (ROOT/n).unlink()
        for n, b in figs.items(): (ROOT/n).write_bytes(b)
        readme.write_text(text, encoding='utf-8')
    return 0


if __name__ == '__main__': sys.exit(main())
