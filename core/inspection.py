"""What users act on, for one image: score, verdict, and whether the model should judge it at all.

One call for the CLI (and later the service): :func:`inspect`. The app scores through its cache and then
calls :func:`judge` with the same rules. Images below the model's minimum size get NO VERDICT with the reason;
images unlike the training images keep their verdict and carry the unfamiliar-image flag (core.familiarity).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.calibration import verdict
from core.detector import LoadedModel
from core.familiarity import MIN_SIDE_FLOOR, Familiarity, assess
from core.types import Prediction

NO_VERDICT = "NO VERDICT"


@dataclass(frozen=True)
class Inspection:
    """What the product says about one image: raw score and map (None when the image got no verdict),
    the verdict (OK / DEFECT / NO VERDICT), and whether the image looks like the training images at all."""

    score: float | None
    anomaly_map: np.ndarray | None
    latency_ms: float
    verdict: str
    familiar: bool | None
    typical_anomaly: float | None  # the guard's statistic (median of the map)
    note: str


def min_side(model: LoadedModel) -> int:
    """Smallest image side (px) the model gives a verdict for."""
    return model.calibration.min_side or MIN_SIDE_FLOOR


def size_problem(model: LoadedModel, image: np.ndarray) -> str | None:
    """Why ``image`` ``[H, W, 3]`` is too small for a verdict, or None."""
    need = min_side(model)
    if min(image.shape[:2]) < need:
        return (f"too small for a verdict: {image.shape[0]}x{image.shape[1]} px, this model needs at least "
                f"{need} px on the short side")
    return None


def judge(model: LoadedModel, image: np.ndarray, prediction: Prediction | None) -> Inspection:
    """Combine a raw prediction and the guard's view into what users see (the calibration is the model's now)."""
    problem = size_problem(model, image)
    if problem is not None or prediction is None:
        return Inspection(None, None, 0.0, NO_VERDICT, None, None, problem or "not scored")
    familiarity = assess_familiarity(model, image.shape, prediction)
    note = "" if familiarity is None or familiarity.familiar else f"unfamiliar image: {familiarity.reason}"
    return Inspection(prediction.score, prediction.anomaly_map, prediction.latency_ms,
                      verdict(prediction.score, model.calibration),
                      None if familiarity is None else familiarity.familiar,
                      None if familiarity is None else familiarity.value, note)


def assess_familiarity(model: LoadedModel, shape: tuple[int, ...], prediction: Prediction) -> Familiarity | None:
    """The guard's view of one image (None when the model's calibration has no guard: trained before it existed,
    or fewer than 3 held-out images)."""
    cal = model.calibration
    if cal.familiarity_limit is None:
        return None
    aspects = (cal.aspect_min, cal.aspect_max) if cal.aspect_min is not None and cal.aspect_max is not None else None
    return assess(prediction, shape, cal.familiarity_limit, aspects)


def inspect(model: LoadedModel, images: Sequence[np.ndarray]) -> list[Inspection]:
    """Score ``images`` (uint8 RGB ``[H, W, 3]``) and judge each: the one call the CLI (and later the service)
    makes. Images below the model's minimum size are not scored and get NO VERDICT with the reason."""
    ok = [i for i, im in enumerate(images) if size_problem(model, im) is None]
    preds = dict(zip(ok, model.detector.predict([images[i] for i in ok]), strict=True)) if ok else {}
    return [judge(model, im, preds.get(i)) for i, im in enumerate(images)]
