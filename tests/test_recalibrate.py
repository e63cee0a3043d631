"""Recalibrate from the line (core.verdict.recalibrate): a new version whose thresholds come from confirmed goods."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from core.scores.calibration import calibrate
from core.store import lifecycle
from core.store.model_store import ModelStore
from core.types import Prediction
from core.verdict.recalibrate import MIN_CONFIRMED, REASON, recalibrate_from_line


def _line_goods(n: int, score: float, spread: float) -> list[Prediction]:
    rng = np.random.default_rng(0)
    out = []
    for s in score + spread * rng.standard_normal(n):
        out.append(Prediction(float(s), np.full((8, 8), float(s) / 2, dtype=np.float32), 1.0))
    return out


@pytest.fixture
def model(trained_store: Path, tmp_path: Path) -> lifecycle.LoadedModel:
    store = tmp_path / "models"
    shutil.copytree(trained_store, store)
    return lifecycle.load(ModelStore(store).current("demo_metal", "patchcore"))


def test_new_version_from_confirmed_goods(model: lifecycle.LoadedModel):
    old = model.calibration
    shifted = old.good_score_mean + 5 * max(old.good_score_std, 1e-3)
    goods = _line_goods(20, shifted, max(old.good_score_std, 1e-3))
    ref = recalibrate_from_line(model, goods)
    store = ModelStore(model.ref.store)
    assert ref.version == model.ref.version + 1 and store.current("demo_metal", "patchcore") == ref
    assert store.read_manifest(ref)["reason"] == REASON
    new = lifecycle.read_calibration(ref)
    expected = calibrate(goods, "x", old.false_alarm_target)
    # thresholds and statistics from the confirmed images, for the model's own promise
    assert np.isclose(new.image_threshold, expected.image_threshold)
    assert np.isclose(new.good_score_mean, expected.good_score_mean)
    assert new.image_threshold > old.image_threshold and new.num_images == 20
    assert new.false_alarm_target == old.false_alarm_target and "20 line images confirmed good" in new.source
    # the guard and the size rules still describe the training images
    assert (new.familiarity_limit, new.aspect_min, new.aspect_max, new.min_side) == (
        old.familiarity_limit, old.aspect_min, old.aspect_max, old.min_side)
    # the weights are the trained ones: same scores
    image = np.full((64, 64, 3), 128, dtype=np.uint8)
    again = lifecycle.load(ref)
    assert np.isclose(again.detector.predict([image])[0].score, model.detector.predict([image])[0].score)


def test_too_few_confirmed_images_are_refused(model: lifecycle.LoadedModel):
    with pytest.raises(ValueError, match=f"at least {MIN_CONFIRMED} line images confirmed good.*found 3"):
        recalibrate_from_line(model, _line_goods(3, 1.0, 0.1))
    assert ModelStore(model.ref.store).current("demo_metal", "patchcore") == model.ref
