"""The Models page in real Chromium at 1440 px: the models table fits (no column hidden behind a horizontal
scroll), and cancelling a training run gives the Train button back with a Resume offer, without a reload."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.data.dataset import load_category
from core.models.registry import spec
from core.progress import duration_text
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, streamlit_server

HEADERS = ["category", "model", "version", "backbone", "created (UTC)", "train s", "image AUROC", "pixel AUROC",
           "AUPRO", "F1-max", "ms/image"]
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed")


N_TRAIN = 80  # good images to train on: 12 epochs of them in batches of 2 (480 steps) outlast the cancel by far


@pytest.fixture()
def models_server(demo_root: Path, trained_store: Path, tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """The app over a copy of the trained store and of the demo data with its good images copied up to
    :data:`N_TRAIN` (the cosine recipe stops after 12 epochs: on the demo's 16 images, 96 steps, a run the
    test's cancel could miss on a fast machine)."""
    store = tmp_path / "models"
    shutil.copytree(trained_store, store)
    data = tmp_path / "data"
    shutil.copytree(demo_root, data)
    good = data / "demo_metal" / "train" / "good"
    originals = sorted(good.glob("*.png"))
    for i in range(N_TRAIN - len(originals)):
        shutil.copyfile(originals[i % len(originals)], good / f"copy_{i:03d}.png")
    with streamlit_server(data, store) as url:
        yield url, store, data


def test_models_table_fits_and_cancel_gives_train_back(models_server: tuple[str, Path, Path], tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    url, store, data = models_server
    n_train = len(load_category(data, "demo_metal").train)
    estimate = spec("efficientad").estimate_seconds({**spec("efficientad").default_settings(), "height": 256,
                                                     "width": 256, "steps": 3000}, n_train, None)
    assert estimate is not None and estimate > 45  # a minute of training: the cancel below cannot come too late
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.goto(url, wait_until="domcontentloaded")
        table = page.locator('[data-testid="stDataFrame"]').first
        table.wait_for(timeout=120_000)
        page.wait_for_timeout(1500)  # the grid sizes its columns after the first paint
        headers = table.locator('[role="columnheader"]').all_inner_texts()
        assert [h.strip() for h in headers] == HEADERS  # every column drawn (the grid draws only visible ones)
        scroll, client = table.locator(".dvn-scroller").evaluate("e => [e.scrollWidth, e.clientWidth]")
        assert scroll <= client, f"expected the models table to fit its {client} px, found {scroll} px of columns"
        page.screenshot(path=str(tmp_path / "models-1440.png"), full_page=True)

        page.get_by_role("combobox", name="Model", exact=True).click()  # the training form's (the sidebar's: radio)
        page.get_by_role("option", name="EfficientAD").click()
        steps = page.get_by_role("spinbutton", name="Training steps")
        steps.wait_for(timeout=30_000)
        steps.fill("3000")
        steps.press("Enter")
        page.get_by_text(f"on {n_train} good images: ").filter(
            has_text=f"{duration_text(estimate)} on a quiet 2-core CPU").first.wait_for(timeout=30_000)
        train = page.get_by_role("button", name="Train", exact=True)
        train.click()
        page.get_by_text("elapsed").first.wait_for(timeout=120_000)
        page.get_by_text(re.compile(r"step \d+/\d+")).first.wait_for(timeout=180_000)  # begun
        assert train.is_disabled()
        page.get_by_role("button", name="Cancel training").click()
        page.get_by_text("the training state is kept").first.wait_for(timeout=60_000)
        page.wait_for_function(  # no click, no field touched: the job's end redraws the page
            """() => [...document.querySelectorAll('button')].some(b => b.innerText.trim() === 'Train' && !b.disabled)""",
            timeout=15_000)
        assert page.get_by_role("button", name="Resume from step").count() == 1
        page.screenshot(path=str(tmp_path / "models-cancelled.png"), full_page=True)
        browser.close()
    assert (store / ".training" / "demo_metal" / "efficientad" / "progress.json").is_file()
