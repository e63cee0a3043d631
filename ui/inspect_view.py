"""Scoring helpers for pages: decode uploads safely, predict through the cache, build overlays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from core.calibration import Calibration, verdict
from core.imageio import ImageLoadError, load_image
from core.overlay import overlay
from ui import cache
from ui.sidebar import Selection

DISPLAY_MAX_SIDE = 1600


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


def display_copy(image: np.ndarray, anomaly_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Downscale very large images (and their maps) for the browser; scoring used the full image."""
    h, w = image.shape[:2]
    factor = DISPLAY_MAX_SIDE / max(h, w)
    if factor >= 1:
        return image, anomaly_map
    size = (max(1, int(w * factor)), max(1, int(h * factor)))
    small = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    small_map = np.asarray(Image.fromarray(anomaly_map.astype(np.float32), mode="F").resize(size, Image.BILINEAR))
    return small, small_map


def score_image(sel: Selection, name: str, image: np.ndarray, calibration: Calibration) -> Scored:
    version = cache.model_version(sel.store_path, sel.category, sel.kind)
    score, amap, latency = cache.predict_one(sel.store_path, sel.category, sel.kind, version, cache.digest(image), image)
    return Scored(name, image, score, amap, latency, verdict(score, calibration))


def render_overlay(scored: Scored, calibration: Calibration, opacity: float, cmap: str, show_contour: bool) -> np.ndarray:
    image, amap = display_copy(scored.image, scored.anomaly_map)
    return overlay(image, amap, calibration, opacity, cmap, show_contour)


__all__ = ["ImageLoadError", "Scored", "decode_upload", "display_copy", "render_overlay", "score_image"]
