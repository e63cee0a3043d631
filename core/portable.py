"""The rules the app and the export bundle share: decoding, calibration checks and the verdict.

This module needs numpy and pillow only and imports nothing from this package: core/line/export.py copies it into
every bundle as ``portable.py`` beside ``runner.py`` (core/line/bundle_runner.py), and core/data/imageio.py,
core/scores/calibration.py, core/scores/familiarity.py and core/verdict/inspection.py import it. So a rule lives here once and the
bundle cannot drift from the app (tests/test_export.py holds both to the same verdicts and scores).

- **Decoding** (:func:`decode`): only PNG, JPEG, BMP and TIFF, judged by the data (Pillow's own detection, not
  the file name); any of them -> uint8 RGB ``[H, W, 3]``: grayscale replicated, 16-bit and float rescaled,
  alpha dropped, EXIF orientation applied. Anything else raises :class:`ImageLoadError` naming the source.
- **Calibration checks** (:func:`check_calibration`): the thresholds and guard values a verdict reads are
  finite numbers, positive where the model's scores are (PatchCore's are distances).
- **Tiles** (:func:`tile_boxes`, :func:`crop_tiles`, :func:`stitch_tiles`): the grid a tiled model cuts an image
  into and how its tiles' maps are stitched, so a tiled model's bundle tiles as the app does.
- **Verdict rules** (:class:`Rules`): below the minimum side NO VERDICT; otherwise DEFECT at or above the image
  threshold, else OK; the unfamiliar-image guard (map median over its limit, or an aspect ratio outside the
  training range) keeps the verdict and flags the image.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# ---------------------------------------------------------------------------------------------------- decoding
# Pillow's format names of the documented formats (MPO: a camera JPEG holding more than one picture; Pillow
# opens it with its JPEG decoder and names it MPO).
ACCEPTED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "TIFF")
_OPENED_AS: frozenset[str] = frozenset({*ACCEPTED_FORMATS, "MPO"})
ACCEPTED_TEXT = "a PNG, JPEG, BMP or TIFF image"
MAX_PIXELS: int = 80_000_000  # 8944 x 8944; larger images are refused (from the header) rather than decoded
_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class ImageLoadError(ValueError):
    """An image could not be decoded. ``source`` names the file or upload, ``reason`` says why."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class ImageTooLarge(ImageLoadError):
    """An image refused for its size: more pixels than the budget (read from the header, nothing decoded) or
    past Pillow's decompression-bomb guard. Callers tell it from other decoding errors by its type."""


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Rescale a numeric array of any depth to uint8 (16-bit by /257, others by their range)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
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
    """Convert a decoded PIL image of any mode to uint8 RGB ``[H, W, 3]`` (EXIF orientation applied)."""
    image = ImageOps.exif_transpose(image)
    if image.mode in _HIGH_DEPTH_MODES:
        gray = to_uint8(np.asarray(image))
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA").convert("RGB")  # alpha dropped, colours kept
    elif image.mode != "RGB":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def detected_format(prefix: bytes) -> str | None:
    """The format Pillow's own detectors (their ``accept`` checks of the first bytes; nothing is parsed) see
    in data starting with ``prefix``, or None."""
    Image.init()
    for name, (_factory, accept) in Image.OPEN.items():
        try:
            if accept is not None and accept(prefix) is True:
                return name
        except Exception:  # a detector that cannot read this prefix: not its format
            continue
    return None


def decode(source: str | Path | bytes, name: str | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode ``source`` (a path or raw bytes) to uint8 RGB ``[H, W, 3]``; only PNG, JPEG, BMP and TIFF.

    The image size is checked from the header, before any pixel is decoded.

    Raises:
        ImageLoadError: missing file, empty data, another format (named), truncated data, more than
            ``max_pixels`` pixels (:class:`ImageTooLarge`, as is an image past Pillow's bomb guard).
    """
    label = name or (str(source) if not isinstance(source, bytes) else "upload")
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageLoadError(label, "expected an image file, found no file at this path")
        if path.stat().st_size == 0:
            raise ImageLoadError(label, "expected image data, found an empty file")
        handle: Path | io.BytesIO = path
    else:
        if len(source) == 0:
            raise ImageLoadError(label, "expected image data, found an empty file")
        handle = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(handle, formats=ACCEPTED_FORMATS) as image:
                if image.format not in _OPENED_AS:
                    raise ImageLoadError(label, f"expected {ACCEPTED_TEXT}, found {image.format}")
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageTooLarge(label, f"expected at most {max_pixels:,} pixels, found {width}x{height}")
                image.load()
                return pil_to_rgb(image)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        found = detected_format(_prefix(handle))
        if found in _OPENED_AS:  # starts as an accepted format, but its header cannot be read to the end
            raise ImageLoadError(label, f"image data is damaged or truncated ({found} data that stops or breaks "
                                        "inside its header)") from None
        what = f"{found} data" if found else "data no image decoder recognises"
        raise ImageLoadError(label, f"expected {ACCEPTED_TEXT}, found {what}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(label, f"image too large to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageLoadError(label, f"image data is damaged or truncated ({exc})") from None


def _prefix(handle: Path | io.BytesIO) -> bytes:
    """The first 16 bytes of the data (what Pillow's detectors look at)."""
    if isinstance(handle, Path):
        with handle.open("rb") as file:
            return file.read(16)
    return handle.getvalue()[:16]


def resize_map(anomaly_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize a map ``[h, w]`` to ``shape`` (H, W) as torch's ``interpolate(mode="bilinear",
    align_corners=False)`` does (no antialiasing), so the bundle's maps equal the app's; returns float32."""
    amap = np.asarray(anomaly_map, dtype=np.float32)
    if amap.shape == tuple(shape):
        return amap.copy()
    rows = _interpolation_matrix(amap.shape[0], int(shape[0]))
    cols = _interpolation_matrix(amap.shape[1], int(shape[1]))
    return (rows @ amap.astype(np.float64) @ cols.T).astype(np.float32)


def _interpolation_matrix(size_in: int, size_out: int) -> np.ndarray:
    """``[size_out, size_in]`` weights of 1-D linear interpolation with half-pixel centres, edges clamped."""
    scale = np.float32(size_in) / np.float32(size_out)
    src = np.maximum((np.arange(size_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0)
    low = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    high = np.minimum(low + 1, size_in - 1)
    frac = (src - low).astype(np.float64)
    out = np.zeros((size_out, size_in), dtype=np.float64)
    idx = np.arange(size_out)
    np.add.at(out, (idx, low), 1.0 - frac)
    np.add.at(out, (idx, high), frac)
    return out


# ------------------------------------------------------------------------------------------------------- tiles
# Tiled models (PatchCore ``input_mode="tiles"``) cut each image into overlapping tiles and stitch the tiles' maps;
# the app (core/models/tiling.py) and the bundle (bundle_runner.py) cut and stitch with these same functions.


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Tile start offsets along one axis of ``length`` pixels: stride ``int(tile * (1 - overlap))``, the last
    tile shifted back to end at the border (one tile when ``length <= tile``)."""
    if tile < 1 or not 0.0 <= overlap < 1.0:
        raise ValueError(f"expected a tile of at least 1 px and an overlap in [0, 1), found {tile} and {overlap}")
    if length <= tile:
        return [0]
    stride = max(1, int(tile * (1.0 - overlap)))
    count = math.ceil((length - tile) / stride) + 1
    return sorted({min(i * stride, length - tile) for i in range(count)})


def tile_boxes(shape: tuple[int, ...], tile: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of each tile of an image of ``shape`` (H, W, ...), row by row; every pixel is
    covered, no tile is padded (a side shorter than a tile is one tile of that side)."""
    h, w = shape[0], shape[1]
    return [(y, x, min(tile, h), min(tile, w))
            for y in tile_starts(h, tile, overlap) for x in tile_starts(w, tile, overlap)]


def crop_tiles(image: np.ndarray, tile: int, overlap: float) -> list[np.ndarray]:
    """The tiles of ``image`` ``[H, W, 3]`` (uint8) as ``[tile, tile, 3]`` arrays, in :func:`tile_boxes` order; a
    box cut short by a small image is resized up to ``tile`` (bilinear)."""
    out = []
    for y, x, h, w in tile_boxes(image.shape, tile, overlap):
        crop = image[y:y + h, x:x + w]
        if (h, w) != (tile, tile):
            crop = np.asarray(Image.fromarray(crop).resize((tile, tile), Image.Resampling.BILINEAR))
        out.append(np.ascontiguousarray(crop))
    return out


def stitch_tiles(shape: tuple[int, ...], boxes: list[tuple[int, int, int, int]], maps: np.ndarray) -> np.ndarray:
    """One map ``[H, W]`` (float32) for an image of ``shape`` from its tiles' maps ``[T, t, t]`` (one per box of
    :func:`tile_boxes`): each resized to its box (:func:`resize_map`) and averaged where boxes overlap."""
    if len(boxes) != len(maps):
        raise ValueError(f"expected one map per tile ({len(boxes)}), found {len(maps)}")
    total = np.zeros(shape[:2], np.float32)
    count = np.zeros(shape[:2], np.float32)
    for (y, x, h, w), amap in zip(boxes, maps, strict=True):
        total[y:y + h, x:x + w] += resize_map(amap, (h, w))
        count[y:y + h, x:x + w] += 1.0
    return total / np.maximum(count, 1.0)


def scaled_shape(shape: tuple[int, ...], scale: float) -> tuple[int, int]:
    """(H, W) of an image of ``shape`` resized by ``scale`` (sides rounded, at least 1 px), as :func:`scale_image`
    resizes it."""
    if scale == 1.0:
        return int(shape[0]), int(shape[1])
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def scale_image(image: np.ndarray, scale: float) -> np.ndarray:
    """``image`` ``[H, W, 3]`` resized by ``scale`` (bilinear, sides rounded, at least 1 px); 1.0 returns it."""
    if scale == 1.0:
        return image
    h, w = scaled_shape(image.shape, scale)
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))


# ------------------------------------------------------------------------------------------- calibration checks
THRESHOLDS: tuple[str, ...] = ("image_threshold", "pixel_threshold")
_POSITIVE_WHEN_SCORES_ARE = THRESHOLDS + ("default_image_threshold", "default_pixel_threshold")
_OPTIONAL_NUMBERS: tuple[str, ...] = (
    "default_image_threshold", "default_pixel_threshold", "familiarity_limit", "good_score_mean", "good_score_std",
    "good_score_max", "good_map_max_mean", "good_map_max_std", "review_below", "review_above")


def check_calibration(data: Mapping[str, Any], positive: bool = False) -> None:
    """Refuse a calibration a verdict cannot be made from, naming the field and the value found.

    Thresholds must be finite numbers (and above 0 when ``positive``: the model's scores are 0 or more, so a
    threshold of 0 or less would flag every image); the optional guard values finite when set, the aspect
    range positive and ordered, the minimum side a positive whole number.

    Raises:
        ValueError: the first field that breaks a rule.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"expected a JSON object of calibration fields, found {type(data).__name__}")
    missing = [k for k in THRESHOLDS if k not in data]
    if missing:
        raise ValueError(f"expected calibration keys {missing}, found {sorted(data)}")
    for key in THRESHOLDS + _OPTIONAL_NUMBERS:
        value = data.get(key)
        if value is None and key not in THRESHOLDS:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"expected a finite number for {key}, found {value!r}")
        if positive and key in _POSITIVE_WHEN_SCORES_ARE and value <= 0:
            raise ValueError(f"expected a number above 0 for {key} (this model's scores are 0 or more, so "
                             f"{value!r} would flag every image), found {value!r}")
    for key in ("aspect_min", "aspect_max"):
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value <= 0):
            raise ValueError(f"expected a positive finite number for {key}, found {value!r}")
    lo, hi = data.get("aspect_min"), data.get("aspect_max")
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"expected aspect_min <= aspect_max, found {lo!r} > {hi!r}")
    side = data.get("min_side")
    if side is not None and (not isinstance(side, int) or isinstance(side, bool) or side < 1):
        raise ValueError(f"expected a whole number of pixels of at least 1 for min_side, found {side!r}")
    below, above = data.get("review_below"), data.get("review_above")
    if (below is None) != (above is None):
        raise ValueError(f"expected both review_below and review_above, or neither, found {below!r} and {above!r}")
    for key, value in (("review_below", below), ("review_above", above)):
        if value is not None and value < 0:
            raise ValueError(f"expected a review band width of 0 or more for {key}, found {value!r}")


# ------------------------------------------------------------------------------------------------ verdict rules
OK, REVIEW, DEFECT, NO_VERDICT = "OK", "REVIEW", "DEFECT", "NO VERDICT"
VERDICTS: tuple[str, ...] = (OK, REVIEW, DEFECT, NO_VERDICT)
MIN_SIDE_FLOOR = 16  # px: below this no image carries enough to judge
ASPECT_MARGIN = 1.25  # aspect ratios up to this factor outside the training range are still familiar


def verdict(score: float, threshold: float, review: tuple[float, float] | None = None) -> str:
    """DEFECT at or above the image threshold, else OK; with a review band ``(low, high)`` around the threshold,
    REVIEW for ``low <= score < high`` (a person decides), OK below it and DEFECT at or above it."""
    if review is not None:
        return DEFECT if score >= review[1] else REVIEW if score >= review[0] else OK
    return DEFECT if score >= threshold else OK


def review_band(threshold: float, below: float | None, above: float | None) -> tuple[float, float] | None:
    """The review band ``[threshold - below, threshold + above)`` of a calibration (its widths are saved, so the
    band moves with the threshold, also when ``calibration.json`` is edited by hand), or None when it has none."""
    if below is None or above is None:
        return None
    return threshold - float(below), threshold + float(above)


def review_side(score: float, threshold: float) -> str:
    """Which side of the plain threshold a REVIEW part is on, in words for the person who decides it."""
    return "above the threshold" if score >= threshold else "below the threshold"


def typical_anomaly(anomaly_map: np.ndarray) -> float:
    """The statistic the unfamiliar-image guard watches: the median of an anomaly map ``[H, W]``."""
    return float(np.median(anomaly_map))


@dataclass(frozen=True)
class Familiarity:
    """Whether one image looks like the training images: ``value`` (map median) vs ``limit``."""

    familiar: bool
    value: float
    limit: float
    reason: str


def assess_map(anomaly_map: np.ndarray, shape: tuple[int, ...], limit: float,
               aspects: tuple[float, float] | None) -> Familiarity:
    """The guard's view of one image of ``shape`` (H, W, ...) given its anomaly map at that size."""
    return assess_value(typical_anomaly(anomaly_map), shape, limit, aspects)


def assess_value(value: float, shape: tuple[int, ...], limit: float,
                 aspects: tuple[float, float] | None) -> Familiarity:
    """The guard's view of one image of ``shape`` (H, W, ...) given its :func:`typical_anomaly` ``value``."""
    reasons = []
    if value > limit:
        reasons.append(f"most of it is unlike the training images (typical anomaly {value:.3g} > limit {limit:.3g})")
    if aspects is not None:
        aspect = shape[0] / shape[1]
        if not aspects[0] / ASPECT_MARGIN <= aspect <= aspects[1] * ASPECT_MARGIN:
            reasons.append(f"aspect ratio {aspect:.2f} (h/w) outside the training range {aspects[0]:.2f}-{aspects[1]:.2f}")
    return Familiarity(not reasons, value, float(limit), "; ".join(reasons))


@dataclass(frozen=True)
class Judgement:
    """What the rules say about one image: verdict (OK / DEFECT / NO VERDICT), the guard's view (None: no
    guard, or no verdict) and a note for people (why no verdict, or why unfamiliar; empty otherwise)."""

    verdict: str
    familiarity: Familiarity | None
    note: str


@dataclass(frozen=True)
class Rules:
    """The verdict rules of one model, read from its calibration: the image threshold, the smallest side it
    judges, the guard's limit (None: no guard), the training images' aspect range (None: not checked) and the
    review band around the threshold (None: two verdicts only, as calibrations saved before the band)."""

    image_threshold: float
    min_side: int
    familiarity_limit: float | None
    aspects: tuple[float, float] | None
    review: tuple[float, float] | None = None

    @classmethod
    def from_calibration(cls, calibration: Mapping[str, Any]) -> Rules:
        """The rules of a calibration's fields (``calibration.json``, or ``Calibration.to_dict()``)."""
        lo, hi = calibration.get("aspect_min"), calibration.get("aspect_max")
        limit = calibration.get("familiarity_limit")
        threshold = float(calibration["image_threshold"])
        return cls(threshold, int(calibration.get("min_side") or MIN_SIDE_FLOOR),
                   None if limit is None else float(limit),
                   (float(lo), float(hi)) if lo is not None and hi is not None else None,
                   review_band(threshold, calibration.get("review_below"), calibration.get("review_above")))

    def size_problem(self, shape: tuple[int, ...]) -> str | None:
        """Why an image of ``shape`` (H, W, ...) is too small for a verdict, or None."""
        if min(shape[:2]) < self.min_side:
            return (f"too small for a verdict: {shape[0]}x{shape[1]} px, this model needs at least "
                    f"{self.min_side} px on the short side")
        return None

    def familiarity(self, anomaly_map: np.ndarray, shape: tuple[int, ...]) -> Familiarity | None:
        """The guard's view of one image (None when the calibration has no guard)."""
        if self.familiarity_limit is None:
            return None
        return assess_map(anomaly_map, shape, self.familiarity_limit, self.aspects)

    def judge(self, shape: tuple[int, ...], score: float | None, anomaly_map: np.ndarray | None) -> Judgement:
        """The verdict for an image of ``shape`` with raw ``score`` and map at its size (None: not scored)."""
        if anomaly_map is None:
            return self.decide(shape, None, None)
        return self.decide(shape, score, typical_anomaly(anomaly_map))

    def decide(self, shape: tuple[int, ...], score: float | None, typical: float | None) -> Judgement:
        """The verdict for an image of ``shape`` with raw ``score`` (None: not scored) and the guard's statistic
        ``typical`` (:func:`typical_anomaly` of its map at its size; None: not known, so no familiarity is
        given: the guard flags an image, it never changes a verdict)."""
        problem = self.size_problem(shape)
        if problem is not None or score is None:
            return Judgement(NO_VERDICT, None, problem or "not scored")
        familiarity = (None if self.familiarity_limit is None or typical is None
                       else assess_value(typical, shape, self.familiarity_limit, self.aspects))
        notes = [] if familiarity is None or familiarity.familiar else [f"unfamiliar image: {familiarity.reason}"]
        found = verdict(score, self.image_threshold, self.review)
        if found == REVIEW:
            notes.insert(0, f"in the review band, {review_side(score, self.image_threshold)}: a person decides")
        return Judgement(found, familiarity, "; ".join(notes))
