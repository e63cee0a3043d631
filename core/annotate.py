"""Hand-drawn ground truth: save an image and its defect mask into the MVTec layout."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from core.dataset import GOOD
from core.imageio import save_png_atomic

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$")


def mask_from_canvas(rgba: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bool mask ``[H, W]`` at the image ``shape`` from a canvas drawing ``[h, w, 4]`` (painted where alpha > 0)."""
    if rgba.ndim != 3 or rgba.shape[2] != 4:
        raise ValueError(f"expected an RGBA canvas [h, w, 4], found shape {rgba.shape}")
    painted = (rgba[:, :, 3] > 0).astype(np.uint8) * 255
    if painted.shape != shape:
        painted = np.asarray(Image.fromarray(painted).resize((shape[1], shape[0]), Image.Resampling.NEAREST))
    return painted > 127


def save_annotation(root: str | Path, category: str, defect: str, stem: str, image: np.ndarray,
                    mask: np.ndarray) -> tuple[Path, Path]:
    """Write ``test/<defect>/<stem>.png`` and ``ground_truth/<defect>/<stem>_mask.png`` under ``root/category``.

    Raises:
        ValueError: bad names, an empty mask, or a mask whose size differs from the image.
    """
    for label, value in (("defect type", defect), ("image name", stem), ("category", category)):
        if not _NAME.match(value):
            raise ValueError(f"expected a {label} of letters, digits, '_' or '-', found {value!r}")
    if defect == GOOD:
        raise ValueError("expected a defect type other than 'good' for an annotated defect")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"expected a mask of the image's size {image.shape[:2]}, found {mask.shape}")
    if not mask.any():
        raise ValueError("expected a drawn defect region, found an empty mask")
    base = Path(root) / category
    image_path = save_png_atomic(image, base / "test" / defect / f"{stem}.png")
    mask_path = save_png_atomic(mask.astype(np.uint8) * 255, base / "ground_truth" / defect / f"{stem}_mask.png")
    return image_path, mask_path
