"""A newcomer's first run, timed: fresh clone -> `bash run_app.sh` -> the Compare page showing both models.

    python benchmarks/bench_first_run.py [--keep-venv]

Clones the committed HEAD into a temporary folder, runs the README's first command there (a new virtualenv and
pip install included, unless --keep-venv links the current one), and times until headless Chromium shows Compare
with both models' verdicts. Writes a row into RESULTS.md between `<!-- first_run -->` markers, with the CPU.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import machine, write_section

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
MARK = ("<!-- first_run -->", "<!-- /first_run -->")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keep-venv", action="store_true", help="link this checkout's .venv (pip not timed)")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="first_run_"))
    clone = work / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    if args.keep_venv:
        (clone / ".venv").symlink_to(ROOT / ".venv")
    port = _port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSPECT_")}
    log = open(work / "run_app.log", "w")  # noqa: SIM115 - closed below
    t0 = time.perf_counter()
    proc = subprocess.Popen(["bash", "run_app.sh", "--server.port", str(port)], cwd=clone, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    marks: dict[str, float] = {}
    try:
        url = f"http://127.0.0.1:{port}"
        while time.perf_counter() - t0 < args.timeout:
            text = (work / "run_app.log").read_text(errors="replace")
            if "pip" not in marks and (clone / "demo_data").exists():
                marks["pip"] = time.perf_counter() - t0
            if "patchcore" not in marks and (clone / "models/demo_metal/patchcore/v1/eval_images.csv").exists():
                marks["patchcore"] = time.perf_counter() - t0
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                    marks["served"] = time.perf_counter() - t0
                    break
            except OSError:
                time.sleep(0.5)
            if proc.poll() is not None:
                raise RuntimeError(f"run_app.sh stopped early:\n{text[-3000:]}")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(f"{url}/compare", wait_until="domcontentloaded")
            caption = page.get_by_text(re.compile(r"Verdicts differ on \d+ of \d+ evaluation images")).first
            caption.wait_for(timeout=600_000)
            page.get_by_text(re.compile(r"EfficientAD: \d+\.\d{4} → ")).first.wait_for(timeout=600_000)
            marks["compare"] = time.perf_counter() - t0
            shown = caption.inner_text()
            page.screenshot(path=str(work / "compare.png"))
            browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
    row = (f"| {time.strftime('%Y-%m-%d %H:%M')} | "
           f"{'linked .venv (pip not timed)' if args.keep_venv else 'new .venv, pip install included'} | "
           f"{marks.get('pip', float('nan')):.0f} s | {marks.get('patchcore', float('nan')):.0f} s | "
           f"{marks['served']:.0f} s | **{marks['compare']:.0f} s ({marks['compare'] / 60:.1f} min)** | {shown} |")
    print(row)
    results = ROOT / "benchmarks" / "RESULTS.md"
    old = results.read_text()
    rows = []
    if MARK[0] in old:
        rows = [line for line in old.split(MARK[0], 1)[1].split(MARK[1], 1)[0].splitlines() if line.startswith("| 20")]
    write_section("first_run", "## A newcomer's first run: fresh clone -> `bash run_app.sh` -> Compare with both models\n\n"
                  f"`python benchmarks/bench_first_run.py` on {machine()}. Target: within 6 minutes on 2 cores, "
                  "pip included. Columns: seconds since the start when pip was done (the demo data appears), "
                  "PatchCore trained and evaluated, the app served, Compare drawn with both models' verdicts.\n\n"
                  "| when | setup | pip done | PatchCore ready | app served | Compare shows both | Compare says |\n"
                  "|---|---|---|---|---|---|---|\n" + "\n".join(rows + [row]))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
