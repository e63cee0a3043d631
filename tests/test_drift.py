"""The drift watch's rule (core.scores.drift) on hand-computed runs."""

from __future__ import annotations

import numpy as np
import pytest

from core.scores.drift import DriftRule, standardize, watch

RULE = DriftRule(window=3, allowance=0.5, limit=1.0)


@pytest.mark.parametrize(("z", "rule", "trace", "alarm_at"), [
    # every part shifted by 2 spreads: the first full window's median 2 -> S = 1.5 > 1
    ([2, 2, 2, 2], RULE, [0, 0, 1.5, 3.0], 2),
    # most of a window defective: its median is a defect's score -> alarm (a burst of defects is worth a look)
    ([0, 5, 5, 0], RULE, [0, 0, 4.5, 9.0], 2),
    # single defects among good parts: every window's median is 0 -> S stays 0
    ([0, 9, 0, 0, 9, 0], RULE, [0, 0, 0, 0, 0, 0], None),
    # a steady small shift no single window shows (0.8 < limit) adds up: 0.3 per image
    ([0.8] * 5, DriftRule(window=1, allowance=0.5, limit=1.0), [0.3, 0.6, 0.9, 1.2, 1.5], 3),
    # S falls back to 0 when the line returns; the alarm stays where it was first raised
    ([3, 3, 3, -5, -5, -5], RULE, [0, 0, 2.5, 5.0, 0.0, 0.0], 2),
    # one-sided: parts scoring lower than at calibration raise nothing
    ([-2, -2, -2, -2], RULE, [0, 0, 0, 0], None),
])
def test_rule_on_hand_computed_runs(z, rule, trace, alarm_at):
    report = watch(z, center=0.0, spread=1.0, rule=rule)
    assert np.allclose(report.cusum_trace, trace, atol=1e-12)
    assert report.alarm_at == alarm_at
    assert report.alarm is (alarm_at is not None)
    assert report.n == len(z)


def test_the_alarm_names_both_causes():
    assert "or most recent parts are defective" in watch([2, 2, 2], 0.0, 1.0, RULE).describe()


def test_standardize_and_zero_spread():
    assert np.allclose(standardize([10, 14, 6], center=10.0, spread=2.0), [0.0, 2.0, -2.0])
    # all good scores equal at calibration: the unit is 1e-6 of the center, not a division by zero
    assert np.allclose(standardize([10.00001], center=10.0, spread=0.0), [1.0])


def test_no_reading_before_a_full_window():
    report = watch([5.0, 5.0], center=0.0, spread=1.0, rule=RULE)
    assert report.median_z is None and report.cusum == 0.0 and not report.alarm
    assert report.describe() == "2 of 3 images in, no reading yet"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"window": 0}, "window of 1 image or more"),
    ({"allowance": -1.0}, "allowance of 0 or more"),
    ({"limit": 0.0}, "limit above 0"),
    ({"quantile": 1.0}, "quantile between 0 and 1"),
])
def test_rule_refuses_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DriftRule(**kwargs)


def test_refuses_non_finite_scores():
    with pytest.raises(ValueError, match="1 non-finite"):
        watch([1.0, float("nan")], 0.0, 1.0)


def test_defaults_quiet_on_good_parts_and_quick_on_a_shift():
    """The defaults on normal good scores: 1,000 unshifted raise nothing (5 seeds); a shift of one spread with 10%
    defects mixed in alarms within 50 images (the issue's targets, here on synthetic scores)."""
    for seed in range(5):
        rng = np.random.default_rng(seed)
        assert not watch(rng.normal(0, 1, 1000), 0.0, 1.0).alarm
        shifted = rng.normal(1.0, 1, 60)
        shifted[rng.random(60) < 0.1] = 8.0
        report = watch(np.concatenate([rng.normal(0, 1, 100), shifted]), 0.0, 1.0)
        assert report.alarm_at is not None and 100 <= report.alarm_at < 150, report.alarm_at


def test_a_lower_quantile_reads_the_window_lower():
    """quantile 0.25 of a window of 5 (linear, as numpy): [0, 0, 4, 4, 4] -> 0, so S stays 0 where the median
    (4) would alarm; [0, 4, 4, 4, 4] -> 4 - 0.5 = 3.5."""
    rule = DriftRule(window=5, allowance=0.5, limit=1.0, quantile=0.25)
    assert watch([0, 0, 4, 4, 4], 0.0, 1.0, rule).cusum == 0.0
    assert watch([0, 0, 4, 4, 4], 0.0, 1.0, DriftRule(window=5, allowance=0.5, limit=1.0)).alarm
    assert watch([0, 4, 4, 4, 4], 0.0, 1.0, rule).cusum_trace[-1] == 3.5
