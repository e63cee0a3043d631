"""Hand-drawn ground truth: save an image and its defect mask into the MVTec layout."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from core.data.dataset import GOOD
from core.data.imageio import save_png_atomic

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$")


CANVAS_MIN = 512  # long side of the drawing canvas, in screen pixels: small images are scaled up to this...
CANVAS_MAX = 640  # ...and large ones down to this


def canvas_size(height: int, width: int) -> tuple[int, int]:
    """``(height, width)`` of the drawing canvas for an image: its long side scaled into
    ``[CANVAS_MIN, CANVAS_MAX]`` (a 160 px part gets a 512 px canvas to draw on), aspect ratio kept."""
    if height < 1 or width < 1:
        raise ValueError(f"expected an image of at least 1 x 1 pixels, found {height} x {width}")
    long_side = max(height, width)
    scale = min(CANVAS_MAX / long_side, max(1.0, CANVAS_MIN / long_side))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _nearest(n_out: int, n_in: int) -> np.ndarray:
    """For each of ``n_out`` output pixels, the input pixel whose centre is nearest (centre-aligned grids)."""
    return np.minimum(((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64), n_in - 1)


def canvas_background(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The image as the canvas shows it at ``size`` ``(height, width)``: scaled up by nearest neighbour (each
    image pixel a crisp block, so what is painted maps back to whole pixels), scaled down bilinearly."""
    h, w = image.shape[:2]
    ch, cw = size
    if ch >= h and cw >= w:
        return image[_nearest(ch, h)][:, _nearest(cw, w)]
    return np.asarray(Image.fromarray(image).resize((cw, ch), Image.Resampling.BILINEAR))


def mask_from_canvas(rgba: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bool mask ``[H, W]`` at the image ``shape`` from a canvas drawing ``[h, w, 4]`` (painted where alpha > 0).

    Nearest neighbour: each image pixel takes the canvas pixel at its centre, the inverse of
    :func:`canvas_background`'s upscale (painting the block an image pixel is shown as marks exactly that pixel).
    """
    if rgba.ndim != 3 or rgba.shape[2] != 4:
        raise ValueError(f"expected an RGBA canvas [h, w, 4], found shape {rgba.shape}")
    painted = rgba[:, :, 3] > 0
    ch, cw = painted.shape
    return painted[_nearest(shape[0], ch)][:, _nearest(shape[1], cw)]


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
