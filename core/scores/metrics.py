"""Anomaly-detection metrics in plain NumPy: AUROC, ROC/PR curves, F1-max, AUPRO, threshold helpers.

Conventions: ``labels`` are 0 (good) / 1 (defect); a higher score means more anomalous; a sample is
predicted defective when ``score >= threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Curve:
    """A threshold sweep. All arrays have the same length; thresholds are decreasing."""

    thresholds: np.ndarray
    tpr: np.ndarray
    fpr: np.ndarray
    precision: np.ndarray

    @property
    def recall(self) -> np.ndarray:
        return self.tpr

    @property
    def f1(self) -> np.ndarray:
        p, r = self.precision, self.tpr
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
        return f1


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"expected labels and scores of one length, found {labels.shape} and {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("expected finite scores, found NaN or inf")
    return labels.astype(bool), scores


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half). NaN if only one class is present."""
    y, s = _check(labels, scores)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # average ranks over ties
    boundaries = np.flatnonzero(np.diff(sorted_s)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(s)]))
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def curve(labels: np.ndarray, scores: np.ndarray) -> Curve:
    """ROC and precision-recall at every distinct score (plus a leading point above the maximum)."""
    y, s = _check(labels, scores)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s_sorted) - 1]
    tp = np.cumsum(y_sorted)[last_of_tie].astype(np.float64)
    fp = (last_of_tie + 1 - tp).astype(np.float64)
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    thresholds = s_sorted[last_of_tie]
    tpr, fpr = tp / n_pos, fp / n_neg
    precision = tp / (tp + fp)
    above = np.nextafter(thresholds[0], np.inf) if len(thresholds) else 0.0
    return Curve(np.r_[above, thresholds], np.r_[0.0, tpr], np.r_[0.0, fpr], np.r_[1.0, precision])


def f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Best F1 over all thresholds and the threshold that reaches it."""
    c = curve(labels, scores)
    f1 = c.f1
    best = int(np.argmax(f1))
    return float(f1[best]), float(c.thresholds[best])


def confusion(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, int]:
    """Counts of true/false positives/negatives at ``threshold`` (defective when score >= threshold)."""
    y, s = _check(labels, scores)
    pred = s >= threshold
    return {"tp": int((pred & y).sum()), "fp": int((pred & ~y).sum()),
            "tn": int((~pred & ~y).sum()), "fn": int((~pred & y).sum())}


def rates(counts: dict[str, int]) -> dict[str, float]:
    """Precision, recall (TPR), FPR and F1 from confusion counts (0 where undefined)."""
    tp, fp, tn, fn = counts["tp"], counts["fp"], counts["tn"], counts["fn"]
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    fpr = fp / (fp + tn) if fp + tn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "fpr": fpr, "f1": f1}


def crossfit_f1(labels: np.ndarray, scores: np.ndarray, folds: int = 2, seed: int = 0) -> tuple[float, float]:
    """Honest F1: the F1-optimal threshold fitted on the other folds, F1 counted on the held-out fold.

    The fitted threshold sits mid-way between the F1-optimal score and the next lower score of the fit folds.

    Returns (pooled F1 over all held-out predictions, mean of the fitted thresholds).
    """
    y, s = _check(labels, scores)
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(y), dtype=int)
    for cls in (False, True):  # stratified
        idx = np.flatnonzero(y == cls)
        fold_of[idx] = rng.permutation(len(idx)) % folds
    totals = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    thresholds = []
    for k in range(folds):
        fit, held = fold_of != k, fold_of == k
        if y[fit].all() or (~y[fit]).all() or not held.any():
            continue
        _, thr = f1_max(y[fit], s[fit])
        below = s[fit][s[fit] < thr]
        if below.size:  # place the cut in the middle of the gap below the fitted F1-optimal score
            thr = 0.5 * (thr + float(below.max()))
        thresholds.append(thr)
        for key, value in confusion(y[held], s[held], thr).items():
            totals[key] += value
    if not thresholds:
        return float("nan"), float("nan")
    return rates(totals)["f1"], float(np.mean(thresholds))


def threshold_at_fpr(good_scores: np.ndarray, fpr: float) -> float:
    """Smallest threshold whose false-positive rate on ``good_scores`` is at most ``fpr``."""
    s = np.sort(np.asarray(good_scores, dtype=np.float64).ravel())
    if s.size == 0:
        raise ValueError("expected good scores to set a threshold, found none")
    allowed = int(np.floor(fpr * s.size))  # this many goods may be flagged
    if allowed <= 0:
        return float(np.nextafter(s[-1], np.inf))
    return float(np.nextafter(s[s.size - allowed - 1], np.inf)) if allowed < s.size else float(s[0])


def threshold_at_recall(labels: np.ndarray, scores: np.ndarray, recall: float) -> float:
    """Largest threshold that still catches at least ``recall`` of the defective samples."""
    y, s = _check(labels, scores)
    pos = np.sort(s[y])[::-1]
    if pos.size == 0:
        raise ValueError("expected defective samples to set a recall target, found none")
    needed = min(pos.size, max(1, int(np.ceil(recall * pos.size))))
    return float(pos[needed - 1])


def aupro(masks: list[np.ndarray], maps: list[np.ndarray], fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, normalised to [0, 1].

    Follows the MVTec AD reference: every connected defect region weighs equally; the FPR is over all
    defect-free pixels. ``masks`` are bool ``[H, W]``; ``maps`` float ``[H, W]`` of the same shapes.
    """
    if len(masks) != len(maps):
        raise ValueError(f"expected one map per mask, found {len(maps)} maps and {len(masks)} masks")
    structure = np.ones((3, 3), dtype=int)
    labelled = []
    n_regions = 0
    n_ok = 0
    for mask, amap in zip(masks, maps, strict=True):
        if mask.shape != amap.shape:
            raise ValueError(f"expected map shape {mask.shape}, found {amap.shape}")
        lab, n = ndimage.label(mask, structure=structure)
        labelled.append((lab, n))
        n_regions += n
        n_ok += int((~mask).sum())
    if n_regions == 0 or n_ok == 0:
        return float("nan")
    fp_change = []
    pro_change = []
    for (lab, n), mask in zip(labelled, masks, strict=True):
        fp = np.where(mask, 0.0, 1.0 / n_ok).ravel()
        pro = np.zeros(mask.size, dtype=np.float64)
        if n:
            sizes = np.bincount(lab.ravel(), minlength=n + 1).astype(np.float64)
            weights = np.zeros(n + 1)
            weights[1:] = 1.0 / (n_regions * sizes[1:])
            pro = weights[lab.ravel()]
        fp_change.append(fp)
        pro_change.append(pro)
    scores = np.concatenate([m.ravel().astype(np.float64) for m in maps])
    order = np.argsort(-scores, kind="mergesort")
    scores = scores[order]
    fprs = np.cumsum(np.concatenate(fp_change)[order])
    pros = np.cumsum(np.concatenate(pro_change)[order])
    keep = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    return _pro_area(np.r_[0.0, np.clip(fprs[keep], 0.0, 1.0)], np.r_[0.0, np.clip(pros[keep], 0.0, 1.0)], fpr_limit)


def _pro_area(fprs: np.ndarray, pros: np.ndarray, fpr_limit: float) -> float:
    """Normalised area under the PRO curve (points ``[K]``, FPR increasing from 0) up to ``fpr_limit``."""
    cut = np.searchsorted(fprs, fpr_limit, side="right")
    x, yv = fprs[:cut], pros[:cut]
    if cut < len(fprs) and x[-1] < fpr_limit:
        x0, x1, y0, y1 = fprs[cut - 1], fprs[cut], pros[cut - 1], pros[cut]
        y_at = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0) if x1 > x0 else y1
        x, yv = np.r_[x, fpr_limit], np.r_[yv, y_at]
    return float(np.trapezoid(yv, x) / fpr_limit)


@dataclass(frozen=True)
class PixelHistogram:
    """Pixel scores of good and defect pixels binned on shared ``edges`` (``[B+1]``); counts ``[B]``.

    Pixel-level curves at any threshold come from these counts instantly, without keeping every map.
    """

    edges: np.ndarray
    good: np.ndarray
    defect: np.ndarray

    def curve(self) -> Curve:
        """Threshold sweep at the bin edges (lower edge of each bin, high to low)."""
        tp = np.cumsum(self.defect[::-1]).astype(np.float64)
        fp = np.cumsum(self.good[::-1]).astype(np.float64)
        n_pos, n_neg = max(tp[-1], 1.0), max(fp[-1], 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(tp + fp > 0, tp / (tp + fp), 1.0)
        thresholds = self.edges[:-1][::-1]
        return Curve(np.r_[self.edges[-1], thresholds], np.r_[0.0, tp / n_pos], np.r_[0.0, fp / n_neg],
                     np.r_[1.0, precision])

    def auroc(self) -> float:
        c = self.curve()
        return float(np.trapezoid(c.tpr, c.fpr))


BINS = 8192


def binning_edges(maps: list[np.ndarray], bins: int = BINS, sample: int = 1_000_000) -> np.ndarray:
    """Shared, strictly increasing bin edges ``[<= bins + 1]`` for the pixel values of ``maps``.

    Half the edges are quantiles of a fixed subsample of the values (fine where most pixels lie), half are
    evenly spaced between the minimum and maximum (fine in the sparse high tail where defects lie).
    """
    if not maps:
        raise ValueError("expected at least one anomaly map to bin, found none")
    lo = min(float(m.min()) for m in maps)
    hi = max(float(m.max()) for m in maps)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("expected finite map values, found NaN or inf")
    total = sum(m.size for m in maps)
    step = max(1, total // sample)
    values = np.concatenate([m.ravel()[::step] for m in maps]).astype(np.float64)
    half = max(2, bins // 2)
    edges = np.unique(np.r_[np.quantile(values, np.linspace(0.0, 1.0, half + 1)), np.linspace(lo, hi, half + 1)])
    if edges.size < 2:
        edges = np.array([lo, lo + max(abs(lo), 1.0) * 1e-6])
    edges[0], edges[-1] = min(edges[0], lo), max(edges[-1], hi)
    return edges


@dataclass(frozen=True)
class BinnedPixels:
    """Pixel statistics of some images on shared ``edges`` (``[B+1]``): counts of defect-free (``good``)
    and defect pixels per bin ``[B]``, the per-region-overlap mass per bin (``pro``: each defect pixel adds
    1 / the size of its connected region) and the number of regions. Sums over images add up (``+``), so
    overall and per-defect metrics come from one pass over the maps; nothing keeps every pixel.
    """

    edges: np.ndarray
    good: np.ndarray
    defect: np.ndarray
    pro: np.ndarray
    regions: int

    def __add__(self, other: BinnedPixels) -> BinnedPixels:
        if self.edges is not other.edges and not np.array_equal(self.edges, other.edges):
            raise ValueError("expected pixel statistics on the same bin edges, found different edges")
        return BinnedPixels(self.edges, self.good + other.good, self.defect + other.defect, self.pro + other.pro,
                            self.regions + other.regions)

    def _descending(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cumulative (good, defect, pro) from the highest bin down, with a leading 0: ``[B+1]`` each."""
        return (np.r_[0.0, np.cumsum(self.good[::-1], dtype=np.float64)],
                np.r_[0.0, np.cumsum(self.defect[::-1], dtype=np.float64)],
                np.r_[0.0, np.cumsum(self.pro[::-1], dtype=np.float64)])

    def auroc(self) -> float:
        """Pixel AUROC; pixels within one bin count as ties (NaN without both classes)."""
        fp, tp, _ = self._descending()
        if fp[-1] == 0 or tp[-1] == 0:
            return float("nan")
        return float(np.trapezoid(tp / tp[-1], fp / fp[-1]))

    def aupro(self, fpr_limit: float = 0.3) -> float:
        """AUPRO up to ``fpr_limit`` as :func:`aupro`, with thresholds at the bin edges (NaN without regions)."""
        fp, _, pro = self._descending()
        if self.regions == 0 or fp[-1] == 0:
            return float("nan")
        return _pro_area(np.clip(fp / fp[-1], 0.0, 1.0), np.clip(pro / self.regions, 0.0, 1.0), fpr_limit)

    def histogram(self) -> PixelHistogram:
        return PixelHistogram(self.edges, self.good.astype(np.int64), self.defect.astype(np.int64))


def empty_binned(edges: np.ndarray) -> BinnedPixels:
    bins = len(edges) - 1
    return BinnedPixels(edges, np.zeros(bins, np.int64), np.zeros(bins, np.int64), np.zeros(bins), 0)


def bin_image(mask: np.ndarray, amap: np.ndarray, edges: np.ndarray) -> BinnedPixels:
    """One image's :class:`BinnedPixels`: ``mask`` bool ``[H, W]`` (True = defect), ``amap`` float ``[H, W]``."""
    if mask.shape != amap.shape:
        raise ValueError(f"expected map shape {mask.shape}, found {amap.shape}")
    bins = len(edges) - 1
    idx = np.clip(np.searchsorted(edges, amap.ravel(), side="right") - 1, 0, bins - 1)
    flat = mask.ravel()
    good = np.bincount(idx[~flat], minlength=bins)
    defect = np.bincount(idx[flat], minlength=bins)
    pro = np.zeros(bins)
    regions = 0
    if flat.any():
        lab, regions = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
        sizes = np.bincount(lab.ravel(), minlength=regions + 1).astype(np.float64)
        weight = np.zeros(regions + 1)
        weight[1:] = 1.0 / sizes[1:]
        pro = np.bincount(idx, weights=weight[lab.ravel()], minlength=bins).astype(np.float64)
    return BinnedPixels(edges, good, defect, pro, int(regions))
