"""Image decoding that never surprises: any supported file or upload -> uint8 RGB ``[H, W, 3]``.

Only PNG, JPEG, BMP and TIFF are decoded, judged by the data rather than the file name (GIF, WebP, ICO and
the rest are refused, naming what was found). Grayscale is replicated to three channels, 16-bit and float
images are rescaled to 8 bits, alpha is dropped, EXIF orientation is applied. Anything unreadable raises
:class:`ImageLoadError` naming the source and the reason, so callers can report it and carry on with the other
images. The decoding itself lives in core/portable.py, which the export bundle carries too, so the bundle's
runner decodes exactly as the app does.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from core.files import atomic_write_bytes
from core.portable import (
    ACCEPTED_FORMATS,
    MAX_PIXELS,
    ImageLoadError,
    ImageTooLarge,
    decode,
    pil_to_rgb,
)

__all__ = [
    "ACCEPTED_FORMATS",
    "MAX_PIXELS",
    "SUPPORTED_SUFFIXES",
    "ImageLoadError",
    "ImageTooLarge",
    "header_shape",
    "load_image",
    "load_many",
    "load_mask",
    "median_shape",
    "pil_to_rgb",
    "save_png_atomic",
]

SUPPORTED_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
EXIF_ORIENTATION = 0x0112


def header_shape(path: str | Path) -> tuple[int, int] | None:
    """(H, W) of the image at ``path`` as :func:`load_image` decodes it (EXIF orientation applied), from its header
    alone (no pixel decoded); None when it cannot be read."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            turned = image.getexif().get(EXIF_ORIENTATION) in (5, 6, 7, 8)  # shown rotated by 90 degrees
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return None
    return (width, height) if turned else (height, width)


def median_shape(paths: Sequence[str | Path], sample: int = 32) -> tuple[int, int] | None:
    """The median (H, W) of the images at ``paths`` by their headers (at most ``sample`` of them, evenly spread);
    None when none can be read. What the training estimate needs to know of the images' size."""
    picked = [paths[int(i)] for i in np.unique(np.linspace(0, len(paths) - 1, min(len(paths), sample)).round())] \
        if len(paths) else []
    shapes = [s for s in (header_shape(p) for p in picked) if s is not None]
    if not shapes:
        return None
    return int(np.median([s[0] for s in shapes])), int(np.median([s[1] for s in shapes]))


def load_image(source: str | Path | bytes, name: str | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode ``source`` (a path or raw bytes) to uint8 RGB ``[H, W, 3]`` (see core.portable.decode).

    Raises:
        ImageLoadError: missing file, not a PNG/JPEG/BMP/TIFF image, truncated data, or more than
            ``max_pixels`` pixels (checked from the header, before decoding: :class:`ImageTooLarge`).
    """
    return decode(source, name, max_pixels)


def load_many(paths: Sequence[str | Path]) -> tuple[list[int], list[np.ndarray], list[str]]:
    """Decode ``paths`` and never fail: (indices of the readable ones, their images, one message per unreadable)."""
    kept: list[int] = []
    images: list[np.ndarray] = []
    problems: list[str] = []
    for i, path in enumerate(paths):
        try:
            images.append(load_image(path))
            kept.append(i)
        except ImageLoadError as exc:
            problems.append(str(exc))
    return kept, images, problems


def load_mask(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """Binary ground-truth mask ``[H, W]`` (bool), resized with nearest neighbour to ``shape`` if needed."""
    rgb = load_image(path)
    mask = rgb.max(axis=2) > 127
    if mask.shape != shape:
        resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.Resampling.NEAREST)
        mask = np.asarray(resized) > 127
    return mask


def save_png_atomic(array: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 image (``[H, W]`` or ``[H, W, 3]``) as PNG, atomically and durably
    (:func:`core.files.atomic_write_bytes`: temp file, fsync, rename, fsync of the folder)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return atomic_write_bytes(Path(path), buffer.getvalue())
