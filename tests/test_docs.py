"""The offline docs: one page per notebook, every page opened in headless Chromium, nothing broken."""
import os
from pathlib import Path

import pytest

from docs_check import check_site, find_chromium, section_report

needs_browser = pytest.mark.skipif(find_chromium() is None and not os.environ.get('USSEG_REQUIRE_BROWSER'),
                                   reason="Debian's chromium is not installed (CI installs it; set USSEG_REQUIRE_BROWSER=1 to fail instead)")


@pytest.fixture(scope='module')
def site(root, tmp_path_factory):
    "The built site: `$USSEG_DOCS_DIR` when the test command built it already, else a fresh build."
    d = os.environ.get('USSEG_DOCS_DIR')
    if d and (Path(d)/'index.html').exists(): return Path(d).resolve()
    from build_docs import build
    out = tmp_path_factory.mktemp('docs')/'_docs'
    build(out, quiet=True)
    return out


def test_a_page_per_notebook(root, site):
    from build_docs import page_name
    nbs = sorted(p.name for p in (root/'nbs').glob('*.ipynb') if not p.name.startswith('_'))
    assert nbs
    for nb in nbs: assert (site/page_name(nb)).is_file(), f'no page for {nb}'


@needs_browser
def test_every_page_opens_clean(site):
    reports = check_site(site)
    assert len(reports) == len(list(site.glob('*.html')))
    broken = {r.url: r.problems for r in reports if r.problems}
    assert not broken, broken
    assert sum(r.n_images for r in reports) > 0


@needs_browser
def test_checker_catches_breakage(tmp_path):
    "The checker is not blind: a broken link, a missing image, a bad anchor and raw TeX are all reported."
    (tmp_path/'index.html').write_text('<html><body><main><p id="here">x</p><a href="gone.html">a</a>'
                                       '<a href="other.html#nowhere">b</a><img src="missing.png"> $$x^2$$</main></body></html>')
    (tmp_path/'other.html').write_text('<html><body><main><a href="index.html#here">ok</a></main></body></html>')
    reports = {Path(r.url).name: r.problems for r in check_site(tmp_path)}
    assert reports['other.html'] == []
    probs = ' | '.join(reports['index.html'])
    for needle in ('broken link', 'missing anchor', 'image does not load', 'raw $$'): assert needle in probs, probs


def test_math_becomes_mathml():
    from build_docs import make_markdown
    out = make_markdown().render('Loss $L = -\\frac{1}{N}\\sum_i x_i$ and\n\n$$F_{hwij} - b$$\n', {'page': 't'})
    assert out.count('<math') == 2 and '$' not in out


@needs_browser
def test_checker_catches_a_cut_code_span(tmp_path):
    "A `|` inside a code span in a table cell cuts the cell (the flag text of the training pages was lost): reported."
    from build_docs import make_markdown
    md = make_markdown()
    table = '| setting | when |\n|---|---|\n| **full** | the cells flagged `#{}| cuda` on a GPU |\n'
    (tmp_path/'bad.html').write_text(f"<html><body><main>{md.render(table.format(''), {'page': 'bad'})}</main></body></html>")
    (tmp_path/'good.html').write_text(f"<html><body><main>{md.render(table.format(chr(92)), {'page': 'good'})}</main></body></html>")
    reports = {Path(r.url).name: r.problems for r in check_site(tmp_path)}
    assert reports['good.html'] == [], reports
    assert any('stray backtick' in p for p in reports['bad.html']), reports


@needs_browser
def test_a_real_photo_section_renders(site):
    "The STEGO page's 'Real photos on a laptop' shows the CamVid margin table and a decoded picture of real photos and predictions."
    from build_docs import page_name
    r = section_report(site, page_name('50_train.stego.ipynb'), 'real-photos-on-a-laptop')
    assert r is not None, 'no heading real-photos-on-a-laptop on the STEGO page'
    assert r['tables'] >= 1, r
    assert r['images'] and all(ok for _, ok, *_ in r['images']), r
    assert max(w for _, _, w, _ in r['images']) >= 400, r      # a grid of photos, not an icon


@needs_browser
def test_section_report_sees_a_missing_picture(tmp_path):
    "The section check is not blind: an image that does not load, a section without a table, a missing heading."
    (tmp_path/'p.html').write_text('<html><body><main><h2 id="a">A</h2><table><tr><td>1</td></tr></table>'
                                   '<h2 id="b">B</h2><img src="gone.png"><h3 id="c">C</h3></main></body></html>')
    a, b = section_report(tmp_path, 'p.html', 'a'), section_report(tmp_path, 'p.html', 'b')
    assert a == {'images': [], 'tables': 1}, a
    assert b['tables'] == 0 and b['images'][0][:2] == ['gone.png', False], b
    assert section_report(tmp_path, 'p.html', 'nowhere') is None
