"""What users act on, for one image: score, verdict, and whether the model should judge it at all.

One call for the CLI (and later the service): :func:`inspect`. The app scores through its cache and then
calls :func:`judge` with the same rules. Images below the model's minimum size get NO VERDICT with the reason;
images unlike the training images keep their verdict and carry the unfamiliar-image flag (core.scores.familiarity).
The rules themselves are core.portable's :class:`~core.portable.Rules`, which the export bundle applies too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.portable import NO_VERDICT, Familiarity, Rules
from core.store.lifecycle import LoadedModel
from core.types import Prediction

__all__ = ["NO_VERDICT", "Inspection", "assess_familiarity", "inspect", "judge", "min_side", "rules", "size_problem"]


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


def rules(model: LoadedModel) -> Rules:
    """The verdict rules of ``model``'s calibration now (core.portable: the export bundle applies the same)."""
    return Rules.from_calibration(model.calibration.to_dict())


def min_side(model: LoadedModel) -> int:
    """Smallest image side (px) the model gives a verdict for."""
    return rules(model).min_side


def size_problem(model: LoadedModel, image: np.ndarray) -> str | None:
    """Why ``image`` ``[H, W, 3]`` is too small for a verdict, or None."""
    return rules(model).size_problem(image.shape)


def judge(model: LoadedModel, image: np.ndarray, prediction: Prediction | None) -> Inspection:
    """Combine a raw prediction and the guard's view into what users see (the calibration is the model's now)."""
    found = rules(model).judge(image.shape, None if prediction is None else prediction.score,
                               None if prediction is None else prediction.anomaly_map)
    if found.verdict == NO_VERDICT or prediction is None:
        return Inspection(None, None, 0.0, NO_VERDICT, None, None, found.note)
    familiarity = found.familiarity
    return Inspection(prediction.score, prediction.anomaly_map, prediction.latency_ms, found.verdict,
                      None if familiarity is None else familiarity.familiar,
                      None if familiarity is None else familiarity.value, found.note)


def assess_familiarity(model: LoadedModel, shape: tuple[int, ...], prediction: Prediction) -> Familiarity | None:
    """The guard's view of one image (None when the model's calibration has no guard: trained before it existed,
    or fewer than 3 held-out images)."""
    return rules(model).familiarity(prediction.anomaly_map, shape)


def inspect(model: LoadedModel, images: Sequence[np.ndarray]) -> list[Inspection]:
    """Score ``images`` (uint8 RGB ``[H, W, 3]``) and judge each: the one call the CLI (and later the service)
    makes. Images below the model's minimum size are not scored and get NO VERDICT with the reason."""
    ok = [i for i, im in enumerate(images) if size_problem(model, im) is None]
    preds = dict(zip(ok, model.detector.predict([images[i] for i in ok]), strict=True)) if ok else {}
    return [judge(model, im, preds.get(i)) for i, im in enumerate(images)]
