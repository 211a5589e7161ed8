"""Drive JupyterLab in headless Chromium: run a notebook, move each explorer's controls, take screenshots.

    python tests/jupyter_browser.py nbs/30_cluster.ipynb [more.ipynb ...] [--screenshots DIR] [--moves N]

For each notebook: JupyterLab is started on localhost with a random token, a copy of the notebook (beside the
original, so relative paths work; deleted afterwards, the page's file is never touched) is opened in headless
Chromium (Debian's `chromium`, driven by Playwright), all cells are run, and every explorer
(`usseg.explore.explorer`: a widget box with an output area and a "redrawn in" line) is found. For each explorer,
each of its controls in turn is moved (a slider by the arrow keys, a menu to its next option), and the figure
must change. Screenshots of each explorer before and after every move go to --screenshots.
`tests/test_explore_browser.py` runs this on a small notebook in CI when Chromium is installed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from docs_check import CHROMIUM_ARGS, find_chromium

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {'@jupyterlab/notebook-extension/tracker': {'windowingMode': 'none'},
            '@jupyterlab/apputils-extension/notification': {'fetchNews': 'false', 'checkForUpdates': False}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


@contextlib.contextmanager
def jupyterlab(root_dir: Path, timeout: float = 90):
    "Start JupyterLab on localhost serving `root_dir`; yields `(base_url, token)`; stops the server it started."
    port, token = _free_port(), secrets.token_hex(16)
    settings = Path(tempfile.mkdtemp(prefix='jlab-settings-'))
    for name, value in SETTINGS.items():   # every cell rendered (no windowing), no news pop-up
        f = settings/(name + '.jupyterlab-settings'); f.parent.mkdir(parents=True, exist_ok=True); f.write_text(json.dumps(value))
    env = {**os.environ, 'PYTHONPATH': str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''),
           'HF_HUB_OFFLINE': '1', 'JUPYTER_PLATFORM_DIRS': '1'}
    env.pop('MPLBACKEND', None)   # the kernel must use the inline backend, as a reader's does
    cmd = [sys.executable, '-m', 'jupyter', 'lab', '--no-browser', f'--ServerApp.port={port}', '--ServerApp.ip=127.0.0.1',
           f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={root_dir}', '--LabApp.news_url=',
           '--ServerApp.port_retries=0', '--allow-root', f'--LabApp.user_settings_dir={settings}',
           f'--LabApp.workspaces_dir={settings/"workspaces"}']
    log = open(Path(os.environ.get('TMPDIR', '/tmp'))/f'jupyterlab-{port}.log', 'w')
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f'http://127.0.0.1:{port}'
    try:
        t0 = time.time()
        while True:
            if proc.poll() is not None: raise RuntimeError(f'JupyterLab exited with {proc.returncode}: see {log.name}')
            try:
                with urllib.request.urlopen(f'{base}/api/status?token={token}', timeout=2) as r:
                    if r.status == 200: break
            except OSError: pass
            if time.time() - t0 > timeout: raise TimeoutError(f'JupyterLab did not answer in {timeout} s: see {log.name}')
            time.sleep(0.5)
        yield base, token
    finally:
        proc.terminate()
        try: proc.wait(15)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait()
        log.close()
        shutil.rmtree(settings, ignore_errors=True)


@dataclass
class ExplorerCheck:
    index: int
    controls: list = field(default_factory=list)   # (label, kind, changed: bool, status before, status after)
    screenshots: list = field(default_factory=list)

    @property
    def ok(self) -> bool: return bool(self.controls) and all(c[2] for c in self.controls)


@dataclass
class NotebookCheck:
    notebook: str
    seconds: float = 0.0
    errors: list = field(default_factory=list)
    explorers: list = field(default_factory=list)

    @property
    def ok(self) -> bool: return not self.errors and bool(self.explorers) and all(e.ok for e in self.explorers)


_IMG = "el => { const i = el.querySelector('.widget-output img'); return i ? i.getAttribute('src') : null }"
_STATUS = "el => Array.from(el.querySelectorAll('.widget-html')).map(h => h.innerText).join(' | ')"


def _wait_change(box, before: str | None, timeout: float) -> str | None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        now = box.evaluate(_IMG)
        if now and now != before: return now
        time.sleep(0.25)
    return None


def _settle(box, timeout: float = 60) -> str | None:
    "Wait until the explorer shows a figure that stays the same for a second and a half (key presses queue several redraws)."
    t0, last, same = time.time(), None, 0
    while time.time() - t0 < timeout:
        now = box.evaluate(_IMG)
        same = same + 1 if (now is not None and now == last) else 0
        if same >= 3: return now
        last = now
        time.sleep(0.5)
    return last


def _start_kernel(page, timeout: float = 120):
    "Wait for the notebook's kernel, accepting the kernel dialog JupyterLab shows for a notebook it has not seen."
    t0 = time.time()
    while time.time() - t0 < timeout:
        dialog = page.locator('.jp-Dialog .jp-Dialog-button.jp-mod-accept')
        if dialog.count(): dialog.first.click()
        if page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').count() and not dialog.count():
            time.sleep(1)
            if not page.locator('.jp-Dialog').count(): return
        time.sleep(0.5)
    raise TimeoutError(f'no idle kernel after {timeout} s')


def _click_run_all(page):
    page.locator('.lm-MenuBar-itemLabel', has_text='Run').first.click()
    page.locator('.lm-Menu-itemLabel', has_text='Run All Cells').first.click()


def _run_all(page, timeout: float):
    _click_run_all(page)
    t0, idle, stalled, retries = time.time(), 0, 0, 0
    while time.time() - t0 < timeout:   # done when every code cell ran (or one failed), none waits, and the kernel is idle
        state = page.evaluate("""() => {
            const p = Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')).map(e => e.innerText);
            const failed = document.querySelector('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]') !== null;
            const ind = document.querySelector('.jp-Notebook-ExecutionIndicator');
            return {busy: p.some(t => t.includes('*')), done: p.every(t => /\\[\\d+\\]/.test(t)), failed,
                    idle: ind !== null && ind.dataset.status === 'idle'};
        }""")
        idle = idle + 1 if (state['idle'] and not state['busy'] and (state['done'] or state['failed'])) else 0
        if idle >= 3: return
        # an idle kernel with cells that never ran: the click came while the page was still settling (seen under load); click again
        stalled = stalled + 1 if (state['idle'] and not state['busy'] and not state['done'] and not state['failed']) else 0
        if stalled >= 20 and retries < 2:
            _say('idle with cells not run: Run All Cells again'); _click_run_all(page); stalled, retries = 0, retries + 1
        if int(time.time() - t0) % 20 == 0: _say('waiting:', state)
        time.sleep(0.5)
    raise TimeoutError(f'the notebook did not finish in {timeout} s')


def _say(*a):
    if os.environ.get('USSEG_BROWSER_VERBOSE'): print(time.strftime('%H:%M:%S'), *a, file=sys.stderr, flush=True)


def check_notebook(nb: Path, screenshots: Path | None = None, moves: int = 3, timeout: float = 600,
                   chromium: str | None = None) -> NotebookCheck:
    "Run `nb` in JupyterLab in headless Chromium and move every control of every explorer on it."
    from playwright.sync_api import sync_playwright
    chromium = chromium or find_chromium()
    if chromium is None: raise FileNotFoundError("Chromium not found: install Debian's `chromium` package")
    nb = Path(nb).resolve()
    copy = nb.with_name(f'_browser_check_{nb.name}')
    shutil.copy(nb, copy)
    res = NotebookCheck(str(nb))
    if screenshots: Path(screenshots).mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        with jupyterlab(nb.parent) as (base, token), sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={'width': 1400, 'height': 1000})
            page.goto(f'{base}/lab/tree/{copy.name}?token={token}')
            page.wait_for_selector('.jp-Notebook .jp-Cell', timeout=120_000)
            _start_kernel(page)
            _say('kernel ready; running all cells')
            try: _run_all(page, timeout)
            except TimeoutError:
                if screenshots: page.screenshot(path=str(Path(screenshots)/f'{nb.stem}-timeout.png'))
                raise
            errs = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
            for i in range(errs.count()):
                t = errs.nth(i).inner_text()
                if 'Traceback' in t or 'Error:' in t: res.errors.append(t[-2000:])
            _say(f'all cells ran; {len(res.errors)} error output(s)')
            boxes = page.locator('.widget-vbox:has(> .widget-output)')
            for k in range(boxes.count()):
                box = boxes.nth(k)
                box.scroll_into_view_if_needed()
                chk = ExplorerCheck(k)
                if box.evaluate(_IMG) is None and _wait_change(box, None, 60) is None:
                    chk.controls.append(('(figure)', 'none', False, '', 'no figure drawn')); res.explorers.append(chk); continue
                shot = lambda tag: (box.screenshot(path=str(Path(screenshots)/f'{nb.stem}-explorer{k}-{tag}.png')),
                                    chk.screenshots.append(f'{nb.stem}-explorer{k}-{tag}.png')) if screenshots else None
                shot('start')
                ctrls = box.locator(':scope > .widget-hbox > .widget-inline-hbox')
                for j in range(ctrls.count()):
                    c = ctrls.nth(j)
                    label = c.locator('.widget-label').first.inner_text() if c.locator('.widget-label').count() else f'control {j}'
                    before, st0 = box.evaluate(_IMG), box.evaluate(_STATUS)
                    if c.locator('.noUi-handle').count():
                        kind = 'slider'
                        c.locator('.noUi-handle').first.focus()
                        key = 'ArrowRight'
                        for _ in range(moves): page.keyboard.press(key)
                    elif c.locator('select').count():
                        kind = 'menu'
                        sel = c.locator('select').first
                        opts = sel.evaluate('s => Array.from(s.options).map(o => o.value)')
                        cur = sel.evaluate('s => s.value')
                        sel.select_option(opts[(opts.index(cur) + 1) % len(opts)])
                    else:
                        kind = 'other'; chk.controls.append((label, kind, False, st0, 'not driven')); continue
                    after = _wait_change(box, before, 60)
                    if after is None and kind == 'slider':   # at the right end: go the other way
                        for _ in range(2*moves): page.keyboard.press('ArrowLeft')
                        after = _wait_change(box, before, 60)
                    _settle(box)
                    chk.controls.append((label, kind, after is not None, st0, box.evaluate(_STATUS)))
                    _say(f'explorer {k}: {label} ({kind}): {"changed" if after else "NO CHANGE"}')
                    shot(f'{j}-{label.strip().replace(" ", "_")}')
                res.explorers.append(chk)
            browser.close()
    finally:
        copy.unlink(missing_ok=True)
        for extra in nb.parent.glob(f'.ipynb_checkpoints/_browser_check_{nb.stem}*'): extra.unlink()
    res.seconds = time.time() - t0
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('notebooks', nargs='+')
    ap.add_argument('--screenshots', default=None)
    ap.add_argument('--moves', type=int, default=3, help='arrow-key presses per slider move')
    ap.add_argument('--timeout', type=float, default=600, help='seconds to wait for the notebook to run')
    a = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # `timeout` or a kill: stop JupyterLab and delete the copy on the way out
    ok = True
    for nb in a.notebooks:
        r = check_notebook(Path(nb), a.screenshots, a.moves, a.timeout)
        print(f'{nb}: {len(r.explorers)} explorer(s), {r.seconds:.0f} s' + (' OK' if r.ok else ' FAILED'))
        for e in r.errors: print('  error output:', e.strip().splitlines()[-1])
        for ex in r.explorers:
            for label, kind, changed, s0, s1 in ex.controls:
                print(f'  explorer {ex.index}: {label} ({kind}): {"figure changed" if changed else "NO CHANGE"}; {s0} -> {s1}')
        ok &= r.ok
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
