"""Calibration: raw-score statistics of good images the model did not learn from and the thresholds derived from them.

Kept beside each model as data (``calibration.json``, with the raw good scores); the model's raw scores are never
rescaled. PatchCore's good scores are leave-one-image-out scores of every training image, EfficientAD's those of
held-out training images (core/store/lifecycle.py).

The promise and its evidence (:class:`Promise`): with n exchangeable good scores, a new good image's score is
equally likely to fall in each of the n + 1 gaps between them, so a threshold at or above j of the n scores flags a
new good image with probability at most (n + 1 - j) / (n + 1) (and at least (n - j) / (n + 1)). The split-conformal
rank k = ceil((n + 1)(1 - a)) therefore keeps a promise of a (its rate lies in (a - 1/(n+1), a]); when k > n
(n < 1/a - 1) no threshold from n images can state it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from statistics import NormalDist
from typing import Any

import numpy as np

from core.portable import check_calibration, review_band
from core.portable import verdict as _verdict
from core.types import Prediction

SIGMAS = 3.0  # the policy before false-alarm targets: mean + 3 std (kept to read old calibration files)
# Default share of good parts the default image threshold may flag. Chosen by measurement (benchmarks/RESULTS.md,
# "Default thresholds"): at 1% the default caught about half the magnetic_tile defects (F1 0.75 vs F1-max 0.88);
# at 5% F1 was within 0.05 of F1-max with the observed false-alarm rate within 2x of the promise.
DEFAULT_FALSE_ALARM = 0.05
# How default thresholds are placed on the good scores (see threshold_for). Chosen by measurement
# (benchmarks/bench_calibration_loo.py, RESULTS.md "calibration_loo").
RULES: tuple[str, ...] = ("gaussian_tail", "conformal", "max")
DEFAULT_RULE = "max"
# The review band's edges by default: as far below and above the image threshold as a normal fit to the good
# scores puts these false-alarm rates' tails from the promised one's (band_widths). Parts scoring inside go to a
# person (REVIEW). Chosen by measurement (benchmarks/bench_line_promise.py, RESULTS.md "line_promise").
REVIEW_RATES: tuple[float, float] = (0.10, 0.01)


@dataclass(frozen=True)
class Promise:
    """The evidence behind the default image threshold: ``requested`` false-alarm rate, ``n`` good scores,
    the conformal ``rank`` k = ceil((n + 1)(1 - a)) (None when k > n), and the range ``[lower, bound]`` of the
    false-alarm probability of the saved default threshold for a new exchangeable good image (``j`` of the n
    scores at or below it: ``(n - j) / (n + 1)`` to ``(n + 1 - j) / (n + 1)``). ``statement`` says it in words."""

    requested: float
    n: int
    rank: int | None
    bound: float
    lower: float
    statement: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Promise:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Calibration:
    """Thresholds on raw scores. An image is defective when ``score >= image_threshold``; a pixel when
    ``map >= pixel_threshold``. ``source`` says which images the statistics came from."""

    image_threshold: float
    pixel_threshold: float
    good_score_mean: float
    good_score_std: float
    good_score_max: float
    good_map_max_mean: float
    good_map_max_std: float
    num_images: int
    source: str
    chosen_by: str = "default"
    default_image_threshold: float | None = None
    default_pixel_threshold: float | None = None
    familiarity_limit: float | None = None  # unfamiliar-image guard (core.scores.familiarity); None: no guard
    aspect_min: float | None = None  # training images' height / width range (guard)
    aspect_max: float | None = None
    min_side: int | None = None  # px: smaller images get no verdict (None: core.scores.familiarity.MIN_SIDE_FLOOR)
    false_alarm_target: float | None = None  # share of good parts the DEFAULT thresholds may flag; None: old policy
    rule: str | None = None  # how the defaults sit on the good scores (RULES); None: a Gaussian tail (older files)
    promise: Promise | None = None  # the evidence behind the default image threshold; None: older files
    good_scores: tuple[float, ...] | None = None  # raw image scores of the calibration images [n]
    good_map_maxes: tuple[float, ...] | None = None  # per-image maximum of their maps [n]
    # the review band [image_threshold - review_below, image_threshold + review_above): REVIEW inside it (its
    # widths are kept, so the band moves with the threshold); None: two verdicts only
    review_below: float | None = None
    review_above: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def promised(self) -> bool:
        """Whether its images were enough to promise ``false_alarm_target`` (a conformal rank exists among them;
        True for files from before the evidence was kept)."""
        return self.promise is None or self.promise.rank is not None

    def check(self, positive: bool = False) -> Calibration:
        """This calibration, when a verdict can be made from it (see :func:`core.portable.check_calibration`;
        ``positive``: the model's scores are 0 or more, so thresholds must be above 0).

        Raises:
            ValueError: names the field and the value found.
        """
        check_calibration(self.to_dict(), positive)
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any], positive: bool = False) -> Calibration:
        """A calibration read back from ``calibration.json``, checked (:meth:`check`; ``positive`` when the
        model's scores are 0 or more). Files written before the defaults were stored get them back from their
        good-score statistics (the policy that made them).

        Raises:
            ValueError: a missing key, or a value no verdict can be made from (the message names the field).
        """
        check_calibration(data, positive)
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in data.items() if k in known}
        for key in ("good_scores", "good_map_maxes"):
            if values.get(key) is not None:
                raw = values[key]
                if not isinstance(raw, (list, tuple)) or not all(
                        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in raw):
                    raise ValueError(f"expected a list of finite numbers for {key}, found {str(raw)[:80]}")
                values[key] = tuple(float(x) for x in raw)
        if isinstance(values.get("promise"), dict):
            values["promise"] = Promise.from_dict(values["promise"])
        if values.get("rule") is not None and values["rule"] not in RULES:
            raise ValueError(f"expected rule in {RULES}, found {values['rule']!r}")
        cal = cls(**values)
        if cal.default_image_threshold is None or cal.default_pixel_threshold is None:
            if cal.chosen_by == "default":
                img, pix = cal.image_threshold, cal.pixel_threshold
            else:
                img = cal.good_score_mean + SIGMAS * cal.good_score_std
                pix = cal.good_map_max_mean + SIGMAS * cal.good_map_max_std
            cal = replace(cal, default_image_threshold=float(img), default_pixel_threshold=float(pix))
            check_calibration(cal.to_dict(), positive)  # the defaults derived from the statistics, too
        if cal.review_below is None and cal.num_images > 1 and cal.good_score_std > 0:
            # saved before the review band: the default band from the saved statistics, around the saved threshold
            cal = cal.with_review(*cal.default_review(), chosen_by=None)
            check_calibration(cal.to_dict(), positive)
        return cal

    def promise_at_threshold(self) -> Promise | None:
        """The evidence for the image threshold in use now (``promise`` is the default threshold's: a threshold
        saved on the Thresholds page keeps or breaks the promise by its own rank among the good scores); None
        for files saved before raw good scores were kept."""
        if self.good_scores is None or self.false_alarm_target is None:
            return self.promise if self.image_threshold == self.default_image_threshold else None
        return promise_for(self.good_scores, self.image_threshold, self.false_alarm_target)

    @property
    def review(self) -> tuple[float, float] | None:
        """The review band ``(low, high)``, widened to hold the image threshold (None: two verdicts only)."""
        return review_band(self.image_threshold, self.review_below, self.review_above)

    def default_review(self) -> tuple[float, float]:
        """The default review band around the image threshold, as :func:`band_widths` sets it at calibration: from
        the saved good scores, or for a file saved without them from its saved statistics (the same normal fit).
        A file from before false-alarm targets (mean + 3 std) takes the band of the default 5% promise."""
        promise = self.false_alarm_target or DEFAULT_FALSE_ALARM
        if self.good_scores and len(self.good_scores) > 1:
            below, above = band_widths(self.good_scores, promise)
        else:
            below, above = tail_widths(self.good_score_mean, self.good_score_std, self.num_images, promise)
        return self.image_threshold - below, self.image_threshold + above

    def with_review(self, low: float, high: float, chosen_by: str | None = "user") -> Calibration:
        """This calibration with the review band ``[low, high)`` (raw scores); the band must hold the image
        threshold (it is saved as its widths below and above it).

        Raises:
            ValueError: ``low > image_threshold`` or ``high < image_threshold`` (names the three values).
        """
        if not (math.isfinite(low) and math.isfinite(high)) or not low <= self.image_threshold <= high:
            raise ValueError(f"expected a review band around the image threshold (low <= {self.image_threshold:.6g} "
                             f"<= high), found low {low!r} and high {high!r}")
        cal = replace(self, review_below=float(self.image_threshold - low), review_above=float(high - self.image_threshold))
        return cal if chosen_by is None else replace(cal, chosen_by=chosen_by)

    @property
    def defaults(self) -> tuple[float, float]:
        """The (image, pixel) thresholds chosen when the model was calibrated, whatever is saved now."""
        img = self.image_threshold if self.default_image_threshold is None else self.default_image_threshold
        pix = self.pixel_threshold if self.default_pixel_threshold is None else self.default_pixel_threshold
        return float(img), float(pix)

    def defaults_for(self, false_alarm: float) -> tuple[float, float]:
        """(image, pixel) thresholds that flag about ``false_alarm`` of good parts: this calibration's rule on
        its saved good scores (:func:`threshold_for`), or for files saved before those were kept, a Gaussian
        tail fit to the saved statistics (:func:`tail_threshold`)."""
        if self.rule is not None and self.good_scores and self.good_map_maxes:
            return (threshold_for(self.good_scores, false_alarm, self.rule),
                    threshold_for(self.good_map_maxes, false_alarm, self.rule))
        return (tail_threshold(self.good_score_mean, self.good_score_std, self.num_images, false_alarm),
                tail_threshold(self.good_map_max_mean, self.good_map_max_std, self.num_images, false_alarm))

    def with_thresholds(self, image_threshold: float, pixel_threshold: float, chosen_by: str) -> Calibration:
        """New thresholds; the review band keeps its widths, so it moves with the image threshold."""
        return replace(self, image_threshold=float(image_threshold), pixel_threshold=float(pixel_threshold),
                       chosen_by=chosen_by)


def tail_threshold(mean: float, std: float, n: int, false_alarm: float) -> float:
    """Threshold that about ``false_alarm`` of new good images reach: ``mean + z(1 - false_alarm) * s`` of a
    normal fit to ``n`` held-out good values (``std`` is their population std; ``s`` uses n - 1 degrees of
    freedom). A normal fit extrapolates past the largest held-out value, which a plain quantile of ~80
    images cannot do for rates near 1%."""
    if not 0.0 < false_alarm < 1.0:
        raise ValueError(f"expected a false-alarm rate between 0 and 1, found {false_alarm}")
    s = std * math.sqrt(n / (n - 1)) if n > 1 else std
    return float(mean + NormalDist().inv_cdf(1.0 - false_alarm) * s)


def conformal_rank(n: int, false_alarm: float) -> int:
    """k = ceil((n + 1)(1 - a)): the rank (1-based, ascending) of the split-conformal threshold among n good
    scores; larger than n when n < 1/a - 1 (no such threshold)."""
    if not 0.0 < false_alarm < 1.0:
        raise ValueError(f"expected a false-alarm rate between 0 and 1, found {false_alarm}")
    return math.ceil((n + 1) * (1.0 - false_alarm) - 1e-9)


def threshold_for(values: Sequence[float] | np.ndarray, false_alarm: float, rule: str) -> float:
    """Threshold on good ``values`` ``[n]`` for a promise of ``false_alarm``: ``"gaussian_tail"`` (a normal fit,
    :func:`tail_threshold`), ``"conformal"`` (the value at :func:`conformal_rank`; the tail when n is too small
    for it) or ``"max"`` (the larger of the two)."""
    if rule not in RULES:
        raise ValueError(f"expected rule in {RULES}, found {rule!r}")
    v = np.sort(np.asarray(values, dtype=np.float64))
    if v.size == 0:
        raise ValueError("expected good scores to place a threshold on, found none")
    if v.size == 1:
        return float(v[0]) * 1.05
    tail = tail_threshold(float(v.mean()), float(v.std()), int(v.size), false_alarm)
    k = conformal_rank(int(v.size), false_alarm)
    rank = float(v[k - 1]) if k <= v.size else tail
    return {"gaussian_tail": tail, "conformal": rank, "max": max(tail, rank)}[rule]


def band_widths(values: Sequence[float] | np.ndarray, false_alarm: float) -> tuple[float, float]:
    """The default review band's widths (below, above the image threshold) from good ``values`` ``[n]``: the
    distances from a normal fit's ``false_alarm`` tail down to its :data:`REVIEW_RATES` [0] tail and up to its
    [1] tail (:func:`tail_threshold`). A band is where a person looks, not a promise, so no sample decides it:
    the conformal rank for 1% is the largest of 99-198 good scores, an outlier on pcb_00041 that put half the
    line's parts in the band (RESULTS.md "line_promise_reading")."""
    v = np.asarray(values, dtype=np.float64)
    return tail_widths(float(v.mean()), float(v.std()), int(v.size), false_alarm)


def tail_widths(mean: float, std: float, n: int, false_alarm: float) -> tuple[float, float]:
    """:func:`band_widths` from the statistics of ``n`` good scores (population ``std``)."""
    low, mid, high = (tail_threshold(mean, std, n, a) for a in (REVIEW_RATES[0], false_alarm, REVIEW_RATES[1]))
    return max(mid - low, 0.0), max(high - mid, 0.0)


def promise_for(values: Sequence[float] | np.ndarray, threshold: float, false_alarm: float) -> Promise:
    """The evidence that ``threshold`` keeps a promise of ``false_alarm`` on good ``values`` ``[n]`` (see
    :class:`Promise` and the module docstring)."""
    n = len(values)
    k = conformal_rank(n, false_alarm)
    j = int(np.sum(np.asarray(values, dtype=np.float64) <= threshold))
    bound, lower = (n + 1 - j) / (n + 1), (n - j) / (n + 1)
    need = math.ceil(1.0 / false_alarm - 1.0 - 1e-9)
    if k > n:
        statement = (f"too few images for a promise of {false_alarm:.0%}: need at least {need} (1/{false_alarm:.0%} - 1), "
                     f"found n={n}; "
                     f"this threshold flags at most {bound:.1%} of new good parts (at least {lower:.1%})")
    else:
        kept = "keeps" if bound <= false_alarm + 1e-12 else "does not keep"
        statement = (f"with n={n} exchangeable good images ({j} at or below the threshold) a new good part is "
                     f"flagged with probability {lower:.1%} to {bound:.1%}: {kept} the promise of {false_alarm:.0%}")
    return Promise(float(false_alarm), n, k if k <= n else None, float(bound), float(lower), statement)


def calibrate(good: list[Prediction], source: str, false_alarm: float = DEFAULT_FALSE_ALARM,
              rule: str = DEFAULT_RULE) -> Calibration:
    """Default thresholds for ``false_alarm`` (share of good parts flagged) by ``rule`` (:func:`threshold_for`)
    on the good images' scores (image threshold) and on the per-image maximum of their maps (pixel threshold:
    about that share of good images shows any outlined pixel); the raw values and the :class:`Promise` are kept."""
    if not good:
        raise ValueError("expected predictions on good images to calibrate, found none")
    scores = np.array([p.score for p in good], dtype=np.float64)
    map_max = np.array([float(p.anomaly_map.max()) for p in good], dtype=np.float64)
    s_mean, s_std = float(scores.mean()), float(scores.std())
    m_mean, m_std = float(map_max.mean()), float(map_max.std())
    image_threshold = threshold_for(scores, false_alarm, rule)
    pixel_threshold = threshold_for(map_max, false_alarm, rule)
    below, above = band_widths(scores, false_alarm) if len(good) > 1 else (None, None)
    return Calibration(
        image_threshold=image_threshold, pixel_threshold=pixel_threshold,
        good_score_mean=s_mean, good_score_std=s_std, good_score_max=float(scores.max()),
        good_map_max_mean=m_mean, good_map_max_std=m_std, num_images=len(good), source=source,
        default_image_threshold=image_threshold, default_pixel_threshold=pixel_threshold,
        false_alarm_target=false_alarm, rule=rule, promise=promise_for(scores.tolist(), image_threshold, false_alarm),
        good_scores=tuple(float(x) for x in scores), good_map_maxes=tuple(float(x) for x in map_max),
        review_below=below, review_above=above,
    )


def verdict(score: float, calibration: Calibration) -> str:
    """OK / REVIEW / DEFECT from the image threshold and the review band (the rule in core.portable)."""
    return _verdict(score, calibration.image_threshold, calibration.review)
