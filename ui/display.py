"""Display-size copies of very large images and maps (scoring always uses the full image)."""

from __future__ import annotations

import numpy as np
from PIL import Image

DISPLAY_MAX_SIDE = 1600


def display_size(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """(width, height) to show an image of ``shape`` at, or None if it is small enough already."""
    h, w = shape[:2]
    factor = DISPLAY_MAX_SIDE / max(h, w)
    if factor >= 1:
        return None
    return max(1, int(w * factor)), max(1, int(h * factor))


def display_image(image: np.ndarray) -> np.ndarray:
    size = display_size(image.shape)
    return image if size is None else np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def display_map(anomaly_map: np.ndarray) -> np.ndarray:
    size = display_size(anomaly_map.shape)
    if size is None:
        return anomaly_map
    return np.asarray(Image.fromarray(anomaly_map.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR))
