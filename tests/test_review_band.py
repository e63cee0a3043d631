"""The review band: OK / REVIEW / DEFECT around the image threshold (core.portable rules, core.scores.calibration)."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest

from core.portable import DEFECT, OK, REVIEW, Rules, check_calibration, verdict
from core.scores.calibration import REVIEW_RATES, Calibration, calibrate, tail_threshold, threshold_for
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
    assert Rules.from_calibration({"image_threshold": 2.0, "review_below": 1.0, "review_above": 0.5}).review == (1.0, 2.5)
    assert Rules.from_calibration({"image_threshold": 2.0}).review is None


@pytest.mark.parametrize(("fields", "message"), [
    ({"review_below": -0.5, "review_above": 1.0}, "width of 0 or more for review_below"),
    ({"review_below": 0.5, "review_above": -1.0}, "width of 0 or more for review_above"),
    ({"review_below": 1.0}, "both review_below and review_above"),
    ({"review_below": float("nan"), "review_above": 3.0}, "finite number for review_below"),
])
def test_band_widths_are_checked(fields, message):
    with pytest.raises(ValueError, match=message):
        check_calibration({"image_threshold": 2.0, "pixel_threshold": 1.0, **fields})


def _goods(scores: list[float]) -> list[Prediction]:
    return [Prediction(s, np.full((4, 4), s, dtype=np.float32), 1.0) for s in scores]


def test_calibrate_sets_the_default_band_from_the_review_rates():
    """The band's widths come from a normal fit to the good scores (the distance between its 10%, 5% and 1%
    tails), never from one sample: with 99-198 good images the 1% conformal rank is the largest score, an
    outlier on pcb_00041 that put 49% of the parts in the band (RESULTS.md line_promise_reading)."""
    scores = [float(x) for x in np.linspace(1.0, 2.0, 200)]
    cal = calibrate(_goods(scores), "test")
    s = float(np.std(scores, ddof=1))
    z = NormalDist().inv_cdf
    assert cal.review_below == pytest.approx((z(0.95) - z(1 - REVIEW_RATES[0])) * s)
    assert cal.review_above == pytest.approx((z(1 - REVIEW_RATES[1]) - z(0.95)) * s)
    low, high = cal.review
    assert low < cal.image_threshold < high
    assert cal.default_review() == pytest.approx(cal.review)
    # the band's share of good scores is about the difference of its rates (10% - 1%)
    inside = np.mean([(low <= x < high) for x in scores])
    assert 0.05 <= inside <= 0.15  # (uniform scores: a normal fit's tails are only near theirs)


def test_one_outlier_does_not_stretch_the_band():
    scores = [float(x) for x in np.linspace(1.0, 2.0, 150)] + [9.0]  # n = 151: the 1% rank is the largest score
    cal = calibrate(_goods(scores), "test")
    assert threshold_for(scores, REVIEW_RATES[1], "max") == 9.0
    assert cal.review is not None and cal.review[1] - cal.image_threshold < 0.2 * (9.0 - cal.image_threshold)


def test_the_band_moves_with_the_threshold_and_must_hold_it():
    cal = calibrate(_goods([float(x) for x in np.linspace(1.0, 2.0, 200)]), "test")
    low, high = cal.review
    moved = cal.with_thresholds(cal.image_threshold + 1.0, cal.pixel_threshold, "user")
    assert moved.review == pytest.approx((low + 1.0, high + 1.0))
    with pytest.raises(ValueError, match="review band around the image threshold"):
        cal.with_review(cal.image_threshold + 0.1, high)
    assert cal.with_review(low - 1, high + 1).review == pytest.approx((low - 1, high + 1))
    # a threshold edited by hand in calibration.json takes the band with it
    edited = {**cal.to_dict(), "image_threshold": 10.0}
    assert Calibration.from_dict(edited).review == pytest.approx((10.0 - (cal.image_threshold - low),
                                                                  10.0 + (high - cal.image_threshold)))


def test_a_file_saved_before_the_band_gets_the_default_band_around_its_threshold():
    made = calibrate(_goods([float(x) for x in np.linspace(1.0, 2.0, 50)]), "test")
    saved = made.to_dict()
    for key in ("review_below", "review_above", "rule", "good_scores", "good_map_maxes", "promise"):
        saved.pop(key)
    saved["image_threshold"] = 3.0  # chosen by a person, above the whole default band
    saved["chosen_by"] = "user"
    cal = Calibration.from_dict(saved)
    # as wide around 3.0 as the default band (from the saved statistics) is around the default threshold
    assert cal.review is not None and cal.review[0] < 3.0 < cal.review[1]
    # (a file without raw scores: the Gaussian tail of its saved statistics)
    tail = [tail_threshold(made.good_score_mean, made.good_score_std, 50, a) for a in (0.10, 0.05, 0.01)]
    assert (cal.review_below, cal.review_above) == pytest.approx((tail[1] - tail[0], tail[2] - tail[1]))


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


def test_the_promise_follows_the_threshold_in_use():
    scores = [float(x) for x in np.linspace(1.0, 2.0, 100)]
    cal = calibrate(_goods(scores), "test")
    assert cal.promise_at_threshold() == cal.promise
    lower = cal.with_thresholds(1.5, cal.pixel_threshold, "user")  # half the good scores at or above it
    promise = lower.promise_at_threshold()
    assert promise is not None and promise.bound == pytest.approx((100 + 1 - 50) / 101)
    assert "does not keep the promise" in promise.statement and lower.promise == cal.promise
