"""Calibration: raw-score statistics of held-out good images and the thresholds derived from them.

Kept beside each model as data (``calibration.json``); the model's raw scores are never rescaled.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from statistics import NormalDist
from typing import Any

import numpy as np

from core.portable import check_calibration
from core.portable import verdict as _verdict
from core.types import Prediction

SIGMAS = 3.0  # the policy before false-alarm targets: mean + 3 std (kept to read old calibration files)
# Default share of good parts the default image threshold may flag. Chosen by measurement (benchmarks/RESULTS.md,
# "Default thresholds"): at 1% the default caught about half the magnetic_tile defects (F1 0.75 vs F1-max 0.88);
# at 5% F1 was within 0.05 of F1-max with the observed false-alarm rate within 2x of the promise.
DEFAULT_FALSE_ALARM = 0.05


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

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
        cal = cls(**{k: v for k, v in data.items() if k in known})
        if cal.default_image_threshold is None or cal.default_pixel_threshold is None:
            if cal.chosen_by == "default":
                img, pix = cal.image_threshold, cal.pixel_threshold
            else:
                img = cal.good_score_mean + SIGMAS * cal.good_score_std
                pix = cal.good_map_max_mean + SIGMAS * cal.good_map_max_std
            cal = replace(cal, default_image_threshold=float(img), default_pixel_threshold=float(pix))
            check_calibration(cal.to_dict(), positive)  # the defaults derived from the statistics, too
        return cal

    @property
    def defaults(self) -> tuple[float, float]:
        """The (image, pixel) thresholds chosen when the model was calibrated, whatever is saved now."""
        img = self.image_threshold if self.default_image_threshold is None else self.default_image_threshold
        pix = self.pixel_threshold if self.default_pixel_threshold is None else self.default_pixel_threshold
        return float(img), float(pix)

    def defaults_for(self, false_alarm: float) -> tuple[float, float]:
        """(image, pixel) thresholds that flag about ``false_alarm`` of good parts, from the saved statistics
        of the held-out good images (Gaussian tail fit, see :func:`tail_threshold`)."""
        return (tail_threshold(self.good_score_mean, self.good_score_std, self.num_images, false_alarm),
                tail_threshold(self.good_map_max_mean, self.good_map_max_std, self.num_images, false_alarm))

    def with_thresholds(self, image_threshold: float, pixel_threshold: float, chosen_by: str) -> Calibration:
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


def calibrate(good: list[Prediction], source: str, false_alarm: float = DEFAULT_FALSE_ALARM) -> Calibration:
    """Default thresholds for ``false_alarm`` (share of good parts flagged): a normal tail fit to the good
    images' scores (image threshold) and to the per-image maximum of their maps (pixel threshold: about that
    share of good images shows any outlined pixel)."""
    if not good:
        raise ValueError("expected predictions on good images to calibrate, found none")
    scores = np.array([p.score for p in good], dtype=np.float64)
    map_max = np.array([float(p.anomaly_map.max()) for p in good], dtype=np.float64)
    s_mean, s_std = float(scores.mean()), float(scores.std())
    m_mean, m_std = float(map_max.mean()), float(map_max.std())
    if len(good) > 1:
        image_threshold = tail_threshold(s_mean, s_std, len(good), false_alarm)
        pixel_threshold = tail_threshold(m_mean, m_std, len(good), false_alarm)
    else:
        image_threshold, pixel_threshold = float(scores.max()) * 1.05, float(map_max.max()) * 1.05
    return Calibration(
        image_threshold=image_threshold, pixel_threshold=pixel_threshold,
        good_score_mean=s_mean, good_score_std=s_std, good_score_max=float(scores.max()),
        good_map_max_mean=m_mean, good_map_max_std=m_std, num_images=len(good), source=source,
        default_image_threshold=image_threshold, default_pixel_threshold=pixel_threshold,
        false_alarm_target=false_alarm,
    )


def verdict(score: float, calibration: Calibration) -> str:
    """DEFECT at or above the image threshold, else OK (the rule in core.portable)."""
    return _verdict(score, calibration.image_threshold)
