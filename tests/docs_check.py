"""Open every page of a built docs site in headless Chromium and report what is broken.

    python tests/docs_check.py [_docs] [--screenshots DIR]

A page is broken when it does not load, when a local request fails (404, refused), when a local link
points at a missing page or a missing anchor, when an image does not decode, or when a formula was not
converted to MathML. External links are not followed: the site must work offline.
"""
from __future__ import annotations

import contextlib
import functools
import http.server
import shutil
import socketserver
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlparse

CHROMIUM_ARGS = ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                 '--disable-background-networking', '--disable-component-update', '--disable-sync',
                 '--disable-dev-shm-usage']


def find_chromium() -> str | None:
    for name in ('chromium', 'chromium-browser', 'google-chrome'):
        if p := shutil.which(name): return p
    return None


#: Text (outside code, pre and scripts) around each backtick that rendered as a literal character.
STRAY_BACKTICKS_JS = """() => {
  const root = document.querySelector('main') || document.body, out = [];
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT, {acceptNode: n =>
    n.parentElement.closest('code, pre, script, style, math') ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT});
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const t = n.textContent, i = t.indexOf('`');
    if (i >= 0) out.push(t.slice(Math.max(0, i - 40), i + 40).replace(/\\s+/g, ' '));
  }
  return out;
}"""


@dataclass
class PageReport:
    url: str
    problems: list = field(default_factory=list)
    n_links: int = 0
    n_images: int = 0
    n_math: int = 0


@contextlib.contextmanager
def serve(folder: Path):
    "Serve `folder` on a free localhost port; yields the base URL."
    handler = functools.partial(_QuietHandler, directory=str(folder))
    with socketserver.ThreadingTCPServer(('127.0.0.1', 0), handler) as srv:
        t = threading.Thread(target=srv.serve_forever, daemon=True)
        t.start()
        try: yield f'http://127.0.0.1:{srv.server_address[1]}/'
        finally: srv.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass


def check_site(folder: str | Path, screenshots: str | Path | None = None, chromium: str | None = None) -> list[PageReport]:
    "Open every `*.html` page of `folder` in headless Chromium; returns one report per page."
    from playwright.sync_api import sync_playwright
    folder = Path(folder)
    pages = sorted(folder.glob('*.html'))
    if not pages: raise FileNotFoundError(f'no HTML pages in {folder}: build the docs first (make docs)')
    chromium = chromium or find_chromium()
    if chromium is None: raise FileNotFoundError('Chromium not found: install Debian\'s `chromium` package')
    reports = []
    with serve(folder) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        ctx = browser.new_context(viewport={'width': 1400, 'height': 1000})
        ids_cache: dict[str, set] = {}
        for f in pages:
            url = urljoin(base, f.name)
            rep = PageReport(url)
            failed = []
            page = ctx.new_page()
            page.on('requestfailed', lambda r: failed.append(f'request failed: {r.url} ({r.failure})') if r.url.startswith(base) else None)
            page.on('response', lambda r: failed.append(f'HTTP {r.status}: {r.url}') if r.url.startswith(base) and r.status >= 400 else None)
            page.on('pageerror', lambda e: failed.append(f'script error: {e}'))
            try:
                resp = page.goto(url, wait_until='load', timeout=30_000)
                if resp is None or resp.status >= 400: rep.problems.append(f'page did not load (status {resp and resp.status})')
            except Exception as e:
                rep.problems.append(f'page did not load: {e}')
                reports.append(rep); page.close(); continue
            # images: every <img> must have decoded
            imgs = page.eval_on_selector_all('img', 'els => els.map(e => [e.getAttribute("src"), e.complete && e.naturalWidth > 0])')
            rep.n_images = len(imgs)
            rep.problems += [f'image does not load: {src}' for src, ok in imgs if not ok]
            # local links: target page must exist, anchors must exist on the target
            hrefs = page.eval_on_selector_all('a[href]', 'els => els.map(e => e.href)')
            rep.n_links = len(hrefs)
            for h in hrefs:
                if not h.startswith(base): continue
                target, frag = urldefrag(h)
                rel = urlparse(target).path.lstrip('/') or 'index.html'
                tf = folder/rel
                if not tf.is_file():
                    rep.problems.append(f'broken link: {h}'); continue
                if frag and tf.suffix == '.html':
                    if rel not in ids_cache:
                        import re
                        ids_cache[rel] = set(re.findall(r'\sid="([^"]+)"', tf.read_text(encoding='utf-8')))
                    if frag not in ids_cache[rel]: rep.problems.append(f'missing anchor: {h}')
            # maths: MathML rendered, no raw TeX left
            rep.n_math = page.eval_on_selector_all('math', 'els => els.length')
            body_text = page.inner_text('main') if page.query_selector('main') else page.inner_text('body')
            if '$$' in body_text: rep.problems.append('raw $$ TeX left in the page (formula not converted)')
            # markdown left unrendered: a backtick in the text outside code means a code span was cut open, e.g. by
            # a `|` inside a table cell (write `\\|` there)
            stray = page.evaluate(STRAY_BACKTICKS_JS)
            rep.problems += [f'stray backtick (markdown not rendered; a | inside a table cell?): ...{t}...' for t in stray]
            if screenshots:
                Path(screenshots).mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(Path(screenshots)/f'{f.stem}.png'), full_page=False)
            page.close()
            rep.problems += failed
            reports.append(rep)
        browser.close()
    return reports



SECTION_JS = """([id]) => {
  const h = document.getElementById(id);
  if (!h || !/^H[1-6]$/.test(h.tagName)) return null;
  const level = +h.tagName[1], all = Array.from(document.querySelectorAll('h1,h2,h3,h4,h5,h6,img,table'));
  const imgs = [], out = {images: imgs, tables: 0};
  for (let j = all.indexOf(h) + 1; j < all.length; j++) {
    const e = all[j];
    if (/^H[1-6]$/.test(e.tagName)) { if (+e.tagName[1] <= level) break; continue; }
    if (e.tagName === 'IMG') imgs.push([e.getAttribute('src'), e.complete && e.naturalWidth > 0, e.naturalWidth, e.naturalHeight]);
    else out.tables++;
  }
  return out;
}"""


def section_report(folder: str | Path, page: str, heading_id: str, chromium: str | None = None) -> dict | None:
    "Open `page` of the built site and report the section under heading `heading_id`: its images (src, decoded, size) and its tables."
    from playwright.sync_api import sync_playwright
    chromium = chromium or find_chromium()
    if chromium is None: raise FileNotFoundError('Chromium not found: install Debian\'s `chromium` package')
    with serve(Path(folder)) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page()
            pg.goto(urljoin(base, page), wait_until='load', timeout=30_000)
            return pg.evaluate(SECTION_JS, [heading_id])
        finally: browser.close()

def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description='Check a built docs site in headless Chromium.')
    ap.add_argument('folder', nargs='?', default='_docs')
    ap.add_argument('--screenshots', default=None, help='save a screenshot of each page here')
    a = ap.parse_args(argv)
    reports = check_site(a.folder, a.screenshots)
    bad = 0
    for r in reports:
        status = 'ok' if not r.problems else 'BROKEN'
        print(f'{status:6s} {r.url}  links={r.n_links} images={r.n_images} math={r.n_math}')
        for p in r.problems: print(f'       - {p}')
        bad += bool(r.problems)
    print(f'{len(reports)} pages, {bad} broken')
    return 1 if bad else 0


if __name__ == '__main__': sys.exit(main())
