"""A short run on the real magnetic_tile data when ../shared/data is present (skipped otherwise)."""

from __future__ import annotations

import numpy as np
import pytest

from core.data.dataset import load_category
from core.data.imageio import load_image
from core.models.patchcore import PatchCore, PatchCoreConfig
from core.scores import metrics
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.skipif(not (SHARED_DATA / "magnetic_tile").is_dir(),
                                reason="real development data (../shared/data/magnetic_tile) not present")


def test_patchcore_separates_real_defects() -> None:
    data = load_category(SHARED_DATA, "magnetic_tile")
    train = [load_image(s.path) for s in data.train[::25]]  # 31 good images
    good = [s for s in data.test if s.label == 0][::10]
    bad = [s for s in data.test if s.defect in ("break", "fray")][::6]
    model = PatchCore(PatchCoreConfig(coreset_ratio=0.05))
    model.fit(train)
    preds = model.predict([load_image(s.path) for s in good + bad])
    labels = np.array([0] * len(good) + [1] * len(bad))
    assert all(p.anomaly_map.shape == load_image(s.path).shape[:2] for p, s in zip(preds[:3], good[:3], strict=True))
    assert metrics.roc_auc(labels, np.array([p.score for p in preds])) > 0.75
