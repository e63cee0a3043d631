"""The Models page in real Chromium at 1440 px: the models table fits (no column hidden behind a horizontal
scroll), and cancelling a training run gives the Train button back with a Resume offer, without a reload."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, streamlit_server

HEADERS = ["category", "model", "version", "backbone", "created (UTC)", "train s", "image AUROC", "pixel AUROC",
           "AUPRO", "F1-max", "ms/image"]
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed")


@pytest.fixture()
def models_server(demo_root: Path, trained_store: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    store = tmp_path / "models"
    shutil.copytree(trained_store, store)
    with streamlit_server(demo_root, store) as url:
        yield url, store


def test_models_table_fits_and_cancel_gives_train_back(models_server: tuple[str, Path], tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    url, store = models_server
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
        page.get_by_text("about 15 s").first.wait_for(timeout=30_000)  # the cosine recipe: 12 epochs of 16 images
        train = page.get_by_role("button", name="Train", exact=True)
        train.click()
        page.get_by_text("elapsed").first.wait_for(timeout=120_000)
        page.get_by_text(re.compile(r"step \d+/\d+")).first.wait_for(timeout=180_000)  # begun (12 epochs cap 3000)
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
