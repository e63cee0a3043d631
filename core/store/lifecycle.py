"""Train, save, load and run detectors by kind: the one entry point the CLI and the app use."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np

from core.data.dataset import CategoryData
from core.data.imageio import load_many
from core.files import now_iso
from core.models.device import compute_device, describe
from core.models.input_choice import InputChoice
from core.models.registry import INFERENCE_PATHS, KINDS, Detector, spec
from core.scores.calibration import Calibration, calibrate
from core.scores.evaluate import EvaluationResult, evaluate
from core.scores.familiarity import aspect_range, fit_limit, min_side_for
from core.store.model_store import ModelRef, ModelStore, ModelStoreError, validate_name, versions
from core.types import (
    HOLDOUT_FRACTION,
    MAX_HOLDOUT,
    NO_CONTROL,
    Prediction,
    ResumePoint,
    TrainControl,
    holdout_count,
)

logger = logging.getLogger(__name__)

__all__ = ["HOLDOUT_FRACTION", "INFERENCE_PATHS", "KINDS", "MAX_HOLDOUT", "Detector", "InputChoice", "LoadedModel", "TrainResult", "build",
           "default_settings", "input_choice_of", "load", "read_calibration", "run_evaluation", "save_calibration", "train"]
MIN_TRAIN = 2


def default_settings(kind: str) -> dict[str, Any]:
    """Settings a new model of ``kind`` gets unless the user overrides them."""
    return spec(kind).default_settings()


def build(kind: str, settings: dict[str, Any]) -> Detector:
    """A fresh (untrained) detector of ``kind`` configured by ``settings``."""
    return spec(kind).build(settings)


def inference_settings(kind: str, settings: dict[str, Any], inference: str) -> dict[str, Any]:
    """``settings`` with the inference path applied: ``"fast"`` (ONNX Runtime, our search and map smoothing)
    or ``"stock"`` (anomalib's own torch forward pass, kept for comparison). Training settings are untouched."""
    if inference not in INFERENCE_PATHS:
        raise ValueError(f"expected inference path in {INFERENCE_PATHS}, found {inference!r}")
    return spec(kind).inference_settings(settings, inference)


@dataclass(frozen=True)
class LoadedModel:
    """A model version ready to score. ``warmup_ms``: time of the first (discarded) forward pass made at load,
    so the latencies reported afterwards are steady-state."""

    ref: ModelRef
    detector: Detector
    manifest: dict[str, Any]
    calibration: Calibration
    warmup_ms: float = 0.0

    @property
    def category(self) -> str:
        return self.ref.category

    @property
    def kind(self) -> str:
        return self.ref.kind

    @property
    def version(self) -> int:
        return self.ref.version


@dataclass(frozen=True)
class TrainResult:
    ref: ModelRef
    manifest: dict[str, Any]
    calibration: Calibration
    problems: tuple[str, ...]


@runtime_checkable
class LeaveOneOut(Protocol):
    """A detector that learns from ALL good training images and scores each of them as if it had not (PatchCore:
    the bank without the image's own entries), so calibration needs no hold-out. Kinds without it (EfficientAD:
    k-fold would mean k trainings; not done) keep :data:`HOLDOUT_FRACTION` of the images out of fitting."""

    def predict_left_out(self, images: Sequence[np.ndarray]) -> list[Prediction]: ...


def split_holdout(n: int, fraction: float, seed: int, limit: int = MAX_HOLDOUT) -> tuple[list[int], list[int]]:
    """Indices (fit, holdout): ``fraction`` of ``n`` good images (at most ``limit``) held out for calibration,
    none if n < 10. 20% rather than 10%: on magnetic_tile the false-alarm rate a 5% default delivered varied
    4-10% (10th-90th percentile) over random 76-image held-out sets and 5-8% over 152-image ones."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_hold = holdout_count(n, fraction, limit)
    return sorted(order[n_hold:]), sorted(order[:n_hold])


def train(data: CategoryData, kind: str, settings: dict[str, Any], store: ModelStore,
          control: TrainControl = NO_CONTROL, resume: bool = False, reason: str = "trained") -> TrainResult:
    """Fit a ``kind`` model on the good training images of ``data``, calibrate, and save it as a new version
    (the current one, if any, is its parent and stays loadable).

    A run cancelled through ``control`` keeps its state in the store when its kind can resume (EfficientAD);
    ``resume`` continues that run with its own settings (``settings`` may only repeat them), otherwise a new
    run replaces it. ``reason`` is the version's reason in the store (e.g. the demo's shorter budget).
    """
    validate_name(data.name, "category name")
    state_dir = store.training_state_dir(data.name, kind)
    if resume:
        settings = _resume_settings(ResumePoint.read(state_dir), data.name, kind, settings)
    else:
        store.discard_training_state(data.name, kind)
    full = {**default_settings(kind), **settings}
    detector = build(kind, full)
    control.report("reading training images", 0.0)
    _, images, problems = load_many([s.path for s in data.train])
    if len(images) < MIN_TRAIN:
        raise ValueError(f"expected at least {MIN_TRAIN} readable good images in {data.name}, found {len(images)}"
                         + (f" ({len(problems)} unreadable)" if problems else ""))
    left_out = isinstance(detector, LeaveOneOut)
    if left_out:
        fit_idx, hold_idx = list(range(len(images))), list[int]()
    else:
        fit_idx, hold_idx = split_holdout(len(images), HOLDOUT_FRACTION, int(full.get("seed", 0)))
    fit_images = [images[i] for i in fit_idx]
    hold_images = [images[i] for i in hold_idx]
    device = describe(compute_device())
    logger.info("training %s for %s on %d good images (%d held out) on %s%s", kind, data.name, len(fit_images),
                len(hold_images), device, ", resuming" if resume else "")
    t0 = time.perf_counter()
    sub = TrainControl(progress=(lambda m, f: control.report(m, 0.9 * f)) if control.progress else None,
                       cancel=control.cancel, state_dir=state_dir)
    train_info = detector.fit_good(fit_images, hold_images, sub)
    train_seconds = time.perf_counter() - t0
    input_choice = train_info.pop("input_choice", None)  # an automatic input mode, resolved by the fit
    if input_choice is not None:
        full = {**full, **input_choice["settings"]}
    t_cal = time.perf_counter()
    if isinstance(detector, LeaveOneOut):
        control.report("calibrating: each training image without its own patches", 0.92)
        hold_preds = detector.predict_left_out(fit_images)
        calibration = calibrate(hold_preds, f"all good training images, each scored leave-one-image-out "
                                            f"(n={len(fit_images)}, its own patches skipped in the bank)")
    elif hold_images:
        control.report("calibrating on held-out good images", 0.92)
        hold_preds = detector.predict(hold_images)
        calibration = calibrate(hold_preds, f"held-out good training images (n={len(hold_images)}, not used for fitting)")
    else:
        hold_preds = []
        calibration = calibrate(detector.predict(fit_images), "training images (too few to hold any out; optimistic)")
    calibration_seconds = time.perf_counter() - t_cal
    shapes = [im.shape for im in images]
    lo, hi = aspect_range(shapes)
    calibration = replace(calibration, familiarity_limit=fit_limit(hold_preds), aspect_min=lo, aspect_max=hi,
                          min_side=min_side_for(shapes))
    manifest = {
        "category": data.name, "kind": kind, "backbone": detector.config.backbone,
        "layers": list(getattr(detector.config, "layers", ())),
        "settings": full, "data": {"root": str(data.root), "layout": data.layout, "num_train_images": len(fit_images),
                                   "num_holdout_images": len(hold_images),
                                   "calibration": "leave_one_image_out" if left_out else "holdout",
                                   "num_calibration_images": calibration.num_images, "unreadable": problems},
        "train": {**train_info, "seconds": train_seconds, "calibration_seconds": calibration_seconds, "device": device},
        "threshold_policy": calibration.source,
        "created": now_iso(), "versions": versions(), "metrics": {},
        **({"input_choice": input_choice} if input_choice is not None else {}),
    }
    parent = store.current(data.name, kind) if store.has_model(data.name, kind) else None
    ref = store.create_version(data.name, kind, manifest, calibration.to_dict(), reason=reason,
                               weights=detector.state(), parent=parent)
    store.discard_training_state(data.name, kind)
    logger.info("trained %s in %.1f s (image threshold %.4g)", ref.label, train_seconds, calibration.image_threshold)
    control.report("saved", 1.0)
    return TrainResult(ref, store.read_manifest(ref), calibration, tuple(problems))


def _resume_settings(point: ResumePoint | None, category: str, kind: str,
                     settings: dict[str, Any]) -> dict[str, Any]:
    """The settings of the interrupted run ``point``; ``settings`` given beside it must agree with them."""
    if point is None or point.kind != kind:
        raise ValueError(f"expected an interrupted {kind} run of {category} to resume, found none "
                         "(train without resuming to start one)")
    differ = {k: (v, point.settings.get(k)) for k, v in settings.items() if point.settings.get(k) != v}
    if differ:
        raise ValueError("expected the interrupted run's settings when resuming, found different "
                         + ", ".join(f"{k}={v!r} (the run has {was!r})" for k, (v, was) in differ.items()))
    return dict(point.settings)


def load(ref: ModelRef, inference: str = "fast") -> LoadedModel:
    """Load a saved model version for the ``inference`` path (see :func:`inference_settings`), ready to
    score (a PatchCore memory bank's search index is built here); never touches the network or the data.

    Raises:
        ModelStoreError: the folder is missing, incomplete or corrupt (the message says which file and why).
    """
    store = ModelStore(ref.store)
    manifest = store.read_manifest(ref)
    state = store.read_weights(ref)
    calibration = read_calibration(ref)
    try:
        detector = build(ref.kind, inference_settings(ref.kind, manifest["settings"], inference))
        detector.load_state(state)
        detector.prepare()
    except (ValueError, KeyError, TypeError, RuntimeError, FileNotFoundError) as exc:
        raise ModelStoreError(f"{store.path(ref)}: weights do not fit the manifest's settings ({exc})") from None
    warmup_ms = warm_up(detector)
    logger.info("loaded %s (%s inference; warm-up %.0f ms)", ref.label, inference, warmup_ms)
    return LoadedModel(ref, detector, manifest, calibration, warmup_ms)


def warm_up(detector: Detector) -> float:
    """One discarded forward pass at the model's input size (graph export, thread pools, first-touch memory),
    so the latencies reported afterwards are steady-state. Returns its wall time in ms."""
    t0 = time.perf_counter()
    blank = np.full((detector.config.height, detector.config.width, 3), 127, dtype=np.uint8)
    detector.predict([blank])
    return (time.perf_counter() - t0) * 1000.0


def read_calibration(ref: ModelRef) -> Calibration:
    """The calibration saved beside a model version now.

    Raises:
        ModelStoreError: missing or damaged calibration (the message names the file and the problem).
    """
    store = ModelStore(ref.store)
    try:
        return Calibration.from_dict(store.read_calibration(ref), positive=spec(ref.kind).positive_scores)
    except (ValueError, TypeError) as exc:
        raise ModelStoreError(f"{store.calibration_file(ref)}: {exc}") from None


def save_calibration(model: LoadedModel, calibration: Calibration, reason: str = "thresholds saved") -> ModelRef:
    """Save thresholds as a new version of ``model`` (weights and evaluation shared with it, now current), with
    ``reason`` as the version's reason.

    Raises:
        ValueError: a threshold no verdict can be made from (not finite; 0 or less for a kind whose scores are
            0 or more); nothing is saved.
    """
    calibration.check(spec(model.kind).positive_scores)
    store = ModelStore(model.ref.store)
    manifest = store.read_manifest(model.ref)
    return store.create_version(model.category, model.kind, manifest, calibration.to_dict(),
                                reason=reason, parent=model.ref, keep_evaluation=True)


def run_evaluation(model: LoadedModel, data: CategoryData, control: TrainControl = NO_CONTROL) -> EvaluationResult:
    """Evaluate ``model`` on ``data``'s test set and save the results (and a metrics summary) beside it."""
    result = evaluate(model.detector, data, model.calibration, control)
    ModelStore(model.ref.store).write_evaluation(model.ref, result.to_json(), result.images_csv(),
                                                 result.pixels_npz(), dict(result.overall))
    logger.info("evaluated %s: %s", model.ref.label, ", ".join(f"{k} {v:.4g}" for k, v in result.overall.items()
                                                              if isinstance(v, float)))
    return result


def input_choice_of(manifest: dict[str, Any]) -> InputChoice | None:
    """The automatic input mode's choice a version's manifest records (None: chosen by hand, another kind, or a
    model saved before the choice was recorded). A damaged record is logged and read as None: it only explains."""
    data = manifest.get("input_choice")
    if data is None:
        return None
    try:
        return InputChoice.from_dict(data)
    except (ValueError, TypeError, KeyError) as exc:
        logger.warning("unreadable input choice in the manifest of %s/%s: %s", manifest.get("category"),
                       manifest.get("kind"), exc)
        return None
