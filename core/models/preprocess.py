"""Image -> model input tensor, and model-size maps -> original-size maps."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from core.types import Prediction

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """How images become tensors, scaled to [0, 1] then (if ``normalize``) ImageNet-normalised.

    ``mode="squash"`` resizes every image to ``height x width`` (aspect ratio lost). ``mode="native"``
    keeps each image's aspect ratio and pixel scale, multiplying both sides by ``scale`` (rounded to a
    multiple of 8, and capped so the long side stays within ``max_side``); ``height``/``width`` are then unused. ``normalize=False`` leaves values in [0, 1]
    (EfficientAD normalises inside its networks).
    """

    height: int
    width: int
    normalize: bool = True
    mode: str = "squash"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    scale: float = 1.0
    max_side: int = 1024

    def __post_init__(self) -> None:
        if self.mode not in ("squash", "native"):
            raise ValueError(f"expected input mode 'squash' or 'native', found {self.mode!r}")

    def target_size(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """(height, width) an image of ``shape`` (H, W, ...) is resized to."""
        if self.mode == "squash":
            return self.height, self.width
        scale = min(self.scale, self.max_side / max(shape[0], shape[1]))
        return (max(32, int(round(shape[0] * scale / 8)) * 8), max(32, int(round(shape[1] * scale / 8)) * 8))


def batches(images: Sequence[np.ndarray], spec: InputSpec, batch_size: int) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield (indices, tensor ``[B, 3, h, w]``) over ``images``; native mode groups images of equal target size."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(spec.target_size(image.shape), []).append(i)
    for idx in groups.values():
        for start in range(0, len(idx), batch_size):
            chunk = idx[start:start + batch_size]
            yield chunk, to_tensor([images[i] for i in chunk], spec)


@lru_cache(maxsize=16)
def _value_table(normalize: bool, mean: tuple[float, float, float], std: tuple[float, float, float]) -> np.ndarray:
    """``[3, 256]`` float32: the input value of each uint8 level per channel, computed by the very torch operations
    :func:`to_tensor` used to apply to every pixel (so the table's values are those, bit for bit)."""
    levels = torch.arange(256, dtype=torch.uint8).view(1, 1, 1, 256).expand(1, 3, 1, 256)
    table = levels.float().div_(255.0)
    if normalize:
        table = (table - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    out = table.reshape(3, 256).numpy().copy()
    out.flags.writeable = False  # shared by every call (cached)
    return out


def to_array(images: Sequence[np.ndarray], spec: InputSpec) -> np.ndarray:
    """Stack uint8 RGB images ``[H_i, W_i, 3]`` into a float32 array ``[B, 3, h, w]`` (one target size): resized
    (PIL bilinear) where needed, each level looked up in a per-channel table (:func:`_value_table`). numpy only: no
    torch parallel region right before a graph runtime's call (torch's idle OpenMP threads spinning beside
    OpenVINO's made the backbone ~3 ms slower at batch 1, benchmarks/profile_patchcore_latency.py)."""
    if not images:
        raise ValueError("expected at least one image, found none")
    height, width = spec.target_size(images[0].shape)
    batch = np.empty((len(images), height, width, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected uint8 RGB [H, W, 3], found {image.dtype} {image.shape}")
        if spec.target_size(image.shape) != (height, width):
            raise ValueError(f"expected images of one target size {(height, width)}, found {spec.target_size(image.shape)}")
        if image.shape[:2] == (height, width):
            batch[i] = image
        else:
            batch[i] = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))
    table = _value_table(spec.normalize, tuple(spec.mean), tuple(spec.std))
    out = np.empty((len(images), 3, height, width), dtype=np.float32)
    for c in range(3):
        np.take(table[c], batch[..., c], out=out[:, c], mode="clip")  # levels are 0-255: nothing to clip
    return out


def to_tensor(images: Sequence[np.ndarray], spec: InputSpec) -> torch.Tensor:
    """Stack uint8 RGB images ``[H_i, W_i, 3]`` into a float tensor ``[B, 3, h, w]`` (one target size): values
    ``level / 255``, then (``spec.normalize``) ``(v - mean) / std`` per channel (:func:`to_array`)."""
    return torch.from_numpy(to_array(images, spec))


def resize_map(anomaly_map: torch.Tensor | np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize one map ``[h, w]`` to the original image ``shape`` (H, W); returns float32."""
    tensor = torch.as_tensor(anomaly_map, dtype=torch.float32)
    if tuple(tensor.shape) == tuple(shape):
        return tensor.numpy().copy()
    out = F.interpolate(tensor[None, None], size=shape, mode="bilinear", align_corners=False)
    return out[0, 0].numpy()


def predict_in_batches(forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                       images: Sequence[np.ndarray], spec: InputSpec, batch_size: int) -> list[Prediction]:
    """Run ``forward`` (batch -> scores ``[B]``, maps ``[B, h, w]``) over ``images``, in input order.

    Maps are resized to each image's original size; latency is the batch time divided by its size.
    """
    results: list[Prediction | None] = [None] * len(images)
    for idx, batch in batches(images, spec, batch_size):
        t0 = time.perf_counter()
        scores, maps = forward(batch)
        per_image_ms = (time.perf_counter() - t0) * 1000.0 / len(idx)
        for i, score, amap in zip(idx, scores, maps, strict=True):
            results[i] = Prediction(float(score), resize_map(amap, images[i].shape[:2]), per_image_ms)
    return [r for r in results if r is not None]
