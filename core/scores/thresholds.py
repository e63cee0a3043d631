"""Operating points: what a pair of (image, pixel) thresholds means on evaluation data, and what changes
between two pairs. Pure functions of raw scores and the pixel histogram (no UI)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.scores import metrics


@dataclass(frozen=True)
class OperatingPoint:
    """Rates at one pair of thresholds. Pixel rates are NaN without a pixel histogram (no masks)."""

    image_threshold: float
    pixel_threshold: float
    image_fpr: float
    image_recall: float
    image_f1: float
    pixel_fpr: float
    pixel_recall: float


def pixel_rates(hist: metrics.PixelHistogram | None, threshold: float) -> tuple[float, float]:
    """(pixel FPR, pixel recall) of ``map >= threshold``, at the nearest bin edge at or below it."""
    if hist is None:
        return float("nan"), float("nan")
    c = hist.curve()  # thresholds decreasing
    j = int(np.searchsorted(-c.thresholds, -threshold, side="left"))
    j = min(j, len(c.thresholds) - 1)
    return float(c.fpr[j]), float(c.tpr[j])


def operating_point(labels: np.ndarray, scores: np.ndarray, hist: metrics.PixelHistogram | None,
                    image_threshold: float, pixel_threshold: float) -> OperatingPoint:
    """Rates on evaluation images ``labels``/``scores`` ``[N]`` and pixels ``hist`` at the two thresholds."""
    r = metrics.rates(metrics.confusion(labels, scores, image_threshold))
    pfpr, prec = pixel_rates(hist, pixel_threshold)
    return OperatingPoint(float(image_threshold), float(pixel_threshold), r["fpr"], r["recall"], r["f1"], pfpr, prec)


def verdict_flips(scores: np.ndarray, old: float, new: float) -> int:
    """How many of ``scores`` ``[N]`` get another verdict at threshold ``new`` than at ``old``."""
    s = np.asarray(scores, dtype=np.float64)
    return int(((s >= old) != (s >= new)).sum())


@dataclass(frozen=True)
class BandCounts:
    """What a review band does on labelled images: ``parts`` inside it, ``errors`` the plain threshold makes
    (good parts at or above it, defective ones below it) and ``errors_caught``: those of them inside the band."""

    parts: int
    errors: int
    errors_caught: int


def band_counts(labels: np.ndarray, scores: np.ndarray, threshold: float, band: tuple[float, float]) -> BandCounts:
    """:class:`BandCounts` of ``scores`` ``[N]`` with ``labels`` ``[N]`` (1 defective) for the band
    ``[low, high)`` around ``threshold``."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    inside = (s >= band[0]) & (s < band[1])
    errors = (s >= threshold) != y
    return BandCounts(int(inside.sum()), int(errors.sum()), int((errors & inside).sum()))


def pixel_threshold_at_fpr(hist: metrics.PixelHistogram, fpr: float) -> float:
    """Lowest bin-edge threshold whose pixel FPR is at most ``fpr``."""
    c = hist.curve()
    ok = np.flatnonzero(c.fpr <= fpr)
    return float(c.thresholds[ok[-1]])


def pixel_threshold_at_recall(hist: metrics.PixelHistogram, recall: float) -> float:
    """Highest bin-edge threshold whose pixel recall is at least ``recall`` (the lowest edge if none is)."""
    c = hist.curve()
    ok = np.flatnonzero(c.tpr >= recall)
    return float(c.thresholds[ok[0]] if ok.size else c.thresholds[-1])


POSITIVE_FLOOR = 1e-6  # share of the range's top: the lowest threshold offered where scores are distances


def slider_range(points: list[float], positive: bool, pad_share: float = 0.0) -> tuple[float, float]:
    """The (low, high) a threshold may be set to: the span of ``points`` (scores, saved and default thresholds)
    widened by ``pad_share`` of it on each side. Where the kind's scores are distances (``positive``), a threshold
    of 0 or below would flag everything and is refused by the calibration check, so ``low`` stays above 0.

    >>> slider_range([0.0, 10.0], positive=True, pad_share=0.05)
    (1.05e-05, 10.5)
    >>> slider_range([-1.0, 1.0], positive=False, pad_share=0.5)
    (-2.0, 2.0)
    """
    finite = [p for p in points if np.isfinite(p)]
    if not finite:
        raise ValueError(f"expected at least one finite score or threshold, found {points!r}")
    lo, hi = min(finite), max(finite)
    pad = pad_share * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad
    if positive:
        floor = POSITIVE_FLOOR * max(hi, 1.0)
        lo, hi = max(lo, floor), max(hi, 2 * floor)
    return lo, hi
