"""The results page (nbs/62_results.ipynb) shows what the JSON files in benchmarks/results/ hold.

The page builds its tables when it runs; what readers see is its committed output. These tests parse that
output and recompute every number from the JSON files independently of the page's code (the mean and sample
standard deviation over the seeds of each method's headline protocol), so that a page left stale after a new
run, a number edited by hand, or a bug in the page's code all fail here. The last two tests plant a mismatch,
once in the JSON and once in the page, and check that it is caught.
"""
import json
import re
import shutil
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE, RESULTS = ROOT/'nbs'/'62_results.ipynb', ROOT/'benchmarks'/'results'
NAMES = {'stego': 'STEGO', 'hp': 'Hidden Positives', 'smooseg': 'SmooSeg', 'eagle': 'EAGLE', 'maskcontrast': 'MaskContrast', 'hsc': 'HSC'}
CELL = re.compile(r'^(-?\d+\.\d) ± (\d+\.\d) \((\d+) seeds, (flip TTA|no flip), ([\d,/]+) steps\)$')


def setting_of(s: dict) -> str:
    "synthetic (its scenes are recorded), camvid (the dataset's name says so) or full."
    if 'scenes' in s: return 'synthetic'
    return 'camvid' if str(s.get('dataset', '')).lower().startswith('camvid') else 'full'


def expected(results: Path, setting: str = 'synthetic') -> dict:
    "method -> {column: (mean, sd, n, protocol)} for the headline runs in `setting`, computed from the JSON alone."
    seeds = {}
    for p in sorted(results.glob('*.json')):
        d = json.loads(p.read_text())
        if not {'method', 'setting', 'seeds'} <= d.keys() or d['setting'].get('overrides'): continue
        if setting_of(d['setting']) != setting: continue
        seeds.setdefault(d['method'], []).extend(d['seeds'])
    out = {}
    for m, ss in seeds.items():
        key = lambda s: 'flip' if s['method_flip'] else 'no_flip'
        cols = {'method': [s['method'][key(s)]['cluster_miou'] for s in ss],
                'kmeans': [s['baseline'][key(s)]['cluster_miou'] for s in ss],
                'margin': [s['method'][key(s)]['cluster_miou'] - s['baseline'][key(s)]['cluster_miou'] for s in ss]}
        prot = {('flip TTA' if s['method_flip'] else 'no flip') for s in ss}
        out[m] = {c: (statistics.mean(v), statistics.stdev(v), len(v), prot) for c, v in cols.items()}
    return out


def page_table(page: Path, cell_id: str = 'resultstable') -> list:
    "The rows of the Markdown table the page committed in the output of cell `cell_id`, as lists of cells."
    nb = json.loads(page.read_text(encoding='utf-8'))
    cell = next((c for c in nb['cells'] if c.get('id') == cell_id), None)
    assert cell is not None, f'no cell {cell_id} on {page.name}'
    md = [''.join(o['data']['text/markdown']) for o in cell.get('outputs', []) if 'text/markdown' in o.get('data', {})]
    assert md, f'cell {cell_id} of {page.name} has no committed table: execute the page'
    lines = [l for l in md[0].splitlines() if l.startswith('|') and not l.startswith('|---')]
    return [[x.strip() for x in l.strip('|').split('|')] for l in lines]


def check_page(page: Path = PAGE, results: Path = RESULTS) -> list:
    "Every disagreement between the page's main table and the JSON files, in words (empty: they agree)."
    bad = []
    exps = {s: expected(results, s) for s in ('synthetic', 'camvid', 'full')}
    rows = {r[0]: r for r in page_table(page)[1:]}
    papers = json.loads((results/'paper_numbers.json').read_text())
    for m, name in NAMES.items():
        if name not in rows: bad.append(f'{name}: no row on the page'); continue
        r = rows[name]
        for setting, cells in (('synthetic', r[1:4]), ('camvid', r[4:7])):
            exp = exps[setting]
            for col, text in zip(('method', 'kmeans', 'margin'), cells):
                where = f"{name} {col}{' (CamVid)' if setting == 'camvid' else ''}"
                if m not in exp:
                    if text != 'not run': bad.append(f'{where}: the page says {text!r}, the JSON has no run')
                    continue
                mean, sd, n, prot = exp[m][col]
                g = CELL.match(text)
                if not g: bad.append(f'{where}: {text!r} is not "mean ± sd (n seeds, protocol, steps)"'); continue
                if (float(g[1]), float(g[2]), int(g[3])) != (round(mean, 1), round(sd, 1), n) or {g[4]} != prot:
                    bad.append(f'{where}: the page says {text!r}, the JSON gives {mean:.1f} ± {sd:.1f} over {n} seeds, {prot}')
        for p in (x for x in papers['rows'] if x['method'] == m):
            if f"{p['value']:.1f} {p['metric']}" not in r[8]: bad.append(f"{name}: paper number {p['value']} ({p['metric']}) missing")
        if m not in exps['full'] and r[7] != 'not run':
            bad.append(f'{name}: a full-setting number on the page, the JSON has no full run')
    return bad


def test_page_agrees_with_json():
    assert check_page() == []


def test_every_method_run_is_on_the_page():
    files = {p.name for p in RESULTS.glob('*.json') if {'method', 'setting', 'seeds'} <= json.loads(p.read_text()).keys()}   # the page's rule (method_runs)
    abl = page_table(PAGE, 'ablationtable')
    shown = {r[-1] for r in abl[1:]} | {f for f in files if not json.loads((RESULTS/f).read_text())['setting'].get('overrides')}
    assert files <= shown, f'runs missing from the page: {files - shown}'


def test_planted_mismatch_in_the_json_is_caught(tmp_path):
    res = tmp_path/'results'; shutil.copytree(RESULTS, res)
    f = res/'synthetic_margin_hp.json'
    d = json.loads(f.read_text()); d['seeds'][0]['method']['no_flip']['cluster_miou'] += 0.5
    f.write_text(json.dumps(d))
    bad = check_page(PAGE, res)
    assert any(b.startswith('Hidden Positives method:') for b in bad), bad


def test_planted_mismatch_in_a_camvid_json_is_caught(tmp_path):
    res = tmp_path/'results'; shutil.copytree(RESULTS, res)
    f = res/'camvid_margin_stego.json'
    d = json.loads(f.read_text()); d['seeds'][1]['baseline']['flip']['cluster_miou'] -= 0.6
    f.write_text(json.dumps(d))
    bad = check_page(PAGE, res)
    assert any(b.startswith('STEGO kmeans (CamVid):') for b in bad), bad


def test_planted_mismatch_on_the_page_is_caught(tmp_path):
    nb = json.loads(PAGE.read_text(encoding='utf-8'))
    cell = next(c for c in nb['cells'] if c.get('id') == 'resultstable')
    out = next(o for o in cell['outputs'] if 'text/markdown' in o.get('data', {}))
    text = ''.join(out['data']['text/markdown'])
    row = next(l for l in text.splitlines() if l.startswith('| STEGO |'))
    num = re.search(r'\| (-?\d+\.\d) ±', row)[1]
    out['data']['text/markdown'] = text.replace(row, row.replace(f'| {num} ±', f'| {float(num) + 0.1:.1f} ±', 1))
    page = tmp_path/'62_results.ipynb'; page.write_text(json.dumps(nb))
    bad = check_page(page, RESULTS)
    assert any(b.startswith('STEGO method:') for b in bad), bad
