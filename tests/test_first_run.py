"""A newcomer's first run: models trained and evaluated through the CLI (relative paths, as run_app.sh does)
are seen by every page of the app, which names its folders absolutely."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import pytest

from core.cli import main
from core.data.dataset import load_category
from core.store import lifecycle as det
from core.store.model_store import ModelStore
from tests.conftest import EFFICIENTAD_TEST_SETTINGS
from tests.test_app import page, similar_query


@pytest.fixture()
def cli_models(demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """PatchCore trained and evaluated by the CLI with ``--data data`` (relative, from the working directory),
    EfficientAD trained and evaluated as the app does (absolute paths)."""
    shutil.copytree(demo_root, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "data", "--category", "demo_metal", "--model", "patchcore", "--store", "models",
                 "--image-size", "64", "64", "--coreset-ratio", "0.1"]) == 0
    assert main(["evaluate", "--data", "data", "--category", "demo_metal", "--store", "models"]) == 0
    # the app runs from the repository, as run_app.sh starts it (its .streamlit/config.toml binds 127.0.0.1; from
    # any other folder Streamlit listens on every interface and the login gate refuses to serve)
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    store = ModelStore(tmp_path / "models")
    data = load_category(tmp_path / "data", "demo_metal")
    det.train(data, "efficientad", EFFICIENTAD_TEST_SETTINGS, store)
    det.run_evaluation(det.load(store.current("demo_metal", "efficientad")), data)
    monkeypatch.setenv("INSPECT_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("INSPECT_MODEL_STORE", str(tmp_path / "models"))
    monkeypatch.delenv("QDRANT_URL", raising=False)
    return tmp_path / "data", tmp_path / "models"


def test_compare_matches_every_image_whoever_evaluated_it(cli_models: tuple[Path, Path]) -> None:
    data, _ = cli_models
    n_test = len(load_category(data, "demo_metal").test)
    at = page("compare")
    caption = next(c.value for c in at.caption if "Verdicts differ" in c.value)
    found = re.search(r"of (\d+) evaluation images.*Spearman rank correlation (\S+)\.", caption)
    assert found, caption
    assert int(found.group(1)) == n_test
    assert math.isfinite(float(found.group(2)))
    assert len(at.multiselect[0].options) == n_test  # the side-by-side picker offers every image
    assert len(at.get("image")) >= 3


def test_similar_shows_the_scores_of_a_cli_evaluation(cli_models: tuple[Path, Path]) -> None:
    at, _ = similar_query()
    hits = at.dataframe[0].value
    tested = hits[hits["image"].str.startswith("test/")]
    column = "anomaly score (evaluated test images)"  # training images have none: the header says so
    assert len(tested) > 0 and tested[column].notna().all(), hits
    assert hits[~hits["image"].str.startswith("test/")][column].isna().all(), hits
