"""Tiling: hand-checked tile grids, stitching, and PatchCore trained and scored on tiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.data.dataset import load_category
from core.data.imageio import load_image
from core.models import tiling
from core.models.patchcore import PatchCore, PatchCoreConfig


@pytest.mark.parametrize(("length", "tile", "overlap", "expected"), [
    (256, 256, 0.25, [0]),
    (100, 256, 0.25, [0]),            # smaller than a tile: one (resized) tile
    (300, 256, 0.25, [0, 44]),        # stride 192; the last tile ends at the border
    (600, 256, 0.25, [0, 192, 344]),
    (512, 256, 0.0, [0, 256]),
    (513, 256, 0.0, [0, 256, 257]),
])
def test_tile_starts(length: int, tile: int, overlap: float, expected: list[int]) -> None:
    assert tiling.starts(length, tile, overlap) == expected


@pytest.mark.parametrize("shape", [(300, 600, 3), (64, 900, 3), (256, 256, 3)])
def test_tiles_cover_every_pixel_without_padding(shape: tuple[int, int, int]) -> None:
    covered = np.zeros(shape[:2], int)
    for y, x, h, w in tiling.tile_boxes(shape, 256, 0.25):
        assert y + h <= shape[0] and x + w <= shape[1]
        covered[y:y + h, x:x + w] += 1
    assert covered.min() >= 1


def test_stitching_averages_overlaps_and_takes_the_top_tile_score() -> None:
    image = np.zeros((4, 6, 3), np.uint8)  # tiles of 4x4 at x = 0 and 2: columns 2-3 are covered twice

    def forward(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = batch.shape[0]
        return torch.arange(n, dtype=torch.float32), torch.arange(n, dtype=torch.float32).view(n, 1, 1).expand(n, 4, 4)

    pred = tiling.predict_tiled(forward, lambda tiles: torch.zeros(len(tiles), 3, 4, 4), [image], 4, 0.5, 8)[0]
    assert tiling.tile_boxes(image.shape, 4, 0.5) == [(0, 0, 4, 4), (0, 2, 4, 4)]
    assert pred.score == 1.0
    assert np.allclose(pred.anomaly_map[0], [0.0, 0.0, 0.5, 0.5, 1.0, 1.0])


def test_patchcore_on_tiles(demo_root: Path) -> None:
    data = load_category(demo_root, "demo_metal")
    model = PatchCore(PatchCoreConfig(input_mode="tiles", tile=32, coreset_ratio=0.2, batch_size=8))
    report = model.fit([load_image(s.path) for s in data.train[:6]])
    assert report.num_images == 6 * 9  # 64 px images, 32 px tiles, 25% overlap: 3 x 3 tiles each
    preds = model.predict([load_image(s.path) for s in data.test[:2]] + [np.full((50, 90, 3), 100, np.uint8)])
    assert [p.anomaly_map.shape for p in preds] == [(64, 64), (64, 64), (50, 90)]
    assert all(np.isfinite(p.score) for p in preds)
