"""Tiling for large images with small defects: overlapping native-resolution tiles, scored and stitched.

A tile grid covers the image with tiles of ``tile x tile`` pixels overlapping by at least ``overlap`` of a
tile; the last row/column is shifted back to end at the border, so every pixel is covered and no tile is
padded. An image smaller than a tile in one dimension is one tile along it (resized up to the tile).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from core.types import Prediction


def starts(length: int, tile: int, overlap: float) -> list[int]:
    """Tile start offsets along one axis of ``length`` pixels (hand-checked in tests/test_tiling.py)."""
    if length <= tile:
        return [0]
    stride = max(1, int(tile * (1.0 - overlap)))
    count = math.ceil((length - tile) / stride) + 1
    return sorted({min(i * stride, length - tile) for i in range(count)})


def tile_boxes(shape: tuple[int, ...], tile: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of each tile of an image of ``shape`` (H, W, ...)."""
    h, w = shape[0], shape[1]
    return [(y, x, min(tile, h), min(tile, w)) for y in starts(h, tile, overlap) for x in starts(w, tile, overlap)]


def crop_tiles(image: np.ndarray, tile: int, overlap: float) -> list[np.ndarray]:
    """The tiles of ``image`` ``[H, W, 3]`` as uint8 ``[tile, tile, 3]`` arrays (short sides resized up)."""
    out = []
    for y, x, h, w in tile_boxes(image.shape, tile, overlap):
        crop = image[y:y + h, x:x + w]
        if (h, w) != (tile, tile):
            crop = np.asarray(Image.fromarray(crop).resize((tile, tile), Image.Resampling.BILINEAR))
        out.append(np.ascontiguousarray(crop))
    return out


def predict_tiled(forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                  to_batch: Callable[[list[np.ndarray]], torch.Tensor], images: Sequence[np.ndarray],
                  tile: int, overlap: float, batch_size: int) -> list[Prediction]:
    """Score each image by its tiles: the image score is the highest tile score; the map is the tile maps
    ``[tile, tile]`` placed back at their boxes (resized to a tile's true extent) and averaged where they overlap."""
    results = []
    for image in images:
        t0 = time.perf_counter()
        boxes = tile_boxes(image.shape, tile, overlap)
        tiles = crop_tiles(image, tile, overlap)
        scores: list[float] = []
        total = np.zeros(image.shape[:2], np.float32)
        count = np.zeros(image.shape[:2], np.float32)
        for start in range(0, len(tiles), batch_size):
            s, maps = forward(to_batch(tiles[start:start + batch_size]))
            scores += [float(v) for v in s]
            for (y, x, h, w), amap in zip(boxes[start:start + batch_size], maps, strict=True):
                m = torch.as_tensor(amap, dtype=torch.float32)
                if tuple(m.shape) != (h, w):
                    m = torch.nn.functional.interpolate(m[None, None], size=(h, w), mode="bilinear",
                                                        align_corners=False)[0, 0]
                total[y:y + h, x:x + w] += m.numpy()
                count[y:y + h, x:x + w] += 1.0
        results.append(Prediction(max(scores), total / np.maximum(count, 1.0), (time.perf_counter() - t0) * 1000.0))
    return results
