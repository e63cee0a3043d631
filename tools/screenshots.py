"""Capture dashboard screenshots into docs/ with headless Debian Chromium (Playwright).

    python tools/screenshots.py --data demo_data --store models

Starts the app on a free port (a cold start: the first page is a deep link), opens Inspect (one uploaded test
image), Thresholds and Compare, then walks the Thresholds visit cycle in ONE browser session (navigating with
the sidebar links, as a user does): first visit -> F1-optimal + Save -> Inspect -> back to Thresholds (second
visit: the saved values) -> Restore defaults (unsaved, with the Save preview). Then the feedback loop on
Inspect (Mark as OK, the verdict and version change; Undo) and the Models page's version list. Every save is a
new model version, so the store keeps the whole history. The server's log is written to ``<out>/server.log``
and its 404 and watcher-overflow lines are counted at the end.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=ROOT / "demo_data")
    parser.add_argument("--store", type=Path, default=ROOT / "models")
    parser.add_argument("--image", type=Path, default=ROOT / "demo_data" / "demo_metal" / "test" / "scratch" / "002.png")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--no-compare", action="store_true", help="skip Compare (needs both models trained)")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "INSPECT_DATA_ROOT": str(args.data.resolve()), "INSPECT_MODEL_STORE": str(args.store.resolve())}
    log = open(args.out / "server.log", "w")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.headless", "true"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        args.out.mkdir(exist_ok=True)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(f"{url}/inspect")
            page.get_by_text("Drop images here").first.wait_for(timeout=120_000)
            page.locator("input[type=file]").first.set_input_files(str(args.image))
            page.get_by_text("heatmap overlay").first.wait_for(timeout=120_000)
            time.sleep(2)
            page.screenshot(path=str(args.out / "inspect.png"), full_page=True)
            pages = (("thresholds", "Image ROC"),) + ((("compare", "Side by side"),) if not args.no_compare else ())
            for name, marker in pages:
                page.goto(f"{url}/{name}")
                page.get_by_text(marker).first.wait_for(timeout=120_000)
                time.sleep(4)
                page.screenshot(path=str(args.out / f"{name}.png"), full_page=True)
            thresholds_cycle(page, url, args.out)
            feedback_cycle(page, args.image, args.out)
            line_page(page, url, args.data, args.store, args.out)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
    text = (args.out / "server.log").read_text()
    print(f"server log: {text.count(' 404')} lines with 404, {text.count('Inotify')} watcher overflows, "
          f"{text.count('Traceback')} tracebacks", file=sys.stderr)
    return 0


def line_page(page, url: str, data: Path, store: Path, out: Path) -> None:
    """A watch folder judges a dozen test images (real records in the line log), then the Line page."""
    import shutil
    import tempfile

    tmp = tempfile.mkdtemp()  # kept until the screenshot is taken: the page shows the judged images
    incoming = Path(tmp) / "in"
    incoming.mkdir()
    for i, src in enumerate(sorted((data / "demo_metal" / "test").rglob("*.png"))[::2][:12]):
        shutil.copy(src, incoming / f"cam_{i:03d}.png")
    subprocess.run([sys.executable, "-m", "core", "watch", "--store", str(store), "--category", "demo_metal",
                    "--in", str(incoming), "--ok", str(Path(tmp) / "ok"), "--defect", str(Path(tmp) / "defect"),
                    "--settle", "0", "--once"], cwd=ROOT, check=True, capture_output=True)
    page.set_viewport_size({"width": 1500, "height": 1500})
    page.goto(f"{url}/line")
    page.get_by_text("Last images").first.wait_for(timeout=60_000)
    _settle(page, 5.0)
    page.screenshot(path=str(out / "line.png"), full_page=True)
    shutil.rmtree(tmp, ignore_errors=True)


def feedback_cycle(page, image: Path, out: Path) -> None:
    """Inspect: an uploaded image marked OK (verdict and version change), the Undo button; then Models."""
    image_name = image.name
    page.set_viewport_size({"width": 1500, "height": 1500})
    page.get_by_role("link", name="Inspect").first.click()
    page.get_by_text("Drop images here").first.wait_for(timeout=60_000)
    page.locator("input[type=file]").first.set_input_files(str(image))
    page.get_by_text(f"{image_name} — ").first.wait_for(timeout=120_000)
    _settle(page)
    page.get_by_role("button", name="Mark as OK (false alarm)").first.click()
    undo = page.get_by_role("button", name=f"Undo: {image_name} marked OK")
    confirm = page.get_by_role("button", name="Yes, mark it OK anyway")  # asked when far above the threshold
    undo.or_(confirm).first.wait_for(timeout=120_000)
    if confirm.count():
        confirm.first.click()
    undo.first.wait_for(timeout=120_000)
    _settle(page)
    page.screenshot(path=str(out / "inspect_after_mark_ok.png"), full_page=True)
    page.get_by_role("link", name="Models").first.click()
    page.get_by_text("Versions of").first.wait_for(timeout=60_000)
    _settle(page)
    page.screenshot(path=str(out / "models.png"), full_page=True)
    page.get_by_role("link", name="Inspect").first.click()
    page.get_by_role("button", name=f"Undo: {image_name} marked OK").first.click()
    page.get_by_text("no longer marked OK").first.wait_for(timeout=60_000)


def _settle(page, seconds: float = 3.0) -> None:
    time.sleep(seconds)
    page.wait_for_load_state("networkidle")


def _save_thresholds(page) -> None:
    page.get_by_role("button", name="Save thresholds with the model").click()
    page.get_by_text("The thresholds shown are the saved ones").first.wait_for(timeout=60_000)


def thresholds_cycle(page, url: str, out: Path) -> None:
    page.set_viewport_size({"width": 1500, "height": 2700})  # the whole page, Save section included
    page.goto(f"{url}/thresholds")
    page.get_by_text("Image ROC").first.wait_for(timeout=120_000)
    _settle(page)
    page.screenshot(path=str(out / "thresholds_first_visit.png"), full_page=True)
    page.get_by_role("button", name="Use F1-optimal").click()
    page.get_by_text("Unsaved changes").first.wait_for(timeout=60_000)
    _settle(page)
    page.screenshot(path=str(out / "thresholds_unsaved.png"), full_page=True)
    _save_thresholds(page)
    page.get_by_role("link", name="Inspect").first.click()
    page.get_by_text("Drop images here").first.wait_for(timeout=60_000)
    _settle(page, 2.0)
    page.get_by_role("link", name="Thresholds").first.click()
    page.get_by_text("Image ROC").first.wait_for(timeout=120_000)
    _settle(page)
    page.screenshot(path=str(out / "thresholds_second_visit.png"), full_page=True)
    page.get_by_role("button", name="Restore defaults").click()
    page.get_by_text("Unsaved changes").first.wait_for(timeout=60_000)
    _settle(page)
    page.screenshot(path=str(out / "thresholds_after_restore.png"), full_page=True)
    _save_thresholds(page)  # leave the store as it was


if __name__ == "__main__":
    raise SystemExit(main())
