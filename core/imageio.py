"""Image decoding that never surprises: any supported file or upload -> uint8 RGB ``[H, W, 3]``.

Grayscale is replicated to three channels, 16-bit and float images are rescaled to 8 bits,
alpha is dropped, EXIF orientation is applied. Anything unreadable raises :class:`ImageLoadError`
naming the source and the reason, so callers can report it and carry on with the other images.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SUPPORTED_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MAX_PIXELS: int = 80_000_000  # 8944 x 8944; larger uploads are refused rather than exhausting memory


class ImageLoadError(ValueError):
    """An image could not be decoded. ``source`` names the file or upload."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Rescale a numeric array of any depth to uint8 (16-bit by /257, others by their range)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype in (np.uint16, np.int32, np.uint32, np.int64) or np.issubdtype(array.dtype, np.integer):
        top = float(array.max()) if array.size else 0.0
        scale = 65535.0 if top > 255 else 255.0
        return np.clip(np.round(array.astype(np.float64) * (255.0 / scale)), 0, 255).astype(np.uint8)
    values = array.astype(np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(array.shape, dtype=np.uint8)
    lo, hi = float(finite.min()), float(finite.max())
    if lo >= 0.0 and hi <= 1.0:
        lo, hi = 0.0, 1.0
    span = hi - lo if hi > lo else 1.0
    return np.clip(np.round((np.nan_to_num(values, nan=lo) - lo) / span * 255.0), 0, 255).astype(np.uint8)


def pil_to_rgb(image: Image.Image) -> np.ndarray:
    """Convert a decoded PIL image of any mode to uint8 RGB ``[H, W, 3]``."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        gray = _to_uint8(np.asarray(image))
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA").convert("RGB")  # alpha dropped, colours kept
    elif image.mode != "RGB":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def load_image(source: str | Path | bytes, name: str | None = None) -> np.ndarray:
    """Decode ``source`` (a path or raw bytes) to uint8 RGB ``[H, W, 3]``.

    Raises:
        ImageLoadError: missing file, not an image, truncated data, or too many pixels.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "upload")
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageLoadError(label, "expected an image file, found no file at this path")
        data: bytes | Path = path
    else:
        data = source
        if len(data) == 0:
            raise ImageLoadError(label, "expected image data, found an empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            handle = io.BytesIO(data) if isinstance(data, bytes) else data
            with Image.open(handle) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise ImageLoadError(label, f"expected at most {MAX_PIXELS:,} pixels, found {width}x{height}")
                image.load()
                return pil_to_rgb(image)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(label, "expected a PNG, JPEG, BMP or TIFF image, found data no image decoder recognises") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(label, f"image too large to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(label, f"image data is damaged or truncated ({exc})") from None


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
    """Write a uint8 image (``[H, W]`` or ``[H, W, 3]``) as PNG through a temp file and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            Image.fromarray(array).save(handle, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
