"""Drift watch: has the line's run of scores moved away from the good scores the model was calibrated on?

Every judged image's raw score is put in units of the calibration's spread, ``z = (score - center) / spread``
(``center``, ``spread``: mean and standard deviation of the calibration's good scores). The rule is a one-sided
CUSUM on the *median* of the last ``window`` values of ``z``::

    m_t = median(z[t - window + 1 .. t])           (defined once ``window`` images are in)
    S_t = max(0, S_{t-1} + m_t - allowance)        (S = 0 before)
    alarm at the first t where S_t > limit

The median makes the rule blind to defective parts as long as they are fewer than half of the window (a defect's
score is far above the good ones; a drifted line moves *all* good parts up); a run of mostly defective parts raises
it too, and the alarm says so. The caller reads a DEFECT verdict's score at most at its threshold
(``core.verdict.drift_status.CAPPED``), so such a run lifts the median only to the threshold: measured on test
streams with 61-72% defects, it kept the injected-shift delays and removed the demo's alarm, but the sets whose
windows hold mostly defects still alarm (a defect majority and a shift look alike to a score). One-sided on purpose: line goods that score *lower* than the calibration's are
common and harmless to the promise (measured, benchmarks/bench_line_promise.py: a downward side alarmed on
1,000 unshifted test goods of every dev set: leave-one-out calibration scores sit above those of new good parts).
The CUSUM adds up a small steady shift that no single window shows. With the defaults (window 25, allowance 0.5,
limit 4) the median of 25 good scores has a spread of about 0.25, so ``m_t - 0.5`` is about two of its spreads below zero and ``S`` stays at 0; a shift of one
calibration spread alarms about ``window / 2 + limit / (1 - allowance)`` = 21 images after it starts. Measured by
``benchmarks/bench_line_promise.py``. Pure functions: the callers keep the history (the results database).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_SPREAD_FRACTION = 1e-6  # of |center|: a calibration whose good scores all agree still gets a usable unit


@dataclass(frozen=True)
class DriftRule:
    """The drift watch's settings: ``window`` images per median, ``allowance`` and ``limit`` in calibration
    spreads (see the module docstring); ``quantile``: the window's statistic (0.5: the median; a lower one is
    blind to more defective parts per window, measured in benchmarks/bench_line_promise.py)."""

    window: int = 25
    allowance: float = 0.5
    limit: float = 4.0
    quantile: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"expected a drift window of 1 image or more, found {self.window!r}")
        if not (np.isfinite(self.allowance) and self.allowance >= 0):
            raise ValueError(f"expected a drift allowance of 0 or more spreads, found {self.allowance!r}")
        if not (np.isfinite(self.limit) and self.limit > 0):
            raise ValueError(f"expected a drift limit above 0 spreads, found {self.limit!r}")
        if not (np.isfinite(self.quantile) and 0.0 < self.quantile < 1.0):
            raise ValueError(f"expected a drift quantile between 0 and 1, found {self.quantile!r}")


@dataclass(frozen=True)
class DriftReport:
    """Where the watch stands after ``n`` scores. ``median_z``: median of the last window in calibration spreads
    (None while fewer than ``window`` images are in); ``cusum``: S after the last score; ``alarm_at``: 0-based index
    of the score that raised the alarm (None: no alarm); ``cusum_trace``: S after each score, ``[n]``."""

    n: int
    median_z: float | None
    cusum: float
    alarm_at: int | None
    cusum_trace: tuple[float, ...]
    rule: DriftRule

    @property
    def alarm(self) -> bool:
        return self.alarm_at is not None

    def describe(self) -> str:
        if self.n < self.rule.window:
            return f"{self.n} of {self.rule.window} images in, no reading yet"
        state = ("no drift" if self.alarm_at is None else
                 f"DRIFT: the line's parts score higher than the good parts at calibration (alarm at image "
                 f"{self.alarm_at + 1}): the line changed (lighting, a new batch, the camera) or most recent parts "
                 "are defective")
        return (f"{state}; median of the last {self.rule.window}: {self.median_z:+.2f} calibration spreads, "
                f"CUSUM {self.cusum:.2f} of {self.rule.limit:g}")


def standardize(scores: Sequence[float], center: float, spread: float) -> np.ndarray:
    """``scores`` ``[n]`` in units of ``spread`` around ``center`` ``[n]``; a zero spread is raised to
    :data:`MIN_SPREAD_FRACTION` of ``|center|`` (or 1e-12)."""
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1 or not np.all(np.isfinite(values)):
        raise ValueError(f"expected a 1-d run of finite scores, found shape {values.shape} "
                         f"with {int(np.sum(~np.isfinite(values)))} non-finite values")
    if not (np.isfinite(center) and np.isfinite(spread) and spread >= 0):
        raise ValueError(f"expected a finite center and a spread of 0 or more, found {center!r} and {spread!r}")
    unit = max(float(spread), MIN_SPREAD_FRACTION * abs(float(center)), 1e-12)
    return (values - float(center)) / unit


def watch(scores: Sequence[float], center: float, spread: float, rule: DriftRule = DriftRule()) -> DriftReport:
    """Run the drift rule over ``scores`` ``[n]`` (oldest first: the raw scores judged since the model version
    went into use or was last recalibrated) against the calibration's good-score ``center`` and ``spread``."""
    z = standardize(scores, center, spread)
    trace: list[float] = []
    s, alarm_at, median = 0.0, None, None
    for t in range(len(z)):
        if t + 1 >= rule.window:
            median = float(np.quantile(z[t + 1 - rule.window: t + 1], rule.quantile))
            s = max(0.0, s + median - rule.allowance)
            if alarm_at is None and s > rule.limit:
                alarm_at = t
        trace.append(s)
    return DriftReport(len(z), median, s, alarm_at, tuple(trace), rule)
