"""What users act on, for one image: score, verdict, and whether the model should judge it at all.

One pipeline for every caller, in two steps:

- :func:`score` measures the images the size rule lets through: the raw score, the anomaly map and the guard's
  statistic (the median of the map at the image's size). Images below the model's minimum side are not scored.
- :func:`judge` turns one image's :class:`Measurement` into what users see, with the model's calibration now.

:func:`inspect` does both; the CLI, the service, the watch folder and the dashboard call it. The dashboard passes
its cached measurer (``ui.cache.measurer``: one measurement per weights and image digest, the map kept at display
size), so a calibration change judges again without scoring again, by the same rules. Images unlike the training
images keep their verdict and carry the unfamiliar-image flag (core.scores.familiarity). The rules themselves are
core.portable's :class:`~core.portable.Rules`, which the export bundle's runner applies too
(tests/test_verdict_parity.py holds the two to the same answers for every verdict kind).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from core.portable import NO_VERDICT, Familiarity, Rules, typical_anomaly
from core.store.lifecycle import LoadedModel
from core.types import Prediction

__all__ = ["NO_VERDICT", "Inspection", "Measurement", "Measurer", "assess_familiarity", "inspect", "judge",
           "min_side", "rules", "score", "size_problem", "verdict_of"]


@dataclass(frozen=True)
class Inspection:
    """What the product says about one image: raw score and map (None when the image got no verdict),
    the verdict (OK / DEFECT / NO VERDICT), and whether the image looks like the training images at all."""

    score: float | None
    anomaly_map: np.ndarray | None
    latency_ms: float
    verdict: str
    familiar: bool | None
    typical_anomaly: float | None  # the guard's statistic (median of the map); None without a guard
    note: str


@dataclass(frozen=True)
class Measurement:
    """What scoring found for one image, all a verdict needs: the raw ``score``, the guard's statistic
    ``typical_anomaly`` (median of the map at the image's size), the ``anomaly_map`` ``[h, w]`` (at the image's
    size, or smaller where a caller keeps it for display only) and the model's time in ms."""

    score: float
    typical_anomaly: float
    anomaly_map: np.ndarray
    latency_ms: float

    @classmethod
    def of(cls, prediction: Prediction) -> Measurement:
        """The measurement of a detector's prediction (its map at the image's size)."""
        return cls(prediction.score, typical_anomaly(prediction.anomaly_map), prediction.anomaly_map,
                   prediction.latency_ms)


Measurer = Callable[[Sequence[np.ndarray]], Sequence[Measurement]]
"""``images -> one Measurement per image``: how :func:`score` scores (the model's detector unless a caller caches)."""


def rules(model: LoadedModel) -> Rules:
    """The verdict rules of ``model``'s calibration now (core.portable: the export bundle applies the same)."""
    return Rules.from_calibration(model.calibration.to_dict())


def min_side(model: LoadedModel) -> int:
    """Smallest image side (px) the model gives a verdict for."""
    return rules(model).min_side


def size_problem(model: LoadedModel, image: np.ndarray) -> str | None:
    """Why ``image`` ``[H, W, 3]`` is too small for a verdict, or None."""
    return rules(model).size_problem(image.shape)


def _detector_measurer(model: LoadedModel) -> Measurer:
    return lambda images: [Measurement.of(p) for p in model.detector.predict(list(images))]


def score(model: LoadedModel, images: Sequence[np.ndarray], measure: Measurer | None = None) -> list[Measurement | None]:
    """Measure ``images`` (uint8 RGB ``[H, W, 3]``) with ``measure`` (the model's detector if None); None for
    the images below the model's minimum side, which are not scored.

    Raises:
        ValueError: ``measure`` answered another number of measurements than it was given images.
    """
    found = rules(model)
    kept = [i for i, image in enumerate(images) if found.size_problem(image.shape) is None]
    measured = list((measure or _detector_measurer(model))([images[i] for i in kept])) if kept else []
    if len(measured) != len(kept):
        raise ValueError(f"expected one measurement per scored image ({len(kept)}), found {len(measured)}")
    by_index = dict(zip(kept, measured, strict=True))
    return [by_index.get(i) for i in range(len(images))]


def judge(model: LoadedModel, shape: tuple[int, ...], measurement: Measurement | None) -> Inspection:
    """What users see for an image of ``shape`` (H, W, ...) measured as ``measurement`` (None: not scored),
    by the model's calibration now."""
    found = rules(model).decide(shape, None if measurement is None else measurement.score,
                                None if measurement is None else measurement.typical_anomaly)
    if found.verdict == NO_VERDICT or measurement is None:
        return Inspection(None, None, 0.0, NO_VERDICT, None, None, found.note)
    familiarity = found.familiarity
    return Inspection(measurement.score, measurement.anomaly_map, measurement.latency_ms, found.verdict,
                      None if familiarity is None else familiarity.familiar,
                      None if familiarity is None else familiarity.value, found.note)


def verdict_of(model: LoadedModel, shape: tuple[int, ...], raw_score: float) -> str:
    """The verdict for an image of ``shape`` (H, W, ...) with ``raw_score`` when its map is not at hand (an
    evaluation row): the size rule and the threshold decide (the guard flags images, it never changes a verdict)."""
    return rules(model).decide(shape, raw_score, None).verdict


def assess_familiarity(model: LoadedModel, shape: tuple[int, ...], prediction: Prediction) -> Familiarity | None:
    """The guard's view of one image (None when the model's calibration has no guard: trained before it existed,
    or fewer than 3 held-out images)."""
    return rules(model).familiarity(prediction.anomaly_map, shape)


def inspect(model: LoadedModel, images: Sequence[np.ndarray], measure: Measurer | None = None) -> list[Inspection]:
    """Score ``images`` (uint8 RGB ``[H, W, 3]``) and judge each: the one call the CLI, the service, the watch
    folder and the dashboard make (the dashboard with its cached ``measure``). Images below the model's minimum
    size are not scored and get NO VERDICT with the reason."""
    return [judge(model, image.shape, found)
            for image, found in zip(images, score(model, images, measure), strict=True)]
