"""Scoring helpers for pages: decode uploads safely, predict through the cache, build overlays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.calibration import Calibration, verdict
from core.imageio import ImageLoadError, load_image
from core.overlay import overlay
from ui import cache
from ui.display import display_image
from ui.sidebar import Selection


@dataclass(frozen=True)
class Scored:
    name: str
    image: np.ndarray
    score: float
    anomaly_map: np.ndarray
    latency_ms: float
    verdict: str


def decode_upload(name: str, data: bytes) -> np.ndarray:
    """uint8 RGB image of an upload; raises ImageLoadError with a readable reason."""
    return load_image(data, name=name)


def score_image(sel: Selection, name: str, image: np.ndarray, calibration: Calibration) -> Scored:
    version = cache.model_version(sel.store_path, sel.category, sel.kind)
    score, amap, latency = cache.predict_one(sel.store_path, sel.category, sel.kind, version, sel.inference,
                                           cache.digest(image), image)
    return Scored(name, image, score, amap, latency, verdict(score, calibration))


def render_overlay(scored: Scored, calibration: Calibration, opacity: float, cmap: str, show_contour: bool) -> np.ndarray:
    return overlay(display_image(scored.image), scored.anomaly_map, calibration, opacity, cmap, show_contour)


__all__ = ["ImageLoadError", "Scored", "decode_upload", "display_image", "render_overlay", "score_image"]
