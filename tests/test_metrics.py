"""Metric functions against hand-computed tables."""

from __future__ import annotations

import numpy as np
import pytest

from core.scores import metrics


@pytest.mark.parametrize(
    ("labels", "scores", "expected"),
    [
        ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.75),
        ([0, 1], [0.5, 0.5], 0.5),  # a tie counts one half
        ([0, 0, 1], [1, 2, 3], 1.0),
        ([0, 1, 1, 0], [3, 2, 1, 0], 0.5),
        ([0, 0, 1, 1], [1, 2, 2, 3], 0.875),
        ([1, 1, 0, 0], [1, 2, 3, 4], 0.0),
    ],
)
def test_roc_auc_table(labels, scores, expected) -> None:
    assert metrics.roc_auc(np.array(labels), np.array(scores)) == pytest.approx(expected)


def test_roc_auc_single_class_is_nan() -> None:
    assert np.isnan(metrics.roc_auc(np.array([0, 0]), np.array([1.0, 2.0])))


def test_roc_auc_matches_trapezoid_of_curve() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = rng.normal(labels * 0.8, 1.0).round(1)  # many ties
    c = metrics.curve(labels, scores)
    assert metrics.roc_auc(labels, scores) == pytest.approx(np.trapezoid(c.tpr, c.fpr), abs=1e-12)


def test_curve_and_f1_table() -> None:
    c = metrics.curve(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert c.thresholds[1:].tolist() == [0.8, 0.4, 0.35, 0.1]
    assert np.allclose(c.tpr, [0, 0.5, 0.5, 1.0, 1.0])
    assert np.allclose(c.fpr, [0, 0, 0.5, 0.5, 1.0])
    assert np.allclose(c.precision, [1, 1, 0.5, 2 / 3, 0.5])
    assert np.allclose(c.f1, [0, 2 / 3, 0.5, 0.8, 2 / 3])
    f1, thr = metrics.f1_max(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert (f1, thr) == (pytest.approx(0.8), 0.35)


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [(0.35, {"tp": 2, "fp": 1, "tn": 1, "fn": 0}), (0.81, {"tp": 0, "fp": 0, "tn": 2, "fn": 2}),
     (0.0, {"tp": 2, "fp": 2, "tn": 0, "fn": 0})],
)
def test_confusion_table(threshold, expected) -> None:
    assert metrics.confusion(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]), threshold) == expected


def test_rates() -> None:
    r = metrics.rates({"tp": 2, "fp": 1, "tn": 1, "fn": 0})
    assert r == pytest.approx({"precision": 2 / 3, "recall": 1.0, "fpr": 0.5, "f1": 0.8})
    assert metrics.rates({"tp": 0, "fp": 0, "tn": 0, "fn": 0}) == {"precision": 0.0, "recall": 0.0, "fpr": 0.0, "f1": 0.0}


@pytest.mark.parametrize(("fpr", "flagged"), [(0.2, 2), (0.0, 0), (0.15, 1), (1.0, 10)])
def test_threshold_at_fpr(fpr: float, flagged: int) -> None:
    good = np.arange(1, 11, dtype=float)
    thr = metrics.threshold_at_fpr(good, fpr)
    assert int((good >= thr).sum()) == flagged


@pytest.mark.parametrize(("recall", "threshold"), [(0.5, 5.0), (0.25, 9.0), (1.0, 1.0), (0.6, 3.0)])
def test_threshold_at_recall(recall: float, threshold: float) -> None:
    labels = np.array([1, 1, 1, 1, 0])
    scores = np.array([5.0, 3.0, 9.0, 1.0, 4.0])
    assert metrics.threshold_at_recall(labels, scores, recall) == threshold


def test_aupro_hand_case() -> None:
    mask = np.array([[False, False, True, True]])
    amap = np.array([[0.1, 0.3, 0.2, 0.4]])
    assert metrics.aupro([mask], [amap]) == pytest.approx(0.5)


def test_aupro_perfect_and_regions_weigh_equally() -> None:
    mask = np.zeros((10, 10), bool)
    mask[0:2, 0:2] = True  # small region
    mask[5:10, 5:10] = True  # large region
    perfect = mask.astype(float)
    assert metrics.aupro([mask], [perfect]) == pytest.approx(1.0)
    # only the large region found; the small one scores below every good pixel: PRO stays 0.5 up to FPR 1
    half = np.zeros((10, 10))
    half[5:10, 5:10] = 1.0
    half[0:2, 0:2] = -1.0
    assert metrics.aupro([mask], [half]) == pytest.approx(0.5, abs=1e-9)


def test_aupro_nan_without_defects() -> None:
    assert np.isnan(metrics.aupro([np.zeros((3, 3), bool)], [np.zeros((3, 3))]))


def _blobby_set(seed: int, n: int, shape: tuple[int, int], tail: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Generated maps like a detector's: smooth noise, defect regions (ellipses of varied size) with raised
    values, some images without defects; ``tail`` picks the noise distribution."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    masks, maps = [], []
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    for k in range(n):
        mask = np.zeros(shape, bool)
        if k % 3:
            for _ in range(rng.integers(1, 4)):
                cy, cx = rng.integers(0, shape[0]), rng.integers(0, shape[1])
                ry, rx = rng.integers(2, shape[0] // 4), rng.integers(2, shape[1] // 4)
                mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        noise = rng.lognormal(0.0, 0.8, shape) if tail == "lognormal" else rng.normal(0.0, 1.0, shape)
        amap = ndi.gaussian_filter(noise, 2.0) + ndi.gaussian_filter(mask * rng.uniform(0.2, 2.0), 3.0)
        masks.append(mask)
        maps.append(amap.astype(np.float32))
    return masks, maps


@pytest.mark.parametrize(("seed", "tail"), [(0, "normal"), (1, "lognormal"), (2, "normal"), (3, "lognormal")])
def test_binned_pixel_metrics_within_0002_of_exact(seed: int, tail: str) -> None:
    masks, maps = _blobby_set(seed, 24, (96, 128), tail)
    edges = metrics.binning_edges(maps)
    binned = metrics.bin_image(masks[0], maps[0], edges)
    for mask, amap in zip(masks[1:], maps[1:], strict=True):
        binned = binned + metrics.bin_image(mask, amap, edges)
    exact_auroc = metrics.roc_auc(np.concatenate([m.ravel() for m in masks]), np.concatenate([m.ravel() for m in maps]))
    assert binned.auroc() == pytest.approx(exact_auroc, abs=2e-3)
    assert binned.aupro() == pytest.approx(metrics.aupro(masks, maps), abs=2e-3)
    assert binned.good.sum() + binned.defect.sum() == 24 * 96 * 128
    assert 0.5 < exact_auroc < 0.999  # a case where binning could matter, not a trivially separable one


def test_binned_pixels_hand_computed() -> None:
    # bins [0,1) [1,2) [2,3]: defect pixels score 2.5 (a 2-pixel region) and 1.5 (a 1-pixel region);
    # good pixels 0.5, 0.5, 1.5, 2.5.
    mask = np.array([[1, 1, 0, 0], [0, 0, 0, 1]], bool)
    amap = np.array([[2.5, 2.5, 0.5, 0.5], [1.5, 2.5, 1.0, 1.5]])
    mask[1, 2] = False
    b = metrics.bin_image(mask, amap, np.array([0.0, 1.0, 2.0, 3.0]))
    assert list(b.good) == [2, 2, 1] and list(b.defect) == [0, 1, 2] and b.regions == 2
    assert np.allclose(b.pro, [0.0, 1.0, 1.0])  # each region adds 1 in total
    # ROC points (fpr, tpr): (0,0) -> (1/5, 2/3) -> (3/5, 1) -> (1, 1); trapezoid area:
    assert b.auroc() == pytest.approx(0.2 * (2 / 3) / 2 + 0.4 * (2 / 3 + 1) / 2 + 0.4)
    # PRO points (fpr, pro): (0,0) -> (0.2, 0.5) -> (0.6, 1): area to 0.3 = 0.2*0.25 + 0.1*(0.5+0.625)/2
    assert b.aupro(0.3) == pytest.approx((0.2 * 0.25 + 0.1 * (0.5 + 0.625) / 2) / 0.3)


def test_binned_pixels_refuse_other_edges() -> None:
    a = metrics.bin_image(np.zeros((2, 2), bool), np.zeros((2, 2)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="same bin edges"):
        _ = a + metrics.bin_image(np.zeros((2, 2), bool), np.zeros((2, 2)), np.array([0.0, 2.0]))


def test_crossfit_f1_separable_and_random() -> None:
    labels = np.array([0] * 20 + [1] * 20)
    assert metrics.crossfit_f1(labels, labels + 0.01 * np.arange(40))[0] == pytest.approx(1.0)
    rng = np.random.default_rng(2)
    noisy = rng.random(40)
    assert metrics.crossfit_f1(labels, noisy)[0] < metrics.f1_max(labels, noisy)[0] + 1e-12
