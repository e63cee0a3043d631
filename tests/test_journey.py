"""A newcomer's journey in real Chromium, from `bash run_app.sh` on empty folders: the demo data made and both
models trained and evaluated by the script itself, then every page with a real action: Models, Inspect (a good,
a defect and a broken upload), Thresholds (change, leave, return: still unsaved), Compare (every evaluation image,
both models), Similar (neighbours with their scores), Annotate (draw, rename, save) and Line (after requests to the
service, one of them refused).

Screenshots of each step go to ``INSPECT_JOURNEY_SHOTS`` when set (``INSPECT_JOURNEY_SHOTS=docs pytest
tests/test_journey.py`` refreshes the ones in docs/), else to the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, ROOT, _free_port, _wait_http

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed")
DEMO_STEPS = 40  # the script's EfficientAD budget, small here: the journey checks the path, not the accuracy
N_TEST = 26  # the demo's test images: 10 good + 8 scratch + 8 spot (core.data.demo defaults)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """`bash run_app.sh` on empty data and store folders, as a fresh clone runs it, and the service beside it."""
    tmp = tmp_path_factory.mktemp("journey")
    data, store = tmp / "demo_data", tmp / "models"
    port, service_port = _free_port(), _free_port()
    env = {**os.environ, "INSPECT_DATA_ROOT": str(data), "INSPECT_MODEL_STORE": str(store),
           "DEMO_EFFICIENTAD_STEPS": str(DEMO_STEPS), "HF_HUB_OFFLINE": "1"}
    log = open(tmp / "run_app.log", "w")  # noqa: SIM115 - closed below
    app = subprocess.Popen(["bash", str(ROOT / "run_app.sh"), "--server.port", str(port),
                            "--server.address", "127.0.0.1", "--server.headless", "true"],
                           cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    service = None
    try:
        _wait_http(f"http://127.0.0.1:{port}/_stcore/health", 900)
        service = subprocess.Popen([sys.executable, "-m", "core", "serve", "--store", str(store), "--port",
                                    str(service_port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        _wait_http(f"http://127.0.0.1:{service_port}/health", 120)
        shots = Path(os.environ.get("INSPECT_JOURNEY_SHOTS") or tmp / "shots")
        shots.mkdir(parents=True, exist_ok=True)
        yield {"url": f"http://127.0.0.1:{port}", "service": f"http://127.0.0.1:{service_port}", "data": data,
               "store": store, "shots": shots, "log": tmp / "run_app.log"}
    finally:
        for proc in (service, app):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM) if proc is app else proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        log.close()


def _post(url: str, body: bytes, name: str) -> int:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/octet-stream", "X-Filename": name})
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_newcomer_journey(first_run: dict[str, object]) -> None:
    try:
        _journey(first_run)
    except BaseException:
        log = first_run["log"]
        assert isinstance(log, Path)
        print("--- run_app.sh and service log (last 60 lines) ---\n" + "\n".join(log.read_text().splitlines()[-60:]))
        raise


def _journey(first_run: dict[str, object]) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    url, data, store, shots = first_run["url"], first_run["data"], first_run["store"], first_run["shots"]
    assert isinstance(data, Path) and isinstance(store, Path) and isinstance(shots, Path)
    category = data / "demo_metal"
    # what run_app.sh left: both models, evaluated, the demo's budget named in EfficientAD's version
    manifest = json.loads((store / "demo_metal" / "efficientad" / "v1" / "manifest.json").read_text())
    assert manifest["settings"]["steps"] == DEMO_STEPS and "demo's budget" in manifest["reason"]
    for kind in ("patchcore", "efficientad"):
        assert (store / "demo_metal" / kind / "v1" / "eval_images.csv").is_file(), kind

    good, defect = category / "test" / "good" / "000.png", category / "test" / "scratch" / "000.png"
    broken = data.parent / "broken.png"  # an input, not a screenshot: beside the data, never in docs/
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this file was cut short")
    inspect_url = f"{first_run['service']}/v1/inspect/demo_metal"
    assert _post(inspect_url, good.read_bytes(), "cam_good.png") == 200
    assert _post(inspect_url, defect.read_bytes(), "cam_scratch.png") == 200
    assert _post(inspect_url, b"not an image at all", "cam_broken.png") == 415  # refused: shown on Line

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(120_000)

        def go(title: str) -> None:
            page.locator('[data-testid="stSidebarNav"] a').filter(has_text=title).first.click()
            page.get_by_role("heading", name=re.compile(title)).first.wait_for()

        steps: dict[str, float] = {}  # seconds each step took (printed at the end: where the journey's time goes)
        last = [time.monotonic()]

        def shot(name: str) -> None:
            page.wait_for_timeout(800)
            page.screenshot(path=str(shots / f"journey_{name}.png"), full_page=True)
            now = time.monotonic()
            steps[name], last[0] = round(now - last[0], 1), now

        try:
            # Models: both models of the demo, trained by the script
            page.goto(url, wait_until="domcontentloaded")
            page.locator('[data-testid="stDataFrame"]').first.wait_for()
            shot("1_models")

            # Inspect: a good part, a defect and a broken file in one drop
            go("Inspect")
            page.locator("input[type=file]").first.set_input_files([str(good), str(defect), str(broken)])
            page.get_by_text(re.compile(r"broken\.png")).first.wait_for()
            for name in ("000.png",):
                page.get_by_text(re.compile(rf"{name} — .*score \d+\.\d{{4}}")).first.wait_for()
            assert page.get_by_text(re.compile(r"(OK|DEFECT)")).count() > 0
            assert page.get_by_text(re.compile(r"Skipped broken\.png")).count() == 1
            shot("2_inspect")

            # Thresholds: move the slider, leave, come back: the change is still there, marked unsaved
            go("Thresholds")
            slider = page.get_by_role("slider").first
            value = page.locator('[data-testid="stSliderThumbValue"]').first
            slider.wait_for()
            before = value.inner_text()
            slider.focus()
            for _ in range(25):
                page.keyboard.press("ArrowRight")
            page.get_by_text(re.compile("unsaved", re.I)).first.wait_for()
            moved = value.inner_text()
            assert moved != before
            shot("3_thresholds_unsaved")
            go("Inspect")
            go("Thresholds")
            page.get_by_text(re.compile("unsaved", re.I)).first.wait_for()
            assert page.locator('[data-testid="stSliderThumbValue"]').first.inner_text() == moved
            shot("4_thresholds_return")

            # Compare: every evaluation image, both models, a finite rank correlation
            go("Compare")
            caption = page.get_by_text(re.compile(r"Verdicts differ on \d+ of \d+ evaluation images")).first
            text = caption.inner_text()
            found = re.search(r"of (\d+) evaluation images.*correlation (-?\d+\.\d+)", text)
            assert found and int(found.group(1)) == N_TEST, text
            page.get_by_text(re.compile(r"EfficientAD: \d+\.\d{4} → ")).first.wait_for()
            page.get_by_text(re.compile(r"PatchCore: \d+\.\d{4} → ")).first.wait_for()
            shot("5_compare")

            # Similar: build the index, ask for a test image's neighbours: their anomaly scores are shown
            go("Similar")
            page.get_by_role("button", name=re.compile("Build")).first.click()
            box = page.get_by_role("combobox", name=re.compile("an image of the category"))
            box.wait_for(timeout=300_000)
            box.click()
            page.keyboard.type("test/scratch/000.png")
            page.keyboard.press("Enter")
            page.get_by_text(re.compile(r"· score \d+\.\d{3}")).first.wait_for()
            shot("6_similar")

            # Annotate: upload, draw, rename (the drawing stays), save
            go("Annotate")
            page.locator("input[type=file]").first.set_input_files(str(defect))
            canvas = page.locator("canvas.upper-canvas").first  # the drawing layer (inside the component's shadow root)
            canvas.wait_for()
            box_ = canvas.bounding_box()
            assert box_ is not None and box_["width"] >= 512, box_  # a 160 px image on a canvas of at least 512 px
            page.mouse.move(box_["x"] + 100, box_["y"] + 100)
            page.mouse.down()
            for i in range(20):
                page.mouse.move(box_["x"] + 100 + 10 * i, box_["y"] + 100 + 6 * i)
            page.mouse.up()
            save = page.get_by_role("button", name="Save as ground truth")
            page.wait_for_function("""() => [...document.querySelectorAll('button')].some(
                b => b.innerText.includes('Save as ground truth') && !b.disabled)""")
            name = page.get_by_label("Save as")
            name.fill("journey_scratch")
            name.press("Enter")
            page.wait_for_timeout(2000)
            assert save.is_enabled()  # renaming kept the drawing
            save.click()
            page.get_by_text(re.compile(r"Saved .*journey_scratch")).first.wait_for()
            shot("7_annotate")
            assert list((category / "ground_truth").rglob("journey_scratch_mask.png"))

            # Line: the service's answers, and the refused request with its reason
            go("Line")
            page.get_by_text("Requests and images the service or a watch folder refused").first.wait_for()
            shot("8_line")
        except BaseException:
            page.screenshot(path=str(shots / "journey_failure.png"))
            print(f"journey steps done (s): {steps}")
            raise
        browser.close()
    print(f"\njourney steps (s): {steps}")
