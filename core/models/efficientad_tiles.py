"""EfficientAD's input modes: the whole image resized (``squash``), native-resolution ``tiles``, or ``auto``.

EfficientAD squashes every image to its input (256 x 256 by default); a 640 x 640 circuit-board scan whose defects
are a few pixels wide loses them on the way (pcb_00041: image AUROC 0.484 squashed, RESULTS.md cpu_speed_training).
``input_mode="tiles"`` cuts each image (resized by ``scale``) into overlapping ``tile`` x ``tile`` tiles with the
grid PatchCore's tiles use (core/portable.py ``tile_boxes``/``crop_tiles``/``stitch_tiles``): the networks train
on the tiles of the good images (each tile is one more training input; at most :data:`MAX_TRAIN_TILES`, a seeded
draw, so memory stays bounded), the map-normalisation quantiles come from the held-out goods' tiles, and an image
is scored by :func:`core.models.tiling.predict_tiled` (all its tiles in one network call): the image score is the
highest tile score, the map the tiles' maps stitched.

``input_mode="auto"`` (the default) is resolved at fit time by :func:`choose_input`, **a rule on the image size**
(no scoring: PatchCore's chooser scores candidates with quick memory banks, which a network trained for minutes
cannot afford, and its native-aspect candidate has no EfficientAD counterpart):

- when the good images' median short side is at least :data:`AUTO_TILE_RATIO` tiles (512 px for 256 px tiles):
  tiles at native resolution if an image has at most :data:`AUTO_MAX_TILES` tiles, else at half resolution if
  it then has at most that many (and its short side is still a tile or more: a 900 x 900 scan gets 9 tiles at
  0.5x), else resized (very large images; the explicit tiles mode still tiles them);
- smaller images are resized to the input (``squash``).

On the development sets: pcb_00041 (640 x 640) gets 9 tiles at 1x; juice_bottle_loco (400 x 800) and
magnetic_tile (103-632 x 222-403 px, median short side below 512) stay resized, as PatchCore's chooser decides
for them too. The result is an :class:`core.models.input_choice.InputChoice` (``scored=False``), recorded in the
manifest like PatchCore's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from core.models.input_choice import MARGIN, CandidateScore, InputChoice, expected_ms
from core.portable import crop_tiles, scale_image, scaled_shape, tile_boxes

__all__ = ["AUTO", "AUTO_MAX_TILES", "AUTO_TILE_RATIO", "INPUT_MODES", "MAX_TRAIN_TILES", "TiledConfig",
           "choose_input", "image_tiles", "training_tiles"]

AUTO = "auto"
INPUT_MODES: tuple[str, ...] = (AUTO, "squash", "tiles")
AUTO_TILE_RATIO = 2.0  # auto: tiles when the (scaled) median short side is at least this many tiles
AUTO_MAX_TILES = 16  # ... and an image has at most this many tiles (latency: one network pass per tile)
# Training inputs drawn from the tiles of the good images at most (a seeded draw when there are more): each is
# 0.75 MiB as a 256² float tensor plus its teacher target; the cosine recipe's 1,500 steps of 2 see 3,000.
MAX_TRAIN_TILES = 3000


class TiledConfig(Protocol):
    """The settings :func:`choose_input` and the tile cutting read (``EfficientADConfig`` has them)."""

    @property
    def height(self) -> int: ...
    @property
    def width(self) -> int: ...
    @property
    def tile(self) -> int: ...
    @property
    def tile_overlap(self) -> float: ...
    @property
    def scale(self) -> float: ...
    @property
    def seed(self) -> int: ...


def choose_input(shapes: Sequence[tuple[int, ...]], config: TiledConfig) -> InputChoice:
    """Resolve ``input_mode="auto"`` for good images of ``shapes`` (H, W, ...) by the size rule of the module
    docstring. Deterministic: same shapes and settings, same choice."""
    if not shapes:
        raise ValueError("expected the shapes of at least one good image to choose the input from, found none")
    h, w = int(np.median([s[0] for s in shapes])), int(np.median([s[1] for s in shapes]))
    side = min(config.height, config.width)
    ratio = min(h, w) / side
    squash: dict[str, Any] = {"input_mode": "squash"}
    label, settings, tiles = f"resized to {config.height}x{config.width}", squash, 0
    reason = (f"EfficientAD's size rule: the images' median short side ({min(h, w)} px) is below "
              f"{AUTO_TILE_RATIO:g} tiles of {config.tile} px, so the resized input keeps enough of it.")
    if min(h, w) >= AUTO_TILE_RATIO * config.tile:  # large images: tiles, at the largest scale within the budget
        reason = (f"EfficientAD's size rule: the images ({h}x{w}) would need more than {AUTO_MAX_TILES} tiles "
                  f"of {config.tile} px even at half resolution: resized (choose --input-mode tiles to tile them).")
        for scale in (1.0, 0.5):
            sh, sw = scaled_shape((h, w), scale)
            n = len(tile_boxes((sh, sw), config.tile, config.tile_overlap))
            if min(sh, sw) >= config.tile and n <= AUTO_MAX_TILES:
                label = f"tiles of {config.tile} px at {scale:g}x ({n} per {h}x{w} image)"
                settings, tiles = {"input_mode": "tiles", "tile": config.tile, "scale": scale}, n
                reason = (f"EfficientAD's size rule: the images' median short side ({min(h, w)} px) is at least "
                          f"{AUTO_TILE_RATIO:g} tiles of {config.tile} px; at {scale:g}x ({min(sh, sw)} px) an "
                          f"image has {n} tiles (at most {AUTO_MAX_TILES}): small defects keep their pixels.")
                break
    pixels = tiles * config.tile * config.tile if tiles else config.height * config.width
    picked = CandidateScore(str(settings["input_mode"]), label, dict(settings), expected_ms(pixels, tiles), True)
    return InputChoice(picked.mode, dict(settings), label, reason, (picked,), False, 0.0, MARGIN, int(config.seed),
                       ratio, {})


def image_tiles(image: np.ndarray, config: TiledConfig) -> list[np.ndarray]:
    """``image`` (uint8 RGB ``[H, W, 3]``) resized by ``config.scale`` and cut into its tiles (portable.py's grid)."""
    return crop_tiles(scale_image(image, config.scale), config.tile, config.tile_overlap)


def training_tiles(images: Sequence[np.ndarray], config: TiledConfig,
                   limit: int = MAX_TRAIN_TILES) -> list[np.ndarray]:
    """Every tile of ``images`` in image order, or ``limit`` of them drawn without replacement (seeded by
    ``config.seed``, kept in image order) when there are more. The draw is of (image, tile) positions from the
    grid alone, and only the images with a drawn tile are cut: the tiles not kept are never copied."""
    counts = [len(tile_boxes(scaled_shape(image.shape, config.scale), config.tile, config.tile_overlap))
              for image in images]
    total = sum(counts)
    if total <= limit:
        return [t for image in images for t in image_tiles(image, config)]
    keep = np.sort(np.random.default_rng(config.seed).choice(total, size=limit, replace=False))
    firsts = np.cumsum([0, *counts])
    out: list[np.ndarray] = []
    for i, image in enumerate(images):
        wanted = keep[(keep >= firsts[i]) & (keep < firsts[i + 1])] - firsts[i]
        if wanted.size:
            cut = image_tiles(image, config)
            out += [cut[int(j)] for j in wanted]
    return out

