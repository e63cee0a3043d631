"""Train, save, load and run detectors by kind: the one entry point the CLI and the app use."""

from __future__ import annotations

import datetime as dt
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from core.calibration import Calibration, calibrate
from core.dataset import CategoryData
from core.efficientad import EfficientAD, EfficientADConfig
from core.evaluate import EvaluationResult, evaluate
from core.familiarity import aspect_range, fit_limit, min_side_for
from core.imageio import load_many
from core.patchcore import PatchCore, PatchCoreConfig
from core.store import (
    CALIBRATION,
    EVAL_IMAGES,
    EVAL_PIXELS,
    EVALUATION,
    MANIFEST,
    ModelStore,
    ModelStoreError,
    versions,
)
from core.types import NO_CONTROL, TrainControl

Detector = PatchCore | EfficientAD
KINDS: tuple[str, ...] = ("patchcore", "efficientad")
INFERENCE_PATHS: tuple[str, ...] = ("fast", "stock")
HOLDOUT_FRACTION = 0.2  # of the good training images, for calibration (see split_holdout)
MAX_HOLDOUT = 200
MIN_TRAIN = 2


def default_settings(kind: str) -> dict[str, Any]:
    """Settings a new model of ``kind`` gets unless the user overrides them."""
    if kind == "patchcore":
        return PatchCoreConfig().to_dict()
    if kind == "efficientad":
        return EfficientADConfig().to_dict()
    raise ValueError(f"expected model kind in {KINDS}, found {kind!r}")


def build(kind: str, settings: dict[str, Any]) -> Detector:
    """A fresh (untrained) detector of ``kind`` configured by ``settings``."""
    if kind == "patchcore":
        return PatchCore(PatchCoreConfig.from_dict(settings))
    if kind == "efficientad":
        return EfficientAD(EfficientADConfig.from_dict(settings))
    raise ValueError(f"expected model kind in {KINDS}, found {kind!r}")


def inference_settings(kind: str, settings: dict[str, Any], inference: str) -> dict[str, Any]:
    """``settings`` with the inference path applied: ``"fast"`` (ONNX Runtime, our search and map smoothing)
    or ``"stock"`` (anomalib's own torch forward pass, kept for comparison). Training settings are untouched."""
    if inference not in INFERENCE_PATHS:
        raise ValueError(f"expected inference path in {INFERENCE_PATHS}, found {inference!r}")
    if inference == "stock":
        return {**settings, "runtime": "torch", **({"search": "stock"} if kind == "patchcore" else {})}
    fast = {**settings, "runtime": "onnx"}
    if kind == "patchcore" and fast.get("search") == "stock":
        fast["search"] = "auto"
    return fast


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to score. ``warmup_ms``: time of the first (discarded) forward pass made at load, so
    the latencies reported afterwards are steady-state."""

    category: str
    kind: str
    detector: Detector
    manifest: dict[str, Any]
    calibration: Calibration
    path: Path
    warmup_ms: float = 0.0


@dataclass(frozen=True)
class TrainResult:
    path: Path
    manifest: dict[str, Any]
    calibration: Calibration
    problems: tuple[str, ...]


def split_holdout(n: int, fraction: float, seed: int, limit: int = MAX_HOLDOUT) -> tuple[list[int], list[int]]:
    """Indices (fit, holdout): ``fraction`` of ``n`` good images (at most ``limit``) held out for calibration,
    none if n < 10. 20% rather than 10%: on magnetic_tile the false-alarm rate a 5% default delivered varied
    4-10% (10th-90th percentile) over random 76-image held-out sets and 5-8% over 152-image ones."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_hold = min(limit, int(round(n * fraction))) if n >= 10 else 0
    return sorted(order[n_hold:]), sorted(order[:n_hold])


def train(data: CategoryData, kind: str, settings: dict[str, Any], store: ModelStore,
          control: TrainControl = NO_CONTROL) -> TrainResult:
    """Fit a ``kind`` model on the good training images of ``data``, calibrate, and save it atomically."""
    full = {**default_settings(kind), **settings}
    detector = build(kind, full)
    control.report("reading training images", 0.0)
    _, images, problems = load_many([s.path for s in data.train])
    if len(images) < MIN_TRAIN:
        raise ValueError(f"expected at least {MIN_TRAIN} readable good images in {data.name}, found {len(images)}"
                         + (f" ({len(problems)} unreadable)" if problems else ""))
    fit_idx, hold_idx = split_holdout(len(images), HOLDOUT_FRACTION, int(full.get("seed", 0)))
    fit_images = [images[i] for i in fit_idx]
    hold_images = [images[i] for i in hold_idx]
    t0 = time.perf_counter()
    sub = TrainControl(progress=(lambda m, f: control.report(m, 0.9 * f)) if control.progress else None,
                       cancel=control.cancel)
    if isinstance(detector, PatchCore):
        report = detector.fit(fit_images, sub)
        train_info: dict[str, Any] = {"num_patches": report.num_patches, "memory_bank": report.memory_bank,
                                      "embed_seconds": report.embed_seconds, "coreset_seconds": report.coreset_seconds}
    else:
        train_info = detector.fit(fit_images, hold_images, sub)
    train_seconds = time.perf_counter() - t0
    control.report("calibrating on held-out good images", 0.92)
    hold_preds = detector.predict(hold_images) if hold_images else []
    if hold_images:
        calibration = calibrate(hold_preds, f"held-out good training images (n={len(hold_images)}, not used for fitting)")
    else:
        calibration = calibrate(detector.predict(fit_images), "training images (too few to hold any out; optimistic)")
    shapes = [im.shape for im in images]
    lo, hi = aspect_range(shapes)
    calibration = replace(calibration, familiarity_limit=fit_limit(hold_preds), aspect_min=lo, aspect_max=hi,
                          min_side=min_side_for(shapes))
    manifest = {
        "category": data.name, "kind": kind, "backbone": _backbone_name(detector),
        "layers": list(getattr(detector.config, "layers", ())),
        "settings": full, "data": {"root": str(data.root), "layout": data.layout, "num_train_images": len(fit_images),
                                   "num_holdout_images": len(hold_images), "unreadable": problems},
        "train": {**train_info, "seconds": train_seconds},
        "threshold_policy": calibration.source,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(), "metrics": {},
    }
    path = store.write_model(data.name, kind, detector.state(), manifest, calibration.to_dict())
    control.report("saved", 1.0)
    return TrainResult(path, manifest, calibration, tuple(problems))


def _backbone_name(detector: Detector) -> str:
    return detector.config.backbone


def load(store: ModelStore, category: str, kind: str, inference: str = "fast") -> LoadedModel:
    """Load a saved model for the ``inference`` path (see :func:`inference_settings`), ready to score (a
    PatchCore memory bank's search index is built here); never touches the network or the training data.

    Raises:
        ModelStoreError: the folder is missing, incomplete or corrupt (the message says which file and why).
    """
    manifest = store.read_manifest(category, kind)
    state = store.read_weights(category, kind)
    calibration = read_calibration(store, category, kind)
    try:
        detector = build(kind, inference_settings(kind, manifest["settings"], inference))
        detector.load_state(state)
        if isinstance(detector, PatchCore) and detector.config.search != "stock":
            detector.search_index()  # ready to score: HNSW over a very large bank takes a while, so do it here
    except (ValueError, KeyError, TypeError, RuntimeError, FileNotFoundError) as exc:
        raise ModelStoreError(f"{store.folder(category, kind)}: weights do not fit the manifest's settings ({exc})") from None
    warmup_ms = warm_up(detector)
    return LoadedModel(category, kind, detector, manifest, calibration, store.folder(category, kind), warmup_ms)


def warm_up(detector: Detector) -> float:
    """One discarded forward pass at the model's input size (graph export, thread pools, first-touch memory),
    so the latencies reported afterwards are steady-state. Returns its wall time in ms."""
    t0 = time.perf_counter()
    blank = np.full((detector.config.height, detector.config.width, 3), 127, dtype=np.uint8)
    detector.predict([blank])
    return (time.perf_counter() - t0) * 1000.0


def read_calibration(store: ModelStore, category: str, kind: str) -> Calibration:
    """The calibration saved beside a model now.

    Raises:
        ModelStoreError: missing or damaged ``calibration.json`` (the message names the file and the problem).
    """
    try:
        return Calibration.from_dict(store.read_calibration(category, kind))
    except (ValueError, TypeError) as exc:
        raise ModelStoreError(f"{store.folder(category, kind) / CALIBRATION}: {exc}") from None


def save_calibration(store: ModelStore, model: LoadedModel, calibration: Calibration) -> None:
    store.write_json(model.category, model.kind, CALIBRATION, calibration.to_dict())


def run_evaluation(store: ModelStore, model: LoadedModel, data: CategoryData,
                   control: TrainControl = NO_CONTROL) -> EvaluationResult:
    """Evaluate ``model`` on ``data``'s test set and save the results (and a metrics summary) beside it."""
    result = evaluate(model.detector, data, model.calibration, control)
    store.write_json(model.category, model.kind, EVALUATION, result.to_json())
    store.write_file(model.category, model.kind, EVAL_IMAGES, result.images_csv())
    store.write_file(model.category, model.kind, EVAL_PIXELS, result.pixels_npz())
    manifest = dict(model.manifest)
    manifest["metrics"] = {k: v for k, v in result.overall.items()}
    store.write_json(model.category, model.kind, MANIFEST, manifest)
    return result
