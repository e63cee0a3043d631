"""Recalibrate from the line: fit a model's thresholds again from line images a person confirmed good.

The answer to a drift alarm (core.scores.drift) when the line's good parts now score higher than the training
images did (new lighting, a new batch, a camera moved) and the parts are still good: the weights stay, the
thresholds and good-score statistics come from the confirmed images, and the result is a new version with the
reason :data:`REASON` (undo = make the previous version current). The unfamiliar-image guard and the size rules
keep the training images' values: they describe what the model was trained on, which has not changed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

from core.scores.calibration import DEFAULT_FALSE_ALARM, calibrate
from core.store.lifecycle import LoadedModel, save_calibration
from core.store.model_store import ModelRef
from core.types import Prediction

REASON = "recalibrated from line"
MIN_CONFIRMED = 10  # fewer confirmed images than this give thresholds too noisy to promise anything

logger = logging.getLogger(__name__)


def recalibrate_from_line(model: LoadedModel, confirmed_good: Sequence[Prediction]) -> ModelRef:
    """Save a new version of ``model`` whose calibration comes from ``confirmed_good``: raw predictions (score and
    map) of line images a person confirmed good, judged by ``model``'s weights; the promised false-alarm rate is
    the model's own. Returns the new version (now current).

    Raises:
        ValueError: fewer than :data:`MIN_CONFIRMED` images, or thresholds no verdict can be made from.
    """
    if len(confirmed_good) < MIN_CONFIRMED:
        raise ValueError(f"expected at least {MIN_CONFIRMED} line images confirmed good to recalibrate from, "
                         f"found {len(confirmed_good)}")
    old = model.calibration
    promise = old.false_alarm_target or DEFAULT_FALSE_ALARM
    fresh = calibrate(list(confirmed_good), f"{len(confirmed_good)} line images confirmed good ({REASON})", promise)
    kept = replace(fresh, familiarity_limit=old.familiarity_limit, aspect_min=old.aspect_min,
                   aspect_max=old.aspect_max, min_side=old.min_side)
    ref = save_calibration(model, kept, reason=REASON)
    logger.info("%s/%s v%d %s from %d confirmed images: image threshold %.4g -> %.4g", model.category, model.kind,
                ref.version, REASON, len(confirmed_good), old.image_threshold, kept.image_threshold)
    return ref
