"""Default thresholds for a promised false-alarm rate: hand-computed tail fits, old files, bad values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.scores.calibration import (
    DEFAULT_FALSE_ALARM,
    SIGMAS,
    Calibration,
    calibrate,
    tail_threshold,
)
from core.types import Prediction


@pytest.mark.parametrize(
    ("mean", "std", "n", "rate", "expected"),
    [
        (10.0, 2.0, 5, 0.05, 10.0 + 1.6448536 * 2.0 * math.sqrt(5 / 4)),   # z(0.95) = 1.6449, s with n-1 dof
        (10.0, 2.0, 5, 0.01, 10.0 + 2.3263479 * 2.0 * math.sqrt(5 / 4)),   # z(0.99) = 2.3263
        (0.0, 1.0, 101, 0.5, 0.0),                                          # the median of a normal fit
        (3.0, 0.0, 10, 0.05, 3.0),                                          # no spread: the mean itself
    ],
)
def test_tail_threshold_hand_computed(mean: float, std: float, n: int, rate: float, expected: float) -> None:
    assert tail_threshold(mean, std, n, rate) == pytest.approx(expected, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.1, 2.0])
def test_tail_threshold_refuses_impossible_rates(rate: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        tail_threshold(0.0, 1.0, 10, rate)


def _preds(scores: list[float]) -> list[Prediction]:
    return [Prediction(s, np.full((4, 4), s / 2), 1.0) for s in scores]


def test_calibrate_promises_the_default_rate_and_keeps_it() -> None:
    scores = [1.0, 2.0, 3.0, 4.0, 5.0]  # mean 3, population std sqrt(2), sample std sqrt(2.5)
    cal = calibrate(_preds(scores), "test")
    assert cal.false_alarm_target == DEFAULT_FALSE_ALARM
    assert cal.image_threshold == pytest.approx(3.0 + 1.6448536 * math.sqrt(2.5), rel=1e-6)
    assert cal.pixel_threshold == pytest.approx(1.5 + 1.6448536 * math.sqrt(2.5) / 2, rel=1e-6)
    assert cal.defaults == (cal.image_threshold, cal.pixel_threshold)
    low, _ = cal.defaults_for(0.01)
    assert low > cal.image_threshold  # a stricter promise needs a higher threshold
    back = Calibration.from_dict(cal.to_dict())
    assert back == cal


def test_old_file_without_defaults_gets_them_from_its_statistics() -> None:
    old = {"image_threshold": 9.0, "pixel_threshold": 4.0, "good_score_mean": 2.0, "good_score_std": 1.0,
           "good_score_max": 4.0, "good_map_max_mean": 1.0, "good_map_max_std": 0.5, "num_images": 20,
           "source": "old", "chosen_by": "user"}
    cal = Calibration.from_dict(old)
    assert cal.defaults == pytest.approx((2.0 + SIGMAS * 1.0, 1.0 + SIGMAS * 0.5))  # the policy that made it
    assert cal.image_threshold == 9.0 and cal.false_alarm_target is None


@pytest.mark.parametrize("bad", [float("nan"), "12", None])
def test_non_numeric_threshold_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="finite number for image_threshold"):
        Calibration.from_dict({"image_threshold": bad, "pixel_threshold": 1.0})


GOOD = {"image_threshold": 9.0, "pixel_threshold": 4.0, "good_score_mean": 2.0, "good_score_std": 1.0,
        "good_score_max": 4.0, "good_map_max_mean": 1.0, "good_map_max_std": 0.5, "num_images": 20,
        "source": "test", "default_image_threshold": 9.0, "default_pixel_threshold": 4.0,
        "familiarity_limit": 1.5, "aspect_min": 0.5, "aspect_max": 1.0, "min_side": 16}


@pytest.mark.parametrize(
    ("field", "value", "positive", "message"),
    [
        ("image_threshold", 0.0, True, "above 0 for image_threshold"),          # was: passed, then every request 500
        ("image_threshold", -1.0, True, "above 0 for image_threshold"),
        ("pixel_threshold", 0, True, "above 0 for pixel_threshold"),
        ("default_image_threshold", 0.0, True, "above 0 for default_image_threshold"),
        ("image_threshold", float("inf"), False, "finite number for image_threshold"),
        ("pixel_threshold", float("-inf"), False, "finite number for pixel_threshold"),
        ("pixel_threshold", float("nan"), False, "finite number for pixel_threshold"),
        ("image_threshold", True, False, "finite number for image_threshold"),
        ("familiarity_limit", float("nan"), False, "finite number for familiarity_limit"),
        ("good_score_std", float("inf"), False, "finite number for good_score_std"),
        ("aspect_min", 0.0, False, "positive finite number for aspect_min"),
        ("aspect_max", float("inf"), False, "positive finite number for aspect_max"),
        ("aspect_min", 2.0, False, "aspect_min <= aspect_max"),
        ("min_side", 0, False, "at least 1 for min_side"),
        ("min_side", 2.5, False, "at least 1 for min_side"),
    ],
)
def test_calibration_values_no_verdict_can_use_are_refused(field: str, value: object, positive: bool,
                                                           message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Calibration.from_dict({**GOOD, field: value}, positive=positive)


@pytest.mark.parametrize(("field", "value"), [("image_threshold", 0.0), ("image_threshold", -0.3),
                                              ("pixel_threshold", -1.0), ("familiarity_limit", None),
                                              ("aspect_min", None), ("min_side", None)])
def test_signed_scores_and_absent_guards_are_accepted(field: str, value: object) -> None:
    """A kind whose scores may be negative (EfficientAD's normalised maps) may have a threshold at or below 0;
    guards a model predates are simply absent."""
    cal = Calibration.from_dict({**GOOD, field: value}, positive=False)
    assert getattr(cal, field) == value


def test_patchcore_calibration_of_zero_is_refused_at_load_naming_the_file(tmp_path) -> None:
    import json

    from core.store import lifecycle as det
    from core.store.model_store import ModelRef, ModelStoreError

    for kind in ("patchcore", "efficientad"):
        folder = tmp_path / "demo" / kind / "v1"
        folder.mkdir(parents=True)
        (folder / "calibration.json").write_text(json.dumps({**GOOD, "image_threshold": 0.0}))
    with pytest.raises(ModelStoreError, match="calibration.json: expected a number above 0 for image_threshold") as info:
        det.read_calibration(ModelRef(str(tmp_path), "demo", "patchcore", 1))
    assert str(tmp_path / "demo" / "patchcore" / "v1") in str(info.value)
    assert det.read_calibration(ModelRef(str(tmp_path), "demo", "efficientad", 1)).image_threshold == 0.0


def test_saving_a_threshold_of_zero_is_refused(tmp_path) -> None:
    from types import SimpleNamespace

    from core.store import lifecycle as det
    from core.store.model_store import ModelRef

    model = SimpleNamespace(ref=ModelRef(str(tmp_path), "demo", "patchcore", 1), kind="patchcore")
    cal = Calibration.from_dict(GOOD).with_thresholds(0.0, 4.0, "user")
    with pytest.raises(ValueError, match="above 0 for image_threshold"):
        det.save_calibration(model, cal)  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())  # nothing written


# ------------------------------------------------------------------ the promise and its evidence (conformal)
@pytest.mark.parametrize(("n", "rate", "k"), [(19, 0.05, 19), (20, 0.05, 20), (100, 0.05, 96), (18, 0.05, 19),
                                              (99, 0.01, 99), (98, 0.01, 99), (9, 0.1, 9)])
def test_conformal_rank_hand_computed(n: int, rate: float, k: int) -> None:
    from core.scores.calibration import conformal_rank

    assert conformal_rank(n, rate) == k  # ceil((n + 1)(1 - a)), e.g. 101 * 0.95 = 95.95 -> 96


def test_conformal_threshold_and_its_bound_on_hand_made_scores() -> None:
    from core.scores.calibration import promise_for, threshold_for

    scores = [float(x) for x in range(1, 41)]  # n = 40: k = ceil(41 * 0.95) = 39 -> the 39th smallest, 39.0
    thr = threshold_for(scores, 0.05, "conformal")
    assert thr == 39.0
    p = promise_for(scores, thr, 0.05)
    assert (p.n, p.rank) == (40, 39)
    assert p.bound == pytest.approx(2 / 41) and p.lower == pytest.approx(1 / 41)  # in (a - 1/(n+1), a]
    assert p.bound <= 0.05 and "keeps the promise of 5%" in p.statement
    tail = threshold_for(scores, 0.05, "gaussian_tail")
    assert threshold_for(scores, 0.05, "max") == max(tail, 39.0)


def test_too_few_images_for_the_promise_is_said() -> None:
    from core.scores.calibration import promise_for, threshold_for

    scores = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]  # n = 8 < 1/0.05 - 1 = 19
    thr = threshold_for(scores, 0.05, "conformal")
    assert thr == threshold_for(scores, 0.05, "gaussian_tail")  # no rank to take: the tail fit
    p = promise_for(scores, thr, 0.05)
    assert p.rank is None and "too few images for a promise of 5%: need at least 19 (1/5% - 1), found n=" in p.statement
    assert p.bound == pytest.approx(1 / 9)  # above the largest of 8 scores: at most 1/(n+1)


def test_conformal_threshold_keeps_its_promise_on_exchangeable_scores() -> None:
    """Many draws of n = 60 good scores and new good scores from the same law: the conformal rank's observed
    false-alarm rate stays within its bound (a - 1/(n+1), a]; the Gaussian tail on a skewed law does not."""
    from core.scores.calibration import threshold_for

    rng = np.random.default_rng(0)
    observed = {"conformal": [], "gaussian_tail": []}
    for _ in range(400):
        cal, new = rng.lognormal(0, 0.8, 60), rng.lognormal(0, 0.8, 2000)
        for rule, seen in observed.items():
            seen.append(float(np.mean(new >= threshold_for(cal, 0.05, rule))))
    assert 0.05 - 1 / 61 - 0.005 < np.mean(observed["conformal"]) <= 0.05 + 0.005
    assert np.mean(observed["gaussian_tail"]) < 0.05 - 0.01 or np.mean(observed["gaussian_tail"]) > 0.05 + 0.005


def test_calibration_keeps_raw_scores_rule_and_promise_and_reads_back() -> None:
    import json

    scores = [float(x) for x in np.linspace(1.0, 3.0, 40)]
    cal = calibrate(_preds(scores), "test", rule="conformal")
    assert cal.good_scores == tuple(scores) and cal.rule == "conformal"
    assert cal.image_threshold == pytest.approx(sorted(scores)[38])
    assert cal.promise is not None and cal.promise.n == 40 and cal.promise.requested == DEFAULT_FALSE_ALARM
    back = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))  # as calibration.json stores it
    assert back == cal
    assert back.defaults_for(0.1)[0] == pytest.approx(sorted(scores)[math.ceil(41 * 0.9) - 1])  # same rule, new rate


def test_old_calibration_files_without_raw_scores_keep_the_tail_rule() -> None:
    old = {**GOOD, "false_alarm_target": 0.05}
    cal = Calibration.from_dict(old)
    assert cal.rule is None and cal.promise is None and cal.good_scores is None
    assert cal.defaults_for(0.05)[0] == pytest.approx(tail_threshold(2.0, 1.0, 20, 0.05))


@pytest.mark.parametrize(("field", "value", "message"), [("good_scores", [1.0, "x"], "list of finite numbers"),
                                                         ("good_scores", [float("nan")], "list of finite numbers"),
                                                         ("rule", "median", "expected rule in")])
def test_bad_raw_scores_or_rule_are_refused(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Calibration.from_dict({**GOOD, field: value})
