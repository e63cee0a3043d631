"""Unfamiliar-image guard: is an image of the product the model was trained on at all?

An anomaly score only means something for images of the trained product: a photo of another part scores
"very anomalous" and would get a confident DEFECT. The guard describes each image by a global descriptor
(per-channel mean and standard deviation of two pretrained tf_efficientnet_lite0 stages, 224x224, squashed)
and measures the distance to the nearest training image's descriptor, after standardising each dimension by
the training images' spread. The limit comes from held-out good images (see :func:`fit_limit`) and is saved
in calibration.json as data; the reference descriptors are saved beside the model (``familiarity.npz``).
An image is also unfamiliar when its aspect ratio lies well outside the training images' range.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import timm
import torch

from core.backbone import LITE_MEAN, LITE_STD, load_into_feature_extractor
from core.preprocess import InputSpec, to_tensor

BACKBONE = "tf_efficientnet_lite0"
STAGES: tuple[int, int] = (3, 4)  # timm feature indices: blocks.4 (stride 16) and blocks.6 (stride 32)
SPEC = InputSpec(224, 224, normalize=False)
LIMIT_MARGIN = 1.5  # the limit is this many times the largest held-out good image's distance
ASPECT_MARGIN = 1.25  # aspect ratios up to this factor outside the training range are still familiar
MIN_SIDE_FLOOR = 16  # px: below this no image carries enough to judge
BATCH = 16


@functools.lru_cache(maxsize=1)
def _extractor() -> torch.nn.Module:
    model = timm.create_model(BACKBONE, pretrained=False, features_only=True, out_indices=STAGES).eval()
    load_into_feature_extractor(model, BACKBONE)
    return model


def descriptors(images: Sequence[np.ndarray]) -> np.ndarray:
    """Global descriptors ``[N, D]`` (D = 2 x (112 + 320) = 864) of uint8 RGB images ``[H, W, 3]``."""
    model = _extractor()
    mean = torch.tensor(LITE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(LITE_STD).view(1, 3, 1, 1)
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), BATCH):
            x = (to_tensor(images[start:start + BATCH], SPEC) - mean) / std
            parts = [torch.cat([f.mean(dim=(2, 3)), f.std(dim=(2, 3))], dim=1) for f in model(x)]
            out.append(torch.cat(parts, dim=1).numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 864), np.float32)


@dataclass(frozen=True)
class FamiliarityProfile:
    """Reference descriptors of the fitting images: ``reference [N, D]`` (already standardised by
    ``center [D]`` and ``scale [D]``), and the range of their aspect ratios (height / width) and sides."""

    reference: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    aspect_range: tuple[float, float]
    min_side: int

    def distances(self, desc: np.ndarray, exclude_self: bool = False) -> np.ndarray:
        """Distance ``[M]`` of each descriptor ``[M, D]`` to its nearest reference (RMS over dimensions).
        ``exclude_self`` skips an exact match (leave-one-out on the reference images themselves)."""
        z = (desc - self.center) / self.scale
        d2 = (z ** 2).sum(1)[:, None] - 2.0 * z @ self.reference.T + (self.reference ** 2).sum(1)[None, :]
        d2 = np.maximum(d2, 0.0)
        if exclude_self:
            d2[d2 <= 1e-9] = np.inf
        return np.sqrt(d2.min(axis=1) / z.shape[1])

    def aspect_ok(self, shape: tuple[int, ...]) -> bool:
        aspect = shape[0] / shape[1]
        lo, hi = self.aspect_range
        return lo / ASPECT_MARGIN <= aspect <= hi * ASPECT_MARGIN

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, reference=self.reference, center=self.center, scale=self.scale,
                            aspect_range=np.array(self.aspect_range), min_side=np.array(self.min_side))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> FamiliarityProfile:
        """Raises ValueError naming what is missing or wrong."""
        try:
            with np.load(io.BytesIO(data)) as z:
                ref, center, scale = z["reference"], z["center"], z["scale"]
                aspect, min_side = z["aspect_range"], int(z["min_side"])
        except Exception as exc:  # noqa: BLE001 - numpy raises many types for damaged files
            raise ValueError(f"expected a familiarity profile (npz with reference, center, scale, aspect_range, "
                             f"min_side), found unreadable data ({type(exc).__name__}: {exc})") from None
        if ref.ndim != 2 or center.shape != (ref.shape[1],) or scale.shape != (ref.shape[1],):
            raise ValueError(f"expected reference [N, D] with center and scale [D], found {ref.shape}, "
                             f"{center.shape}, {scale.shape}")
        return cls(ref, center, scale, (float(aspect[0]), float(aspect[1])), min_side)


def build_profile(images: Sequence[np.ndarray], desc: np.ndarray | None = None) -> FamiliarityProfile:
    """Profile of the fitting images (uint8 RGB ``[H, W, 3]``); ``desc`` their descriptors if already made."""
    if not images:
        raise ValueError("expected training images to build a familiarity profile, found none")
    desc = descriptors(images) if desc is None else desc
    center = desc.mean(axis=0)
    scale = desc.std(axis=0)
    scale = np.maximum(scale, 1e-3 * float(scale.mean()) + 1e-8)
    aspects = [im.shape[0] / im.shape[1] for im in images]
    sides = [min(im.shape[:2]) for im in images]
    min_side = max(MIN_SIDE_FLOOR, int(round(0.25 * min(sides))))
    return FamiliarityProfile(((desc - center) / scale).astype(np.float32), center.astype(np.float32),
                              scale.astype(np.float32), (float(min(aspects)), float(max(aspects))), min_side)


def fit_limit(profile: FamiliarityProfile, holdout: Sequence[np.ndarray]) -> float:
    """Distance limit: ``LIMIT_MARGIN`` x the largest distance of held-out good images to the reference
    (leave-one-out distances of the reference images themselves when nothing was held out)."""
    if len(holdout):
        d = profile.distances(descriptors(holdout))
    else:
        d = profile.distances(profile.reference * profile.scale + profile.center, exclude_self=True)
        d = d[np.isfinite(d)]
    if d.size == 0:
        return float("inf")
    return float(LIMIT_MARGIN * d.max())


@dataclass(frozen=True)
class Familiarity:
    """Whether one image looks like the training images: ``distance`` to the nearest one vs ``limit``."""

    familiar: bool
    distance: float
    limit: float
    reason: str


def assess(profile: FamiliarityProfile, limit: float, images: Sequence[np.ndarray]) -> list[Familiarity]:
    """One :class:`Familiarity` per image (each at least ``profile.min_side`` px on its short side)."""
    if not images:
        return []
    dist = profile.distances(descriptors(images))
    out = []
    for image, d in zip(images, dist, strict=True):
        reasons = []
        if d > limit:
            reasons.append(f"unlike the training images (distance {d:.2f} > limit {limit:.2f})")
        if not profile.aspect_ok(image.shape):
            lo, hi = profile.aspect_range
            reasons.append(f"aspect ratio {image.shape[0] / image.shape[1]:.2f} (h/w) outside the training "
                           f"range {lo:.2f}-{hi:.2f}")
        out.append(Familiarity(not reasons, float(d), float(limit), "; ".join(reasons)))
    return out
