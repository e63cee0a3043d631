"""Unfamiliar-image guard: is an image of the product the model was trained on at all?

An anomaly score only means something for images of the trained product: a photo of another part scores
"very anomalous" and would get a confident DEFECT. A defect, though, is local: most of a defective part still
looks like the training images, while most of another product does not. So the guard reads the model's own
anomaly map: its median ("typical patch anomaly") must stay within a limit fitted on held-out good images
(see :func:`fit_limit`). It costs nothing beyond the prediction itself. An image is also unfamiliar when its
aspect ratio lies well outside the training images' range; an image below the model's minimum side gets no
verdict at all (core.verdict.inspection). The limit, aspect range and minimum side are saved in calibration.json.
The rules that read them live in core/portable.py, which the export bundle carries too.

Measured (benchmarks/RESULTS.md, "Unfamiliar-image guard"): an earlier version compared global ImageNet
descriptors instead; it flagged 6-100% of the defective test images as unfamiliar (all of the demo's) and
cost 20-50 ms per image. The map median flags none of them and still flags every other product.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.portable import ASPECT_MARGIN, MIN_SIDE_FLOOR, Familiarity, assess_map, typical_anomaly
from core.types import Prediction

__all__ = ["ASPECT_MARGIN", "LIMIT_RELATIVE", "LIMIT_SPREAD", "MIN_SIDE_FLOOR", "Familiarity", "aspect_range",
           "assess", "fit_limit", "min_side_for", "typical_anomaly"]

# limit = largest held-out median + max(LIMIT_SPREAD x (largest - median of the held-out medians),
#                                      LIMIT_RELATIVE x |largest|): the relative term covers few held-out images
# (a spread from 3-10 values is unreliable), the spread term maps of any sign (EfficientAD's sit near zero).
LIMIT_SPREAD = 3.0
LIMIT_RELATIVE = 0.2


def fit_limit(holdout: Sequence[Prediction]) -> float | None:
    """Limit on :func:`typical_anomaly` from held-out GOOD images' predictions (see ``LIMIT_SPREAD``). None
    with fewer than 3 held-out images (no guard rather than a guess)."""
    values = np.array([typical_anomaly(p.anomaly_map) for p in holdout], dtype=np.float64)
    if values.size < 3:
        return None
    top = float(values.max())
    margin = max(LIMIT_SPREAD * (top - float(np.median(values))), LIMIT_RELATIVE * abs(top), 1e-6)
    return top + margin


def min_side_for(shapes: Sequence[tuple[int, ...]]) -> int:
    """Smallest image side the model judges: a quarter of the smallest training image's short side."""
    return max(MIN_SIDE_FLOOR, int(round(0.25 * min(min(s[:2]) for s in shapes)))) if shapes else MIN_SIDE_FLOOR


def aspect_range(shapes: Sequence[tuple[int, ...]]) -> tuple[float, float]:
    """(lowest, highest) height / width of the training images."""
    aspects = [s[0] / s[1] for s in shapes]
    return float(min(aspects)), float(max(aspects))


def assess(prediction: Prediction, shape: tuple[int, ...], limit: float,
           aspects: tuple[float, float] | None) -> Familiarity:
    """The guard's view of one image of ``shape`` (H, W, ...) given its ``prediction`` (the rule in
    core.portable, which the export bundle shares)."""
    return assess_map(prediction.anomaly_map, shape, limit, aspects)
