"""One real-browser smoke test: from a cold start, a deep link shows the frame (navigation titles and order,
the sidebar selection, no Deploy button) and an upload in headless Chromium shows a score."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float) -> None:
    """Wait until ``url`` answers 200, for ``timeout`` seconds of this process running: a try that took far
    longer than it can (every process of the machine stopped, as a shared machine's quiet benchmark does)
    counts as its own few seconds, so a pause is not taken for a server that never started."""
    waited = 0.0
    while waited < timeout:
        start = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
        waited += min(time.monotonic() - start, 5.0)
    raise TimeoutError(f"expected the app at {url} within {timeout}s, found no answer")


@contextlib.contextmanager
def streamlit_server(data_root: Path, store: Path, timeout: float = 120) -> Iterator[str]:
    """``streamlit run app.py`` on a free local port over ``data_root`` and ``store``; yields its URL."""
    port = _free_port()
    env = {**os.environ, "INSPECT_DATA_ROOT": str(data_root), "INSPECT_MODEL_STORE": str(store), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_http(f"http://127.0.0.1:{port}/_stcore/health", timeout)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture()
def server(demo_root: Path, trained_store: Path, tmp_path: Path) -> Iterator[str]:
    store = tmp_path / "models"
    shutil.copytree(trained_store, store)
    with streamlit_server(demo_root, store, 90) as url:
        yield url


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (apt-get install chromium)")
def test_upload_shows_score(server: str, demo_root: Path, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    image = demo_root / "demo_metal" / "test" / "spot" / "000.png"
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{server}/inspect", wait_until="domcontentloaded")  # the server's first run: a deep link
        page.get_by_text("Drop images here").first.wait_for(timeout=90_000)
        nav = page.locator('[data-testid="stSidebarNav"] a')
        assert [t.strip().splitlines()[-1] for t in nav.all_inner_texts()] == ["Models", "Inspect", "Thresholds", "Compare",
                                                               "Similar", "Annotate", "Line", "Review"]
        assert page.get_by_text("Model in use: demo_metal/patchcore v1").count() == 1
        assert page.get_by_role("button", name="Deploy").count() == 0
        page.locator("input[type=file]").first.set_input_files(str(image))
        heading = page.get_by_text(re.compile(r"000\.png — .* score \d+\.\d{4}")).first
        heading.wait_for(timeout=90_000)
        text = heading.inner_text()
        assert re.search(r"score \d+\.\d{4} \(threshold \d+\.\d{4}\)", text), text
        assert "OK" in text or "DEFECT" in text
        page.screenshot(path=str(tmp_path / "inspect.png"), full_page=True)
        browser.close()
    assert (tmp_path / "inspect.png").stat().st_size > 10_000


# Every text the sidebar navigation ever shows, recorded from the first DOM change of the first response (a
# transient menu that is replaced a second later is still caught), with the time since navigation started.
_RECORD_NAV = """
window.__navSeen = [];
const record = () => {
  const links = document.querySelectorAll('[data-testid="stSidebarNav"] a');
  if (!links.length) return;
  const texts = Array.from(links, a => a.innerText.trim().split("\\n").pop());
  const last = window.__navSeen[window.__navSeen.length - 1];
  if (!last || last.texts.join("|") !== texts.join("|")) window.__navSeen.push({t: performance.now(), texts});
};
new MutationObserver(record).observe(document, {childList: true, subtree: true, characterData: true});
"""
TITLES = ["Models", "Inspect", "Thresholds", "Compare", "Similar", "Annotate", "Line", "Review"]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (apt-get install chromium)")
@pytest.mark.parametrize("path", ["", "thresholds"])
def test_cold_server_shows_only_the_real_navigation(server: str, path: str) -> None:
    """The first page a fresh server sends shows the frame's navigation, never Streamlit's auto-discovered
    ``pages/`` menu (lowercase file names, ``app`` first) that it used to show for 5-8 s on a cold start."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.add_init_script(_RECORD_NAV)
        page.goto(f"{server}/{path}", wait_until="commit")  # the server's first script run
        page.wait_for_function("window.__navSeen && window.__navSeen.length > 0", timeout=90_000)
        page.get_by_text("Model in use: demo_metal/patchcore v1").first.wait_for(timeout=90_000)
        page.wait_for_timeout(1000)  # a late second menu would be recorded too
        seen = page.evaluate("window.__navSeen")
        browser.close()
    assert [entry["texts"] for entry in seen] == [TITLES], seen
    print(f"\nreal navigation shown {seen[0]['t'] / 1000:.1f} s after navigation start ({path or '/'})")
