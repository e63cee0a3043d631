"""Tiling for large images with small defects: overlapping native-resolution tiles, scored and stitched.

A tile grid covers the image with tiles of ``tile x tile`` pixels overlapping by at least ``overlap`` of a
tile; the last row/column is shifted back to end at the border, so every pixel is covered and no tile is
padded. An image smaller than a tile in one dimension is one tile along it (resized up to the tile). The grid,
the crops and the stitching are :mod:`core.portable`'s, so an export bundle of a tiled model tiles the same way.

:func:`predict_tiled` puts all tiles of an image through ONE call of the scorer (the backbone once on a batch of
tiles, the bank searched once for all their patches); several images share a call up to ``batch_size`` tiles.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from core.portable import crop_tiles, stitch_tiles, tile_boxes, tile_starts
from core.types import Prediction

__all__ = ["TileScorer", "crop_tiles", "image_groups", "predict_tiled", "starts", "stitch_tiles", "tile_boxes"]

starts = tile_starts  # the name tests and callers have used

# (tiles [T, 3, t, t], image index of each tile [T]) -> tile scores [T], tile maps [T, t, t]
TileScorer = Callable[[torch.Tensor, Sequence[int]], tuple[torch.Tensor, torch.Tensor]]
# At most this many tiles per scorer call, whatever the image (a 4000 x 3000 image has 192 tiles of 256 px: one call
# would hold ~1 GB of network activations); a 640 x 640 image's 9 tiles are one call.
MAX_TILES_PER_CALL = 64


def image_groups(counts: Sequence[int], batch_size: int) -> list[list[int]]:
    """Images (by index) grouped for one scorer call each: whole images only, as many as fit in ``batch_size``
    tiles (``counts[i]``: tiles of image i), at least one image per call whatever its tile count."""
    groups: list[list[int]] = []
    used = 0
    for i, n in enumerate(counts):
        if groups and used + n <= batch_size:
            groups[-1].append(i)
            used += n
        else:
            groups.append([i])
            used = n
    return groups


def predict_tiled(score: TileScorer, to_batch: Callable[[list[np.ndarray]], torch.Tensor],
                  images: Sequence[np.ndarray], tile: int, overlap: float, batch_size: int) -> list[Prediction]:
    """Score each image by its tiles: the image score is the highest tile score; the map is the tile maps
    ``[tile, tile]`` placed back at their boxes (resized to a tile's true extent) and averaged where they overlap.

    All tiles of an image go through one ``score`` call (with the index of its image in ``images`` per tile, for
    leave-one-image-out scoring; an image of more than :data:`MAX_TILES_PER_CALL` tiles takes several); the latency
    of a call is shared by its images."""
    boxes = [tile_boxes(image.shape, tile, overlap) for image in images]
    results: list[Prediction] = []
    for group in image_groups([len(b) for b in boxes], batch_size):
        t0 = time.perf_counter()
        tiles = [t for i in group for t in crop_tiles(images[i], tile, overlap)]
        rows = [i for i in group for _ in boxes[i]]
        parts = [score(to_batch(tiles[a:a + MAX_TILES_PER_CALL]), rows[a:a + MAX_TILES_PER_CALL])
                 for a in range(0, len(tiles), MAX_TILES_PER_CALL)]
        scores = torch.cat([s.reshape(-1) for s, _ in parts])
        maps_np = torch.cat([m for _, m in parts]).detach().float().cpu().numpy()
        stitched = []
        start = 0
        for i in group:
            n = len(boxes[i])
            stitched.append((float(scores[start:start + n].max()),
                             stitch_tiles(images[i].shape, boxes[i], maps_np[start:start + n])))
            start += n
        ms = (time.perf_counter() - t0) * 1000.0 / len(group)
        results += [Prediction(s, m, ms) for s, m in stitched]
    return results
