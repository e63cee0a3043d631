"""The review band: OK / REVIEW / DEFECT around the image threshold (core.portable rules, core.scores.calibration)."""

from __future__ import annotations

import numpy as np
import pytest

from core.portable import DEFECT, OK, REVIEW, Rules, check_calibration, verdict
from core.scores.calibration import REVIEW_RATES, Calibration, calibrate, threshold_for
from core.types import Prediction


@pytest.mark.parametrize(("score", "band", "expected"), [
    (0.5, (1.0, 3.0), OK),
    (1.0, (1.0, 3.0), REVIEW),  # the low edge is in the band
    (2.9, (1.0, 3.0), REVIEW),
    (3.0, (1.0, 3.0), DEFECT),  # the high edge is DEFECT, like the threshold itself
    (1.9, None, OK),  # no band: the plain threshold (2.0)
    (2.0, None, DEFECT),
])
def test_verdict_table(score, band, expected):
    assert verdict(score, 2.0, band) == expected


def test_rules_note_says_which_side_of_the_threshold():
    rules = Rules(2.0, 16, None, None, (1.0, 3.0))
    below, above = rules.decide((64, 64, 3), 1.5, None), rules.decide((64, 64, 3), 2.5, None)
    assert (below.verdict, above.verdict) == (REVIEW, REVIEW)
    assert "below the threshold" in below.note and "above the threshold" in above.note
    assert Rules.from_calibration({"image_threshold": 2.0, "review_low": 1.0, "review_high": 3.0}).review == (1.0, 3.0)
    assert Rules.from_calibration({"image_threshold": 2.0}).review is None


@pytest.mark.parametrize(("fields", "message"), [
    ({"review_low": 2.5, "review_high": 3.0}, r"review_low <= image_threshold <= review_high"),
    ({"review_low": 1.0, "review_high": 1.5}, r"review_low <= image_threshold <= review_high"),
    ({"review_low": 1.0}, "both review_low and review_high"),
    ({"review_low": float("nan"), "review_high": 3.0}, "finite number for review_low"),
])
def test_band_must_hold_the_threshold(fields, message):
    with pytest.raises(ValueError, match=message):
        check_calibration({"image_threshold": 2.0, "pixel_threshold": 1.0, **fields})


def _goods(scores: list[float]) -> list[Prediction]:
    return [Prediction(s, np.full((4, 4), s, dtype=np.float32), 1.0) for s in scores]


def test_calibrate_sets_the_default_band_from_the_review_rates():
    scores = [float(x) for x in np.linspace(1.0, 2.0, 200)]
    cal = calibrate(_goods(scores), "test")
    low = threshold_for(scores, REVIEW_RATES[0], cal.rule or "max")
    high = threshold_for(scores, REVIEW_RATES[1], cal.rule or "max")
    assert cal.review == pytest.approx((low, high))
    assert cal.review_low < cal.image_threshold < cal.review_high
    # the band's share of good scores is about the difference of its rates (10% - 1%)
    inside = np.mean([(cal.review_low <= s < cal.review_high) for s in scores])
    assert 0.05 <= inside <= 0.12


def test_moving_the_threshold_widens_a_band_that_no_longer_holds_it():
    cal = calibrate(_goods([float(x) for x in np.linspace(1.0, 2.0, 200)]), "test")
    low, high = cal.review
    moved = cal.with_thresholds(high + 1.0, cal.pixel_threshold, "user")
    assert moved.review == (low, high + 1.0)
    with pytest.raises(ValueError, match="review band around the image threshold"):
        cal.with_review(cal.image_threshold + 0.1, high)
    assert cal.with_review(low - 1, high + 1).review == (low - 1, high + 1)


def test_a_file_saved_before_the_band_gets_the_default_band_around_its_threshold():
    saved = calibrate(_goods([float(x) for x in np.linspace(1.0, 2.0, 50)]), "test").to_dict()
    for key in ("review_low", "review_high", "rule", "good_scores", "good_map_maxes", "promise"):
        saved.pop(key)
    saved["image_threshold"] = 3.0  # chosen by a person, above the whole default band
    saved["chosen_by"] = "user"
    cal = Calibration.from_dict(saved)
    assert cal.review is not None and cal.review_low < 3.0 and cal.review_high == 3.0


def test_band_counts_by_hand():
    from core.scores.thresholds import band_counts

    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.5, 1.5, 2.5, 1.8, 2.2, 4.0])
    # threshold 2.0: errors are the good 2.5 (flagged) and the defective 1.8 (missed); band [1.6, 3.0) holds
    # 2.5, 1.8 and 2.2 -> 3 parts, both errors
    found = band_counts(labels, scores, 2.0, (1.6, 3.0))
    assert (found.parts, found.errors, found.errors_caught) == (3, 2, 2)
    assert band_counts(labels, scores, 2.0, (1.9, 2.4)).errors_caught == 0


def test_the_watch_folder_files_review_images_in_their_own_folder(tmp_path):
    from core.line.watch import WatchConfig, Watcher

    (tmp_path / "in").mkdir()
    config = WatchConfig(tmp_path / "in", tmp_path / "ok", tmp_path / "defect", tmp_path / "rejected",
                         tmp_path / "log.csv")
    watcher = Watcher(config, lambda: None)
    assert watcher._folder_for(REVIEW) == tmp_path / "review" and (tmp_path / "review").is_dir()
    assert watcher._folder_for(OK) == tmp_path / "ok" and watcher._folder_for(DEFECT) == tmp_path / "defect"
    chosen = WatchConfig(**{**config.__dict__, "review_dir": tmp_path / "people"})
    assert Watcher(chosen, lambda: None)._folder_for(REVIEW) == tmp_path / "people"
