"""Small synthetic defects pasted into good images at their real resolution (the automatic input mode's test).

Three painters, each a defect whose extent is 1-3% of the image's short side (at least 3 px), so that a defect
that survives the model's input resizing at one resolution and vanishes at another tells the two apart:

* ``cutpaste``: a square patch cut from another good image (a donor) at a random place, pasted elsewhere;
* ``scratch``: a thin straight line (1-2 px wide), darker or brighter than its surroundings;
* ``spot``: a filled, soft-edged ellipse, darker or brighter than its surroundings.

Everything is drawn with the ``numpy.random.Generator`` passed in, so a seed gives the same defects. A painter
that changed its region too little (a patch of background pasted on background) tries another place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

EXTENT = (0.01, 0.03)  # defect extent as a share of the image's short side
MIN_EXTENT_PX = 3
MIN_CHANGE = 12.0  # mean absolute change (grey levels) a defect's region must show, else another place is tried
TRIES = 6


@dataclass(frozen=True)
class SyntheticDefect:
    """A good image with one pasted defect: ``image`` uint8 RGB ``[H, W, 3]``, ``mask`` bool ``[H, W]``."""

    image: np.ndarray
    mask: np.ndarray
    kind: str
    source: int  # index of the good image it was pasted into


Painter = Callable[[np.ndarray, np.random.Generator, np.ndarray], tuple[np.ndarray, np.ndarray]]


def extent_px(shape: tuple[int, ...], rng: np.random.Generator) -> int:
    """A defect extent in pixels for an image of ``shape`` (H, W, ...): 1-3% of its short side, at least 3 px."""
    short = min(shape[0], shape[1])
    return max(MIN_EXTENT_PX, int(round(rng.uniform(*EXTENT) * short)))


def _corner(shape: tuple[int, ...], size_y: int, size_x: int, rng: np.random.Generator) -> tuple[int, int]:
    return (int(rng.integers(0, max(1, shape[0] - size_y + 1))), int(rng.integers(0, max(1, shape[1] - size_x + 1))))


def _contrast(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A shade clearly off ``region``'s mean (darker or brighter by 60-110 grey levels, kept in range)."""
    mean = region.reshape(-1, 3).mean(axis=0)
    delta = rng.uniform(60, 110)
    darker = bool(mean.mean() > 127) != bool(rng.random() < 0.2)  # mostly towards the far end of the range
    return np.clip(mean - delta if darker else mean + delta, 0, 255)


def cutpaste(image: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A square patch of ``donor`` (another good image) pasted into ``image`` at another place."""
    size = min(extent_px(image.shape, rng), donor.shape[0], donor.shape[1], image.shape[0], image.shape[1])
    sy, sx = _corner(donor.shape, size, size, rng)
    patch = donor[sy:sy + size, sx:sx + size]
    if rng.random() < 0.5:
        patch = np.rot90(patch)
    y, x = _corner(image.shape, size, size, rng)
    out = image.copy()
    out[y:y + size, x:x + size] = patch
    mask = np.zeros(image.shape[:2], bool)
    mask[y:y + size, x:x + size] = True
    return out, mask


def scratch(image: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A thin straight line (1-2 px wide) of 1-3% of the short side, off the local shade."""
    del donor
    length = extent_px(image.shape, rng)
    width = 1 + int(min(image.shape[:2]) >= 400)
    angle = rng.uniform(0, np.pi)
    cy, cx = rng.uniform(0.1, 0.9) * image.shape[0], rng.uniform(0.1, 0.9) * image.shape[1]
    t = np.linspace(-length / 2, length / 2, 4 * length)
    ys = np.clip(np.round(cy + t * np.sin(angle)).astype(int), 0, image.shape[0] - 1)
    xs = np.clip(np.round(cx + t * np.cos(angle)).astype(int), 0, image.shape[1] - 1)
    mask = np.zeros(image.shape[:2], bool)
    for dy in range(width):
        for dx in range(width):
            mask[np.clip(ys + dy, 0, image.shape[0] - 1), np.clip(xs + dx, 0, image.shape[1] - 1)] = True
    out = image.copy()
    out[mask] = _contrast(image[mask], rng).astype(np.uint8)
    return out, mask


def spot(image: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A filled ellipse of 1-3% of the short side with a soft edge, off the local shade."""
    del donor
    diameter = extent_px(image.shape, rng)
    ry, rx = diameter / 2 * rng.uniform(0.7, 1.0), diameter / 2 * rng.uniform(0.7, 1.0)
    cy, cx = rng.uniform(0.1, 0.9) * image.shape[0], rng.uniform(0.1, 0.9) * image.shape[1]
    y0, y1 = max(0, int(cy - ry - 2)), min(image.shape[0], int(cy + ry + 3))
    x0, x1 = max(0, int(cx - rx - 2)), min(image.shape[1], int(cx + rx + 3))
    yy, xx = np.mgrid[y0:y1, x0:x1]
    r = np.sqrt(((yy - cy) / max(ry, 0.5)) ** 2 + ((xx - cx) / max(rx, 0.5)) ** 2)
    alpha = np.clip((1.25 - r) / 0.5, 0.0, 1.0)[..., None]  # 1 inside, soft over the rim
    region = image[y0:y1, x0:x1].astype(np.float32)
    shade = _contrast(image[y0:y1, x0:x1], rng)
    out = image.copy()
    out[y0:y1, x0:x1] = np.clip(region * (1 - alpha) + shade * alpha, 0, 255).astype(np.uint8)
    mask = np.zeros(image.shape[:2], bool)
    mask[y0:y1, x0:x1] = alpha[..., 0] > 0.0
    return out, mask


PAINTERS: dict[str, Painter] = {"cutpaste": cutpaste, "scratch": scratch, "spot": spot}


def paste_defect(image: np.ndarray, kind: str, rng: np.random.Generator,
                 donor: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (uint8 RGB ``[H, W, 3]``) with one defect of ``kind`` (a :data:`PAINTERS` name) and its mask
    ``[H, W]``; ``donor`` is the good image a cut-paste patch comes from (``image`` itself when None). Up to
    :data:`TRIES` places are tried until the region changes by :data:`MIN_CHANGE` grey levels on average.

    Raises:
        ValueError: an unknown kind, or not a uint8 RGB image.
    """
    if kind not in PAINTERS:
        raise ValueError(f"expected a synthetic defect kind in {tuple(PAINTERS)}, found {kind!r}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image [H, W, 3], found {image.dtype} {image.shape}")
    painter = PAINTERS[kind]
    source = image if donor is None else donor
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(TRIES):
        out, mask = painter(image, rng, source)
        change = float(np.abs(out[mask].astype(np.float32) - image[mask].astype(np.float32)).mean()) if mask.any() else 0.0
        if best is None or change > best[0]:
            best = (change, out, mask)
        if change >= MIN_CHANGE:
            break
    assert best is not None
    return best[1], best[2]


def synthetic_defects(goods: Sequence[np.ndarray], donors: Sequence[np.ndarray], seed: int,
                      kinds: Sequence[str] = tuple(PAINTERS)) -> list[SyntheticDefect]:
    """One defect of each of ``kinds`` in each of ``goods`` (cut-paste patches from ``donors``, other good
    images): ``len(goods) * len(kinds)`` images, the same for the same ``seed``.

    Raises:
        ValueError: no donors (a cut-paste needs another good image).
    """
    if not donors:
        raise ValueError("expected at least one donor image for cut-paste defects, found none")
    rng = np.random.default_rng(seed)
    out = []
    for i, good in enumerate(goods):
        for kind in kinds:
            donor = donors[int(rng.integers(0, len(donors)))]
            image, mask = paste_defect(good, kind, rng, donor)
            out.append(SyntheticDefect(image, mask, kind, i))
    return out
