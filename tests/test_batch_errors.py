"""Batch re-inspection when judging one image fails inside the model (core/line/batch.py): the batch goes on, the
failure is counted and named in the summary, nothing is recorded for that image, and a rerun tries it again."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from core.line import batch
from core.store.history import History
from core.store.model_store import ModelStore
from core.verdict import inspection

CATEGORY, KIND = "demo_metal", "patchcore"


def test_a_failing_image_does_not_stop_the_batch_and_is_retried(store: ModelStore, demo_root: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    images = sorted((demo_root / CATEGORY / "test").rglob("*.png"))[:6]
    poisoned = images[2]
    real_inspect = inspection.inspect
    from core.data.imageio import load_image

    bad = load_image(poisoned.read_bytes(), poisoned.name)

    def inspect(model: object, batch_images: Sequence[np.ndarray]) -> list[inspection.Inspection]:
        if any(image.shape == bad.shape and np.array_equal(image, bad) for image in batch_images):
            raise RuntimeError("out of memory in the extractor")
        return real_inspect(model, batch_images)  # type: ignore[arg-type]

    ref = store.current(CATEGORY, KIND)
    with History(f"sqlite:///{tmp_path / 'batch.sqlite3'}") as history:
        monkeypatch.setattr(inspection, "inspect", inspect)
        first = batch.run_batch(ref, images, batch.LocalRunner(ref), history, chunk_size=4)
        assert (first.judged, first.failed, first.skipped) == (len(images) - 1, 1, 0)
        assert poisoned.name in first.describe() and "out of memory in the extractor" in first.describe()
        rows = history.results(category=CATEGORY, kind=KIND, version=ref.version, source=batch.SOURCE, limit=None)
        assert len(rows) == len(images) - 1 and poisoned.name not in {r.name for r in rows}
        monkeypatch.setattr(inspection, "inspect", real_inspect)  # the cause is gone: a rerun judges only that one
        again = batch.run_batch(ref, images, batch.LocalRunner(ref), history, chunk_size=4)
        assert (again.judged, again.failed, again.skipped) == (1, 0, len(images) - 1)


def test_a_model_that_fails_on_every_image_stops_the_run_with_the_first_error(
        store: ModelStore, demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = sorted((demo_root / CATEGORY / "test").rglob("*.png"))
    monkeypatch.setattr(batch, "MAX_FAILED_IN_A_ROW", 5)  # the demo's test set is smaller than the real limit
    assert len(images) > batch.MAX_FAILED_IN_A_ROW

    def inspect(model: object, batch_images: Sequence[np.ndarray]) -> list[inspection.Inspection]:
        raise RuntimeError("the model file's weights are all NaN")

    ref = store.current(CATEGORY, KIND)
    with History(f"sqlite:///{tmp_path / 'batch.sqlite3'}") as history:
        monkeypatch.setattr(inspection, "inspect", inspect)
        with pytest.raises(batch.BatchAborted, match=r"failures in a row.*weights are all NaN") as caught:
            batch.run_batch(ref, images, batch.LocalRunner(ref), history, chunk_size=4)
        assert caught.value.failed == batch.MAX_FAILED_IN_A_ROW  # stopped there, not at the end of the archive
        assert images[0].name in str(caught.value)
        assert history.results(category=CATEGORY, kind=KIND, source=batch.SOURCE, limit=None) == []


def test_a_copy_of_a_failed_image_is_failed_too_not_already_judged(
        store: ModelStore, demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    image = sorted((demo_root / CATEGORY / "test").rglob("*.png"))[0]
    copies = [image]
    for i in range(5):  # the same content under other names, in the same chunk and in later ones
        copies.append(tmp_path / f"copy{i}.png")
        shutil.copyfile(image, copies[-1])

    def inspect(model: object, batch_images: Sequence[np.ndarray]) -> list[inspection.Inspection]:
        raise RuntimeError("out of memory")

    ref = store.current(CATEGORY, KIND)
    with History(f"sqlite:///{tmp_path / 'batch.sqlite3'}") as history:
        monkeypatch.setattr(inspection, "inspect", inspect)
        summary = batch.run_batch(ref, copies, batch.LocalRunner(ref), history, chunk_size=2)
        assert (summary.judged, summary.skipped, summary.failed) == (0, 0, len(copies))
