"""Evaluation of a detector on a category's test images: image and pixel metrics, overall and per defect."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.data.dataset import GOOD, CategoryData, Sample, read_batches
from core.data.imageio import ImageLoadError, load_mask
from core.scores import metrics
from core.scores.calibration import Calibration
from core.types import NO_CONTROL, Prediction, TrainControl

CHUNK = 32
SCORING_SHARE = 0.85  # progress fraction for scoring; the rest is the pixel-metrics pass


@dataclass(frozen=True)
class ImageResult:
    """One scored test image. ``key``: its identity (:attr:`core.data.dataset.Sample.key`); ``path``: absolute."""

    path: str
    key: str
    defect: str
    label: int
    score: float
    latency_ms: float


@dataclass(frozen=True)
class EvaluationResult:
    """Metrics (``overall`` and ``per_defect``), one row per scored image, and the pixel-score histogram."""

    overall: dict[str, float]
    per_defect: dict[str, dict[str, float]]
    images: tuple[ImageResult, ...]
    pixel_histogram: metrics.PixelHistogram | None
    problems: tuple[str, ...] = field(default_factory=tuple)
    unreadable: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {"overall": self.overall, "per_defect": self.per_defect, "num_images": len(self.images),
                "problems": list(self.problems),
                "notes": {"f1_max": "best F1 over all thresholds on the test images (optimistic by definition)",
                          "f1_crossfit": "F1-optimal threshold fitted on one half of the test images, F1 counted "
                                         "on the other half, and vice versa (2-fold, stratified)",
                          "f1_at_calibrated": "F1 at the model's saved image threshold (by default the one fitted "
                                              "on held-out GOOD training images for the promised false-alarm rate)",
                          "false_alarm_observed": "share of good test images flagged at the saved threshold; compare "
                                                  "with calibration.json's false_alarm_target",
                          "aupro": "PRO integrated up to 30% FPR, normalised",
                          "pixel metrics": f"pixel AUROC and AUPRO from {metrics.BINS} shared score bins (within 0.002 of the exact values; tests/test_metrics.py)"}}

    def images_csv(self) -> bytes:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["path", "key", "defect", "label", "score", "latency_ms"])
        for r in self.images:
            writer.writerow([r.path, r.key, r.defect, r.label, f"{r.score:.6g}", f"{r.latency_ms:.3f}"])
        return out.getvalue().encode()

    def pixels_npz(self) -> bytes:
        out = io.BytesIO()
        if self.pixel_histogram is not None:
            h = self.pixel_histogram
            np.savez_compressed(out, edges=h.edges, good=h.good, defect=h.defect)
        else:
            np.savez_compressed(out)
        return out.getvalue()


def _image_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float | None) -> dict[str, float]:
    out: dict[str, float] = {"image_auroc": metrics.roc_auc(labels, scores)}
    if labels.any() and (~labels.astype(bool)).any():
        f1, thr = metrics.f1_max(labels, scores)
        out["f1_max"], out["f1_max_threshold"] = f1, thr
        out["f1_crossfit"], out["crossfit_threshold"] = metrics.crossfit_f1(labels, scores)
    if threshold is not None:
        r = metrics.rates(metrics.confusion(labels, scores, threshold))
        if labels.any() and (~labels.astype(bool)).any():
            out["f1_at_calibrated"] = r["f1"]
        if (~labels.astype(bool)).any():
            out["false_alarm_observed"] = r["fpr"]  # good test images flagged at the saved threshold
        if labels.any():
            out["recall_at_calibrated"] = r["recall"]
    return out


def _pixel_metrics(binned: metrics.BinnedPixels | None) -> dict[str, float]:
    if binned is None or binned.defect.sum() == 0:
        return {}
    return {"pixel_auroc": binned.auroc(), "aupro": binned.aupro()}


def evaluate(detector: Any, data: CategoryData, calibration: Calibration | None,
             control: TrainControl = NO_CONTROL) -> EvaluationResult:
    """Score every test image of ``data`` with ``detector`` (anything with ``predict(images)``).

    Unreadable images are listed in ``problems`` and left out; pixel metrics use the images with masks
    plus the good images (all-zero masks). Image metrics are exact; pixel AUROC and AUPRO come from
    :class:`core.scores.metrics.BinnedPixels` on shared bins (one pass over the maps, each map dropped once binned).
    Progress runs 0 -> 0.85 while scoring and 0.85 -> 1 while binning maps; it never goes back.
    """
    samples: list[Sample] = []
    preds: list[Prediction] = []
    masks: list[np.ndarray | None] = []
    unreadable: list[str] = []
    test = list(data.test)
    if not test:
        raise ValueError(f"expected test images under {data.root / data.name / 'test'}, found none")
    for batch in read_batches(test, CHUNK):
        control.report(f"scoring {batch.start}/{len(test)}", SCORING_SHARE * batch.start / len(test))
        unreadable.extend(batch.problems)
        if not batch.images:
            continue
        for s, image, p in zip(batch.samples, batch.images, detector.predict(batch.images), strict=True):
            samples.append(s)
            preds.append(p)
            if s.defect == GOOD:
                masks.append(np.zeros(image.shape[:2], dtype=bool))
            elif s.mask_path is not None:
                try:
                    masks.append(load_mask(s.mask_path, image.shape[:2]))
                except ImageLoadError as exc:
                    unreadable.append(str(exc))
                    masks.append(None)
            else:
                masks.append(None)
    if not samples:
        raise ValueError(f"expected readable test images under {data.root / data.name / 'test'}, found none")
    labels = np.array([s.label for s in samples])
    scores = np.array([p.score for p in preds])
    latencies = np.array([p.latency_ms for p in preds])
    rows = tuple(ImageResult(str(s.path.resolve()), s.key, s.defect, s.label, p.score, p.latency_ms)
                 for s, p in zip(samples, preds, strict=True))
    maps: list[np.ndarray | None] = [p.anomaly_map for p in preds]
    del preds  # the maps are dropped one by one below
    groups = _bin_by_defect(samples, masks, maps, control)
    threshold = calibration.image_threshold if calibration else None
    overall = _image_metrics(labels, scores, threshold)
    total = _sum(list(groups.values()))
    overall.update(_pixel_metrics(total))
    overall["latency_ms_mean"] = float(latencies.mean())
    overall["latency_ms_median"] = float(np.median(latencies))
    overall["num_good"] = int((labels == 0).sum())
    overall["num_defect"] = int((labels == 1).sum())
    per_defect: dict[str, dict[str, float]] = {}
    for defect in sorted({s.defect for s in samples if s.label == 1}):
        sel = [i for i, s in enumerate(samples) if s.defect in (defect, GOOD)]
        entry = _image_metrics(labels[sel], scores[sel], threshold)
        entry.update(_pixel_metrics(_sum([g for k, g in groups.items() if k in (defect, GOOD)])))
        entry["count"] = int(sum(1 for s in samples if s.defect == defect))
        per_defect[defect] = entry
    hist = total.histogram() if total is not None and total.defect.sum() > 0 else None
    control.report("evaluation done", 1.0)
    return EvaluationResult(overall, per_defect, rows, hist, tuple(data.problems) + tuple(unreadable), tuple(unreadable))


def _bin_by_defect(samples: list[Sample], masks: list[np.ndarray | None], maps: list[np.ndarray | None],
                   control: TrainControl) -> dict[str, metrics.BinnedPixels]:
    """Pixel statistics summed per defect type (good images under ``GOOD``); images without a mask are left
    out. Each entry of ``maps`` is set to None once binned, so memory falls as the pass goes on."""
    with_mask = [i for i, m in enumerate(masks) if m is not None]
    if not with_mask:
        return {}
    edges = metrics.binning_edges([maps[i] for i in with_mask])  # type: ignore[misc]
    groups: dict[str, metrics.BinnedPixels] = {}
    for n, i in enumerate(with_mask):
        if n % 16 == 0:
            control.report(f"pixel metrics {n}/{len(with_mask)}", SCORING_SHARE + (1 - SCORING_SHARE) * n / len(with_mask))
        binned = metrics.bin_image(masks[i], maps[i], edges)  # type: ignore[arg-type]
        maps[i] = None
        key = samples[i].defect
        groups[key] = groups[key] + binned if key in groups else binned
    return groups


def _sum(parts: list[metrics.BinnedPixels]) -> metrics.BinnedPixels | None:
    if not parts:
        return None
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total
