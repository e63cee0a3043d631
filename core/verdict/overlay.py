"""Heatmap overlays: colour an anomaly map, blend it over the image, outline the predicted defect."""

from __future__ import annotations

import io

import numpy as np
from matplotlib import colormaps
from PIL import Image
from scipy import ndimage

from core.scores.calibration import Calibration

COLORMAPS: tuple[str, ...] = ("jet", "inferno", "viridis", "magma", "turbo")


def display_range(calibration: Calibration) -> tuple[float, float]:
    """Map values shown from cold to hot: the pixel threshold sits at two thirds of the colour scale."""
    thr = calibration.pixel_threshold
    span = max(thr - calibration.good_map_max_mean, 0.1 * abs(thr), 1e-6)
    return thr - 2.0 * span, thr + span


def defect_mask(anomaly_map: np.ndarray, pixel_threshold: float) -> np.ndarray:
    """Pixels at or above the threshold: bool ``[H, W]``."""
    return anomaly_map >= pixel_threshold


def contour(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """Outline of ``mask`` (bool ``[H, W]``), ``width`` pixels wide, inside the region."""
    if not mask.any():
        return np.zeros_like(mask)
    eroded = ndimage.binary_erosion(mask, iterations=width, border_value=0)
    return mask & ~eroded


def colorize(anomaly_map: np.ndarray, vmin: float, vmax: float, cmap: str = "jet") -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` of ``anomaly_map`` scaled from ``vmin`` to ``vmax``."""
    if cmap not in COLORMAPS:
        raise ValueError(f"expected a colormap in {COLORMAPS}, found {cmap!r}")
    scaled = np.clip((anomaly_map - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    return (colormaps[cmap](scaled)[..., :3] * 255).astype(np.uint8)


def overlay(image: np.ndarray, anomaly_map: np.ndarray, calibration: Calibration, opacity: float = 0.5,
            cmap: str = "jet", show_contour: bool = True) -> np.ndarray:
    """Blend the coloured map over ``image`` (uint8 RGB ``[H, W, 3]``, same H, W as the map).

    Cold areas stay mostly transparent (alpha grows with the map value); the defect outline at the
    pixel threshold is drawn in white.
    """
    if image.shape[:2] != anomaly_map.shape:
        raise ValueError(f"expected a map of the image's size {image.shape[:2]}, found {anomaly_map.shape}")
    vmin, vmax = display_range(calibration)
    heat = colorize(anomaly_map, vmin, vmax, cmap).astype(np.float32)
    weight = np.clip((anomaly_map - vmin) / max(vmax - vmin, 1e-12), 0.25, 1.0)[..., None] * opacity
    out = image.astype(np.float32) * (1 - weight) + heat * weight
    if show_contour:
        out[contour(defect_mask(anomaly_map, calibration.pixel_threshold))] = (255, 255, 255)
    return out.clip(0, 255).astype(np.uint8)


def bounded(image: np.ndarray, anomaly_map: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (uint8 RGB ``[H, W, 3]``) and its map ``[H, W]`` scaled down together so that the long side is
    at most ``max_side`` px (bilinear; the map stays float32); returned as they are when already that small.

    Raises:
        ValueError: ``max_side`` below 1, or a map of another size than the image.
    """
    if max_side < 1:
        raise ValueError(f"expected a maximum side of at least 1 px, found {max_side}")
    if image.shape[:2] != anomaly_map.shape:
        raise ValueError(f"expected a map of the image's size {image.shape[:2]}, found {anomaly_map.shape}")
    height, width = anomaly_map.shape
    if max(height, width) <= max_side:
        return image, anomaly_map
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))
    small_map = np.asarray(Image.fromarray(anomaly_map.astype(np.float32, copy=False))
                           .resize(size, Image.Resampling.BILINEAR))
    return small, small_map


def png_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8 ``[H, W]`` or ``[H, W, 3]``) encoded as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def overlay_png(image: np.ndarray, anomaly_map: np.ndarray, calibration: Calibration,
                max_side: int | None = None) -> bytes:
    """The overlay as PNG; with ``max_side``, drawn on the image and map scaled down to that long side first
    (so a huge image costs a bounded amount of memory and time here)."""
    if max_side is not None:
        image, anomaly_map = bounded(image, anomaly_map, max_side)
    return png_bytes(overlay(image, anomaly_map, calibration))
