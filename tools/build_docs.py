#!/usr/bin/env python
"""Build the usseg docs as a static, offline HTML site in `_docs/`, without Quarto.

    python tools/build_docs.py [--out _docs] [--force]

1. nbdev processes the notebooks into `_proc/` (`nbdev.serve.proc_nbs`): front matter from the title
   cell, `show_doc` cells executed, hidden cells dropped, backticked names turned into doc links.
2. Each processed notebook becomes one page: markdown rendered with markdown-it (tables, Quarto link
   attributes), maths converted to MathML (rendered natively by the browser, no JavaScript, no CDN),
   code highlighted with Pygments, figures written next to the pages as PNG files.
3. Navigation follows `nbs/sidebar.yml`, the file Quarto's `nbdev_docs` uses for the published site.

Doc links that point at the published site (`doc_host` + `doc_baseurl` in settings.ini) are rewritten to
relative links, so the site works from any folder or a local HTTP server.
"""
from __future__ import annotations

import argparse
import base64
import configparser
import hashlib
import html
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml
from latex2mathml.converter import convert as latex_to_mathml
from markdown_it import MarkdownIt
from mdit_py_plugins.attrs import attrs_plugin
from mdit_py_plugins.dollarmath import dollarmath_plugin
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer, get_lexer_by_name

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r'\x1b\[[0-9;]*[A-Za-z]')
DIRECTIVE = re.compile(r'^\s*#\s*\|\s*([\w-]+)\s*:?\s*(.*?)\s*$')


class DocsError(Exception):
    "A problem in the notebooks or the sidebar that makes the site wrong."


def settings() -> dict:
    cfg = configparser.ConfigParser(delimiters=['='])
    cfg.read(ROOT/'settings.ini')
    return dict(cfg['DEFAULT'])


def page_name(nb: str) -> str:
    "The HTML file nbdev/Quarto give a notebook: `00_core.ipynb` -> `core.html` (nbdev.doclinks._nbpath2html)."
    stem = Path(nb).name
    return re.sub(r'^\d+[a-zA-Z0-9]*_', '', stem.lower()).rsplit('.', 1)[0] + '.html'


# ---------------------------------------------------------------- markdown and maths

def _math_renderer(display: str):
    def render(self, tokens, idx, options, env):
        tex = tokens[idx].content.strip()
        try: return latex_to_mathml(tex, display=display)
        except Exception as e:
            raise DocsError(f"{env.get('page', '?')}: cannot convert the formula ${tex}$ to MathML ({e})") from None
    return render


def make_markdown() -> MarkdownIt:
    md = (MarkdownIt('commonmark', {'html': True, 'typographer': False})
          .enable('table').enable('strikethrough')
          .use(dollarmath_plugin, allow_space=True, allow_digits=False, double_inline=True)
          .use(attrs_plugin))
    md.add_render_rule('math_inline', _math_renderer('inline'))
    md.add_render_rule('math_inline_double', _math_renderer('block'))
    md.add_render_rule('math_block', _math_renderer('block'))
    md.add_render_rule('math_block_label', _math_renderer('block'))

    def fence(self, tokens, idx, options, env):
        tok = tokens[idx]
        lang = (tok.info or '').strip().split(' ')[0].strip('{}')
        return code_html(tok.content, lang or 'text')
    md.add_render_rule('fence', fence)
    return md


FORMATTER = HtmlFormatter(nowrap=True)


def code_html(src: str, lang: str = 'python') -> str:
    try: lexer = PythonLexer() if lang in ('python', 'py', '') else get_lexer_by_name(lang)
    except Exception: lexer = None
    body = highlight(src, lexer, FORMATTER) if lexer else html.escape(src)
    return f'<pre class="code highlight lang-{html.escape(lang)}"><code>{body}</code></pre>\n'


# ---------------------------------------------------------------- notebook cells

def directives(src: str) -> tuple[dict, str]:
    "Quarto/nbdev `#| key: value` lines at the top of a cell, and the source without them."
    opts, lines = {}, src.splitlines()
    i = 0
    while i < len(lines):
        m = DIRECTIVE.match(lines[i])
        if not m: break
        opts[m.group(1).lower()] = m.group(2).strip().strip('"\'').lower() or 'true'
        i += 1
    return opts, '\n'.join(lines[i:]).strip('\n')


def _text(x) -> str: return ''.join(x) if isinstance(x, list) else (x or '')


class Page:
    "One notebook rendered to HTML."

    def __init__(self, nb_path: Path, out: Path, md: MarkdownIt, site: dict):
        self.nb_path, self.out, self.md, self.site = nb_path, out, md, site
        self.nb = json.loads(nb_path.read_text(encoding='utf-8'))
        self.name = page_name(nb_path.name)
        self.meta = self._front_matter()
        self.title = self.meta.get('title') or nb_path.stem
        self.description = self.meta.get('description', '')
        self.figures: list[str] = []

    def _front_matter(self) -> dict:
        cells = self.nb['cells']
        if cells and cells[0]['cell_type'] == 'raw':
            src = _text(cells[0]['source']).strip()
            if src.startswith('---'):
                self.nb['cells'] = cells[1:]
                return yaml.safe_load(src.strip('-\n')) or {}
        return {}

    # links pointing at the published site become relative; notebooks become their pages
    def fix_links(self, s: str) -> str:
        base = self.site['doc_host'].rstrip('/') + '/' + self.site['doc_baseurl'].strip('/') + '/'
        s = s.replace(f'href="{base}', 'href="')
        def nb_link(m):
            target, anchor = m.group(2), m.group(3) or ''
            return f'{m.group(1)}="{page_name(target)}{anchor}"'
        return re.sub(r'(href)="(?!https?:)([^"#]+\.ipynb)(#[^"]*)?"', nb_link, s)

    def markdown(self, src: str) -> str:
        return self.fix_links(self.md.render(src, {'page': self.name}))

    def figure(self, data: str, ext: str) -> str:
        raw = base64.b64decode(data) if ext == 'png' else data.encode()
        name = f'figures/{self.name[:-5]}-{hashlib.sha1(raw).hexdigest()[:10]}.{ext}'
        path = self.out/name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw)
        self.figures.append(name)
        return name

    def output(self, o: dict) -> str:
        t = o.get('output_type')
        if t == 'stream':
            txt = ANSI.sub('', _text(o.get('text')))
            return f'<pre class="output {o.get("name", "stdout")}">{html.escape(txt)}</pre>\n' if txt.strip() else ''
        if t == 'error':
            tb = ANSI.sub('', '\n'.join(o.get('traceback', [])))
            return f'<pre class="output error">{html.escape(tb)}</pre>\n'
        d = o.get('data', {})
        if 'image/png' in d:
            alt = html.escape(_text(d.get('text/plain', 'figure')))
            return f'<div class="figure"><img src="{self.figure(_text(d["image/png"]).strip(), "png")}" alt="{alt}"></div>\n'
        if 'image/svg+xml' in d:
            return f'<div class="figure"><img src="{self.figure(_text(d["image/svg+xml"]), "svg")}" alt="figure"></div>\n'
        if 'text/markdown' in d:
            return f'<div class="output markdown">{self.markdown(_text(d["text/markdown"]))}</div>\n'
        if 'text/html' in d:
            return f'<div class="output html">{self.fix_links(_text(d["text/html"]))}</div>\n'
        if 'text/plain' in d:
            return f'<pre class="output result">{html.escape(ANSI.sub("", _text(d["text/plain"])))}</pre>\n'
        return ''

    def cell(self, c: dict) -> str:
        src = _text(c['source'])
        if c['cell_type'] == 'markdown': return self.markdown(src)
        if c['cell_type'] != 'code': return ''
        opts, code = directives(src)
        if opts.get('include') == 'false' or 'hide' in opts: return ''
        parts = []
        if opts.get('echo') != 'false' and code.strip():
            block = code_html(code)
            if opts.get('code-fold') in ('true', 'show'):
                block = f'<details{" open" if opts["code-fold"] == "show" else ""}><summary>Code</summary>{block}</details>'
            parts.append(block)
        if opts.get('output') != 'false':
            parts += [self.output(o) for o in c.get('outputs', [])]
        body = ''.join(parts)
        return f'<div class="cell">{body}</div>\n' if body.strip() else ''

    def body(self) -> str:
        return ''.join(self.cell(c) for c in self.nb['cells'])


# ---------------------------------------------------------------- site

def sidebar(nbs: Path) -> list:
    "The `website.sidebar.contents` tree of `nbs/sidebar.yml`."
    y = yaml.safe_load((nbs/'sidebar.yml').read_text())
    try: return y['website']['sidebar']['contents']
    except (KeyError, TypeError): raise DocsError('nbs/sidebar.yml has no website.sidebar.contents list') from None


def sidebar_files(tree) -> list[str]:
    out = []
    for e in tree:
        if isinstance(e, str): out.append(e)
        elif isinstance(e, dict) and 'contents' in e: out += sidebar_files(e['contents'])
        elif isinstance(e, dict) and 'href' in e: out.append(e['href'])
    return out


def nav_html(tree, current: str, titles: dict) -> str:
    items = []
    for e in tree:
        if isinstance(e, str) or (isinstance(e, dict) and 'href' in e):
            f = e if isinstance(e, str) else e['href']
            p = page_name(f)
            cls = ' class="active"' if p == current else ''
            label = html.escape(e.get('text', titles.get(p, p)) if isinstance(e, dict) else titles.get(p, p))
            items.append(f'<li><a href="{p}"{cls}>{label}</a></li>')
        else:
            items.append(f'<li class="section"><span>{html.escape(e["section"])}</span><ul>{nav_html(e["contents"], current, titles)}</ul></li>')
    return ''.join(items)


def toc_html(body: str) -> str:
    heads = re.findall(r'<h([23])(?: id="([^"]+)")?>(.*?)</h\1>', body)
    if len(heads) < 2: return ''
    lis = ''.join(f'<li class="toc-h{lvl}"><a href="#{i}">{re.sub("<[^>]+>", "", t)}</a></li>' for lvl, i, t in heads if i)
    return f'<nav class="toc"><h2>On this page</h2><ul>{lis}</ul></nav>'


def add_heading_ids(body: str) -> str:
    seen = {}
    def sub(m):
        lvl, attrs, text = m.group(1), m.group(2) or '', m.group(3)
        if 'id="' in attrs: return m.group(0)
        slug = re.sub(r'[^a-z0-9_.]+', '-', re.sub('<[^>]+>', '', html.unescape(text)).lower()).strip('-.') or 'section'  # '.' kept: nbdev links `Class.method` as #class.method
        n = seen.get(slug, 0); seen[slug] = n + 1
        if n: slug = f'{slug}-{n}'
        return f'<h{lvl} id="{slug}"{attrs}>{text}</h{lvl}>'
    return re.sub(r'<h([1-4])((?:\s[^>]*)?)>(.*?)</h\1>', sub, body)


CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --accent:#2780e3; --code:#f6f8fa; }
* { box-sizing: border-box; }
body { margin:0; font: 16px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--fg); }
header.site { background:var(--accent); color:#fff; padding:.6rem 1.2rem; display:flex; gap:1rem; align-items:baseline; }
header.site a { color:#fff; text-decoration:none; font-weight:600; font-size:1.15rem; }
header.site span { opacity:.85; font-size:.9rem; }
.layout { display:grid; grid-template-columns: 15rem minmax(0, 1fr) 13rem; gap:2rem; max-width:90rem; margin:0 auto; padding:1rem 1.2rem; }
nav.sidebar ul { list-style:none; padding-left:0; margin:0; }
nav.sidebar li { margin:.15rem 0; }
nav.sidebar li.section > span { display:block; margin-top:.8rem; font-weight:600; color:var(--muted); font-size:.85rem; text-transform:uppercase; letter-spacing:.03em; }
nav.sidebar a { color:var(--fg); text-decoration:none; font-size:.93rem; }
nav.sidebar a.active { color:var(--accent); font-weight:600; }
nav.toc { font-size:.85rem; position:sticky; top:1rem; align-self:start; }
nav.toc h2 { font-size:.85rem; margin:0 0 .4rem; color:var(--muted); }
nav.toc ul { list-style:none; padding-left:0; }
nav.toc li.toc-h3 { padding-left:.8rem; }
nav.toc a { color:var(--muted); text-decoration:none; }
main { min-width:0; }
main h1.title { margin-bottom:.2rem; }
main .description { color:var(--muted); font-style:italic; font-size:1.15rem; margin-bottom:1.5rem; }
pre { background:var(--code); padding:.6rem .8rem; border-radius:4px; overflow-x:auto; font-size:.85rem; line-height:1.4; }
pre.output { background:none; border-left:2px solid lightsalmon; border-radius:0; margin-left:.8rem; }
pre.output.error { border-left-color:#d1242f; color:#d1242f; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size:.9em; }
p code, li code, td code { background:var(--code); padding:.05rem .25rem; border-radius:3px; }
table { border-collapse:collapse; margin:1rem 0; font-size:.92rem; }
th, td { border:1px solid var(--line); padding:.3rem .6rem; text-align:left; }
.figure img { max-width:100%; height:auto; }
img { max-width:100%; }
math[display="block"] { margin:1rem 0; font-size:1.1em; }
.output.markdown h3 { margin-top:.2rem; }
.output.markdown hr { border:none; border-top:1px solid var(--line); }
footer { color:var(--muted); font-size:.8rem; text-align:center; padding:2rem; }
@media (max-width: 60rem) { .layout { grid-template-columns: 1fr; } nav.toc { display:none; } }
"""

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} – {site_title}</title>
<meta name="description" content="{description}">
<link rel="stylesheet" href="site.css"><link rel="stylesheet" href="pygments.css"><link rel="stylesheet" href="styles.css">
</head><body>
<header class="site"><a href="index.html">{site_title}</a><span>{site_description}</span></header>
<div class="layout">
<nav class="sidebar"><ul>{nav}</ul></nav>
<main><h1 class="title">{title}</h1>{desc_html}
{body}
</main>
{toc}
</div>
<footer>Built from the notebooks in <code>nbs/</code> by <code>tools/build_docs.py</code>.</footer>
</body></html>
"""


def build(out: Path = ROOT/'_docs', force: bool = False, quiet: bool = False) -> list[Path]:
    "Process the notebooks with nbdev and render the site into `out`; returns the pages written."
    import os
    os.chdir(ROOT)
    from nbdev.serve import proc_nbs
    t0 = time.time()
    nbs = ROOT/'nbs'
    proc = ROOT/'_proc'
    proc_nbs(path=str(nbs), n_workers=0, force=force)
    site = settings()
    tree = sidebar(nbs)
    listed = sidebar_files(tree)
    notebooks = sorted(p.name for p in nbs.glob('*.ipynb') if not p.name.startswith(('_', '.')))
    missing = [f for f in listed if not (nbs/f).exists()]
    if missing: raise DocsError(f'nbs/sidebar.yml lists notebooks that do not exist: {", ".join(missing)}')
    unlisted = [f for f in notebooks if f not in listed]
    if unlisted: raise DocsError(f'notebooks missing from nbs/sidebar.yml (readers could not reach them): {", ".join(unlisted)}')
    md = make_markdown()
    tmp = Path(tempfile.mkdtemp(prefix='.docs-', dir=out.parent))
    try:
        pages = [Page(proc/f, tmp, md, site) for f in notebooks]
        titles = {p.name: p.title for p in pages}
        for p in pages:
            body = add_heading_ids(p.body())
            desc = f'<p class="description">{md.renderInline(p.description)}</p>' if p.description else ''   # markdown, as Quarto renders it
            (tmp/p.name).write_text(TEMPLATE.format(
                title=html.escape(p.title), site_title=html.escape(site.get('title', 'usseg')),
                site_description=html.escape(site.get('description', '')[:90]), description=html.escape(p.description.replace('`', '')),
                nav=nav_html(tree, p.name, titles), desc_html=desc, body=body, toc=toc_html(body)), encoding='utf-8')
        (tmp/'site.css').write_text(CSS)
        (tmp/'pygments.css').write_text(HtmlFormatter().get_style_defs('.highlight'))
        shutil.copy(nbs/'styles.css', tmp/'styles.css')
        if (nbs/'images').exists(): shutil.copytree(nbs/'images', tmp/'images')
        if out.exists(): shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True); raise
    written = sorted(out.glob('*.html'))
    if not quiet: print(f'built {len(written)} pages in {out} ({time.time() - t0:.1f} s)')
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', default=str(ROOT/'_docs'), help='output folder (default: _docs)')
    ap.add_argument('--force', action='store_true', help='re-process every notebook, ignoring the _proc cache')
    a = ap.parse_args(argv)
    try: build(Path(a.out).resolve(), a.force)
    except DocsError as e:
        print(f'build_docs: error: {e}', file=sys.stderr); return 1
    return 0


if __name__ == '__main__': sys.exit(main())
