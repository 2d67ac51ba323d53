"""The page in a real headless browser (the system's Chromium through Playwright; skipped where either is absent):
it loads, an upload shows the answer and its label probabilities.

Set ``EVL_ECG_SCREENSHOT=docs/img/serve.png`` to keep the screenshot (docs/serve.md shows it).
"""

from __future__ import annotations

import os
import shutil

import pytest

from .test_serve import Server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no system Chromium (apt-get install chromium)")
def test_page_loads_and_an_upload_shows_the_answer(teacher_dir, records, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    srv = Server(teacher_dir, tmp_path)
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 820})
            page.set_default_timeout(240_000)  # a loaded shared machine
            page.goto(srv.url + "/")
            page.wait_for_function("document.getElementById('question').options.length > 0")
            assert "not a medical device" in page.inner_text("#disclaimer")
            assert "README.md" in page.inner_text("#model")
            page.select_option("#question", "ptbxl")
            page.set_input_files("#file", [str(records["wfdb"]), str(records["wfdb"].with_suffix(".dat"))])
            page.wait_for_function("document.body.dataset.state === 'answered'")
            assert page.inner_text("#answer").strip() not in ("", "–")
            assert page.locator("#probs .bar").count() == 6  # five superclasses and "none"
            assert page.eval_on_selector("#page", "img => img.naturalWidth") == 512
            shot = tmp_path / "serve.png"
            page.screenshot(path=str(shot), full_page=True)
            browser.close()
        assert shot.stat().st_size > 10_000
        keep = os.environ.get("EVL_ECG_SCREENSHOT")
        if keep:
            os.makedirs(os.path.dirname(keep) or ".", exist_ok=True)
            shutil.copy(shot, keep)
    finally:
        srv.stop()
