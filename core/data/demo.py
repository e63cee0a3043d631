"""Built-in demo data: a synthetic machined-metal category in MVTec layout, generated (no download).

``make_demo_dataset(root)`` writes ``<root>/demo_metal/{train/good, test/{good,scratch,spot}, ground_truth/...}``.
Surfaces share a texture (brushed grain, soft shading, fine noise); defects are painted scratches and spots
whose masks are saved as MVTec ground truth. Deterministic for a given seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from core.data.imageio import save_png_atomic

DEMO_CATEGORY = "demo_metal"


def surface(rng: np.random.Generator, size: int) -> np.ndarray:
    """A defect-free surface, uint8 RGB ``[size, size, 3]``."""
    grain = ndimage.gaussian_filter1d(rng.normal(0, 1, (size, size)), sigma=6, axis=1)
    shading = ndimage.gaussian_filter(rng.normal(0, 1, (size // 8, size // 8)), 2)
    shading = np.kron(shading, np.ones((8, 8)))[:size, :size]
    fine = rng.normal(0, 1, (size, size))
    gray = 150 + 18 * grain / (grain.std() + 1e-6) + 12 * shading / (shading.std() + 1e-6) + 4 * fine
    tint = np.array([1.0, 0.97, 0.9])
    return np.clip(gray[..., None] * tint, 0, 255).astype(np.uint8)


def paint_scratch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    mask = np.zeros(image.shape[:2], dtype=bool)
    x0, y0 = rng.uniform(0.2, 0.8, 2) * size
    angle = rng.uniform(0, np.pi)
    length = rng.uniform(0.25, 0.45) * size
    t = np.linspace(-length / 2, length / 2, int(length * 3))
    xs = np.clip((x0 + t * np.cos(angle)).astype(int), 0, size - 1)
    ys = np.clip((y0 + t * np.sin(angle)).astype(int), 0, size - 1)
    mask[ys, xs] = True
    mask = ndimage.binary_dilation(mask, iterations=1)
    out = image.astype(np.float32)
    out[mask] *= 0.45
    return out.clip(0, 255).astype(np.uint8), mask


def paint_spot(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(0.2, 0.8, 2) * size
    ry, rx = rng.uniform(0.04, 0.09, 2) * size
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    out = image.astype(np.float32)
    out[mask] = out[mask] * 0.5 + np.array([90, 50, 20]) * 0.5  # rust-coloured
    return out.clip(0, 255).astype(np.uint8), mask


PAINTERS = {"scratch": paint_scratch, "spot": paint_spot}


def make_demo_dataset(root: str | Path, n_train: int = 40, n_test_good: int = 10, n_per_defect: int = 8,
                      size: int = 160, seed: int = 7, category: str = DEMO_CATEGORY) -> Path:
    """Write the demo category under ``root`` and return its folder. Existing files are overwritten."""
    rng = np.random.default_rng(seed)
    base = Path(root) / category
    for i in range(n_train):
        save_png_atomic(surface(rng, size), base / "train" / "good" / f"{i:03d}.png")
    for i in range(n_test_good):
        save_png_atomic(surface(rng, size), base / "test" / "good" / f"{i:03d}.png")
    for defect, painter in PAINTERS.items():
        for i in range(n_per_defect):
            image, mask = painter(surface(rng, size), rng)
            save_png_atomic(image, base / "test" / defect / f"{i:03d}.png")
            save_png_atomic(mask.astype(np.uint8) * 255, base / "ground_truth" / defect / f"{i:03d}_mask.png")
    return base
