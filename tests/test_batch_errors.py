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
