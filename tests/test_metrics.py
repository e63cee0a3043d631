"""Metric functions against hand-computed tables."""

from __future__ import annotations

import numpy as np
import pytest

from core import metrics


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


def test_pixel_histogram_auroc_close_to_exact() -> None:
    rng = np.random.default_rng(1)
    masks = [rng.random((32, 32)) < 0.1 for _ in range(4)]
    maps = [rng.normal(m.astype(float), 1.0) for m in masks]
    hist = metrics.pixel_histogram(masks, maps, bins=2048)
    exact = metrics.roc_auc(np.concatenate([m.ravel() for m in masks]), np.concatenate([m.ravel() for m in maps]))
    assert hist.auroc() == pytest.approx(exact, abs=2e-3)
    assert hist.good.sum() + hist.defect.sum() == 4 * 32 * 32


def test_crossfit_f1_separable_and_random() -> None:
    labels = np.array([0] * 20 + [1] * 20)
    assert metrics.crossfit_f1(labels, labels + 0.01 * np.arange(40))[0] == pytest.approx(1.0)
    rng = np.random.default_rng(2)
    noisy = rng.random(40)
    assert metrics.crossfit_f1(labels, noisy)[0] < metrics.f1_max(labels, noisy)[0] + 1e-12
