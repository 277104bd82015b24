"""Real-browser test: JupyterLab + Debian's Chromium driven by Playwright.

Opens notebooks/01_quickstart.ipynb in a JupyterLab started on 127.0.0.1 with a token, runs all
cells, checks that the CompareWarp explorer rendered its Bokeh canvas, drags the
``spatialThreshold`` slider to 0, and checks that the Python side re-ran the filter (status
line) and that the panel's pixels changed.  Screenshots are kept in ``tests/artifacts/``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    pytest.importorskip("playwright.sync_api")
    work = tmp_path / "root"
    work.mkdir()
    shutil.copy(ROOT / "notebooks" / "01_quickstart.ipynb", work / "01_quickstart.ipynb")
    env = dict(os.environ)
    for var, sub in (("JUPYTER_CONFIG_DIR", "cfg"), ("JUPYTER_RUNTIME_DIR", "rt"), ("JUPYTERLAB_SETTINGS_DIR", "settings"),
                     ("JUPYTERLAB_WORKSPACES_DIR", "ws"), ("IPYTHONDIR", "ipy")):
        (tmp_path / sub).mkdir()
        env[var] = str(tmp_path / sub)
    (tmp_path / "cfg" / "labconfig").mkdir()
    (tmp_path / "cfg" / "labconfig" / "page_config.json").write_text(json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    port, token = _free_port(), secrets.token_hex(16)
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={work}", "--expose-app-in-browser", "--allow-root"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("JupyterLab did not start")
    try:
        yield f"http://127.0.0.1:{port}/lab/tree/01_quickstart.ipynb?token={token}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_quickstart_explorer_in_real_browser(lab):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1900, "height": 1300})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(lab)
        page.wait_for_selector(".jp-NotebookPanel", timeout=60_000)
        page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget && window.jupyterapp.shell.currentWidget.sessionContext", timeout=60_000)
        page.evaluate("async () => { await window.jupyterapp.shell.currentWidget.sessionContext.ready; }")
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        panel = page.locator(".ds-compare-warp-explorer .ds-bokeh").first
        panel.locator("canvas").first.wait_for(timeout=180_000)
        status = page.locator(".ds-compare-warp-explorer .ds-status").first
        # the notebook itself moves spatialThreshold to 0.3 (filter run 2); wait for it to settle
        page.wait_for_function("() => [...document.querySelectorAll('.ds-status')].some(e => e.textContent.includes('filter 2'))", timeout=120_000)
        time.sleep(2.0)
        before = panel.screenshot(path=str(ARTIFACTS / "quickstart_before.png"))
        handle = page.locator(".ds-compare-warp-explorer .ds-ctl-spatialThreshold .noUi-handle").first
        handle.scroll_into_view_if_needed()
        box = handle.bounding_box()
        page.screenshot(path=str(ARTIFACTS / "quickstart_page.png"))
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.mouse.move(box["x"] - 400, box["y"] + box["height"] / 2, steps=10)
        page.mouse.up()
        # Python side: the filter and the final stack ran once more
        page.wait_for_function("() => [...document.querySelectorAll('.ds-status')].some(e => e.textContent.includes('filter 3'))", timeout=60_000)
        assert "template 1" in status.text_content()
        changed = False
        for _ in range(40):
            time.sleep(0.5)
            after = panel.screenshot(path=str(ARTIFACTS / "quickstart_after.png"))
            if after != before:
                changed = True
                break
        # hover over the coadd panel: the tooltip's value, mask and RA/Dec formatters run in the
        # browser (a JS error there would show up as a console error below)
        canvas = panel.locator("canvas").first
        cb = canvas.bounding_box()
        page.mouse.move(cb["x"] + cb["width"] / 2, cb["y"] + cb["height"] / 2)
        page.mouse.move(cb["x"] + cb["width"] / 2 + 3, cb["y"] + cb["height"] / 2 + 3, steps=3)
        tip = page.get_by_text("RA, Dec").first
        tip.wait_for(timeout=15_000)
        page.screenshot(path=str(ARTIFACTS / "quickstart_hover.png"))
        browser.close()
    assert changed, "the explorer's pixels did not change after the slider moved"
    real = [e for e in errors if "favicon" not in e.lower()]
    assert not real, f"console errors: {real}"
