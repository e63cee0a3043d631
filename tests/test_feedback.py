"""The feedback loop in core: Mark as OK (PatchCore learns the image as a new version), Mark as defect, undo,
and refusals that change nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from core import detector as det
from core import feedback
from core.imageio import load_image
from core.store import ModelStore, ModelStoreError
from tests.conftest import rgb


@pytest.fixture()
def setup(trained_store: Path, demo_root: Path, tmp_path: Path) -> tuple[ModelStore, Path]:
    shutil.copytree(trained_store, tmp_path / "models")
    shutil.copytree(demo_root, tmp_path / "data")
    return ModelStore(tmp_path / "models"), tmp_path / "data"


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_mark_ok_adds_the_image_to_the_bank_as_a_new_version(setup: tuple[ModelStore, Path]) -> None:
    store, data = setup
    model = det.load(store.current("demo_metal", "patchcore"))
    image = load_image(data / "demo_metal" / "test" / "good" / "001.png")
    other = load_image(data / "demo_metal" / "test" / "good" / "000.png")
    result = feedback.mark_ok(model, image, "001.png")
    assert (result.before.version, result.after.version) == (1, 2)
    assert store.current("demo_metal", "patchcore") == result.after
    assert result.score_after < 0.5 * result.score_before  # its own patches are in the bank now
    new = det.load(result.after)
    assert new.detector.memory_bank.shape[0] == model.detector.memory_bank.shape[0] + 64  # 8x8 patches at 64 px
    assert new.calibration == model.calibration  # thresholds kept
    # other images can only score lower or equal (a larger bank)
    assert new.detector.predict([other])[0].score <= model.detector.predict([other])[0].score + 1e-4
    manifest = store.read_manifest(result.after)
    assert manifest["reason"] == "feedback: 001.png marked OK" and manifest["parent"] == 1
    log = store.read_feedback("demo_metal", "patchcore")
    assert log[0]["action"] == "mark_ok" and log[0]["sha1"] == feedback.image_sha1(image)
    assert "undone" in feedback.undo(store, "demo_metal", "patchcore")
    assert store.current("demo_metal", "patchcore").version == 1
    with pytest.raises(feedback.FeedbackError, match="nothing to undo"):
        feedback.undo(store, "demo_metal", "patchcore")


@pytest.mark.parametrize(
    ("kind", "image", "message"),
    [
        ("efficientad", rgb(64, 64), "EfficientAD cannot learn from a single marked image yet"),
        ("patchcore", rgb(8, 8), "too small for a verdict"),
        ("patchcore", rgb(64, 400), "does not look like this product's images"),
    ],
)
def test_refused_marks_change_nothing(setup: tuple[ModelStore, Path], kind: str, image: np.ndarray,
                                      message: str) -> None:
    store, _ = setup
    before = _files(store.root)
    with pytest.raises(feedback.FeedbackError, match=message):
        feedback.mark_ok(det.load(store.current("demo_metal", kind)), image, "x.png")
    assert _files(store.root) == before


def test_damaged_log_stops_feedback_and_loses_nothing(setup: tuple[ModelStore, Path]) -> None:
    store, data = setup
    model = det.load(store.current("demo_metal", "patchcore"))
    log = store.kind_folder("demo_metal", "patchcore") / "feedback.jsonl"
    log.write_text('{"action": "mark_ok"}\n[truncated\n')
    before = _files(store.root)
    image = load_image(data / "demo_metal" / "test" / "good" / "000.png")
    with pytest.raises(ModelStoreError, match="line 2: expected one JSON object per line"):
        feedback.mark_ok(model, image, "000.png")
    with pytest.raises(ModelStoreError, match="line 2"):
        feedback.mark_defect(model, image, "000.png", data, "crack")
    with pytest.raises(ModelStoreError, match="line 2"):
        feedback.undo(store, "demo_metal", "patchcore")
    assert _files(store.root) == before
    assert not (data / "demo_metal" / "test" / "crack").exists()


@pytest.mark.parametrize("defect", ["good", "../escape", ".hidden", ""])
def test_defect_names_that_are_not_plain_folders_are_refused(setup: tuple[ModelStore, Path], defect: str) -> None:
    store, data = setup
    model = det.load(store.current("demo_metal", "patchcore"))
    with pytest.raises(feedback.FeedbackError, match="defect name|found 'good'"):
        feedback.mark_defect(model, rgb(64, 64), "x.png", data, defect)


def test_the_same_image_marked_twice_stays_until_both_marks_are_undone(setup: tuple[ModelStore, Path]) -> None:
    store, data = setup
    model = det.load(store.current("demo_metal", "patchcore"))
    first = feedback.mark_defect(model, rgb(64, 64, seed=4), "a.png", data, "crack")
    second = feedback.mark_defect(model, rgb(64, 64, seed=4), "a.png", data, "crack")
    assert first.filed_as == second.filed_as and first.filed_as.is_file()
    feedback.undo(store, "demo_metal", "patchcore")
    assert first.filed_as.is_file()
    feedback.undo(store, "demo_metal", "patchcore")
    assert not first.filed_as.exists()
