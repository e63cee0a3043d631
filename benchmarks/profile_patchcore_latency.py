"""Where PatchCore's batch-1 latency goes: each stage of ``PatchCore.predict([image])`` timed on its own.

    /tmp/quiet_bench.sh .venv/bin/python benchmarks/profile_patchcore_latency.py            # both parts
    /tmp/quiet_bench.sh .venv/bin/python benchmarks/profile_patchcore_latency.py --part squash

- squash: magnetic_tile, 256² squashed input, 1% bank (fit on every training image: ~7,800 entries; with
  ``--squash-train N`` on the first N, the coreset ratio scaled to the same bank size), the fast path
  (``runtime="auto"``, ``search="auto"``, ``precision`` as ``PatchCore.search_index`` chooses it), batch 1.
- tiles: pcb_00041 (640x640), ``input_mode="tiles"``, tile 256, fit on ``--tile-train`` training images with the
  coreset ratio scaled so that the bank has about as many entries (``--tile-bank``) as the full fit's.

Each stage runs the very code ``predict`` runs, in the same order, on the test images one at a time; the table gives
the median ms per image over ``--repeats`` passes over ``--images`` images (after a warm-up), and the end-to-end
``predict([image])`` median for comparison (the stages' sum should be close to it). Fitted banks are cached in
``--cache`` (default /tmp/profile_patchcore) so that reruns time only inference. Run through /tmp/quiet_bench.sh.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from anomalib.models.image.patchcore.torch_model import PatchcoreModel
from common import DATA, machine

from core.data.dataset import load_category
from core.data.imageio import load_image
from core.models.patchcore import TILE_BANK_SHARE, PatchCore, PatchCoreConfig
from core.models.preprocess import resize_map, to_tensor
from core.portable import crop_tiles, stitch_tiles, tile_boxes


class Stages:
    """Wall times (ms) per stage name, in the order first seen."""

    def __init__(self) -> None:
        self.ms: dict[str, list[float]] = {}

    def time(self, name: str, fn: Callable[[], object]) -> object:
        t0 = time.perf_counter()
        out = fn()
        self.ms.setdefault(name, []).append((time.perf_counter() - t0) * 1000.0)
        return out

    def table(self, title: str) -> str:
        lines = [f"{title}", f"{'stage':<44} {'median ms':>10} {'p90 ms':>8}"]
        total = 0.0
        for name, values in self.ms.items():
            med = statistics.median(values)
            if not name.startswith("="):
                total += med
            p90 = float(np.percentile(values, 90))
            lines.append(f"{name:<44} {med:>10.2f} {p90:>8.2f}")
        lines.append(f"{'sum of stages':<44} {total:>10.2f}")
        return "\n".join(lines)


def fitted(config: PatchCoreConfig, train: list[np.ndarray], cache: Path, name: str) -> PatchCore:
    """A PatchCore with ``config`` fitted on ``train`` (the state cached in ``cache/name.pt``)."""
    model = PatchCore(config)
    path = cache / f"{name}.pt"
    if path.is_file():
        model.load_state(torch.load(path))
    else:
        model.fit(train)
        cache.mkdir(parents=True, exist_ok=True)
        torch.save(model.state(), path)
    model.prepare()
    return model


def staged_squash(model: PatchCore, image: np.ndarray, st: Stages) -> None:
    """``PatchCore.predict([image])`` (squash input) stage by stage."""
    spec = model.config.input_spec
    batch = st.time("to_tensor (PIL resize, normalise)", lambda: to_tensor([image], spec))
    assert isinstance(batch, torch.Tensor)
    core_stages(model, batch, st)


def core_stages(model: PatchCore, batch: torch.Tensor, st: Stages) -> torch.Tensor:
    """``PatchCore.forward(batch)`` stage by stage; returns the maps ``[B, H, W]`` (resize back excluded)."""
    with torch.inference_mode():
        emb = st.time("embed (graph runtime, incl. numpy copies)", lambda: model.embed(batch))
        assert isinstance(emb, torch.Tensor)
        b, _, h, w = emb.shape
        flat = st.time("reshape_embedding", lambda: PatchcoreModel.reshape_embedding(emb))
        assert isinstance(flat, torch.Tensor)
        index = model.search_index()
        found = st.time(f"patch_search ({index.precision})", lambda: index.patch_search(flat, b))
        distances, locations = found  # type: ignore[misc]
        patch_scores = distances.reshape(b, -1)
        st.time("image score (anomalib's re-weighting)", lambda: model._image_scores(
            patch_scores, locations.reshape(b, -1), flat))
        maps = st.time("map smoothing (A_h @ S @ A_w^T)", lambda: model._smoother(
            patch_scores.reshape(b, 1, h, w), (int(batch.shape[-2]), int(batch.shape[-1]))))
        assert isinstance(maps, torch.Tensor)
        return maps[:, 0]


def staged_squash_full(model: PatchCore, image: np.ndarray, st: Stages) -> None:
    spec = model.config.input_spec
    batch = st.time("to_tensor (PIL resize, normalise)", lambda: to_tensor([image], spec))
    assert isinstance(batch, torch.Tensor)
    maps = core_stages(model, batch, st)
    st.time("resize_map to the original size", lambda: resize_map(maps[0], image.shape[:2]))


def staged_tiles(model: PatchCore, image: np.ndarray, st: Stages) -> None:
    """``PatchCore.predict([image])`` (tiles input) stage by stage."""
    cfg = model.config
    scaled = st.time("scale_image", lambda: model._scaled(image))
    assert isinstance(scaled, np.ndarray)
    boxes = tile_boxes(scaled.shape, cfg.tile, cfg.tile_overlap)
    tiles = st.time("crop_tiles", lambda: crop_tiles(scaled, cfg.tile, cfg.tile_overlap))
    assert isinstance(tiles, list)
    batch = st.time("to_tensor (normalise the tiles)", lambda: to_tensor(tiles, cfg.input_spec))
    assert isinstance(batch, torch.Tensor)
    maps = core_stages(model, batch, st)
    maps_np = maps.numpy()
    stitched = st.time("stitch_tiles", lambda: stitch_tiles(scaled.shape, boxes, maps_np))
    st.time("resize_map to the original size", lambda: resize_map(stitched, image.shape[:2]))  # type: ignore[arg-type]


def profile(model: PatchCore, images: list[np.ndarray], staged: Callable[[PatchCore, np.ndarray, Stages], None],
            repeats: int, title: str) -> str:
    st = Stages()
    for image in images[:3]:  # warm-up: graph compile, runtime choice (recorded), operator caches
        model.predict([image])
        staged(model, image, Stages())
    for _ in range(repeats):
        for image in images:
            st.time("= predict([image]) end to end", lambda image=image: model.predict([image]))
            staged(model, image, st)
    return st.table(title)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("squash", "tiles", "both"), default="both")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--squash-train", type=int, default=0,
                        help="magnetic_tile training images for the squash bank (0: all, coreset 1%%; fewer: the coreset "
                             "ratio scaled to the same bank size)")
    parser.add_argument("--tile-train", type=int, default=40, help="pcb_00041 training images for the tiled bank")
    parser.add_argument("--tile-bank", type=int, default=4055, help="tiled bank size to aim at (the full fit's)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/profile_patchcore"))
    parser.add_argument("--fit-only", action="store_true", help="only fit and cache the banks (run it under nice)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}; load {os.getloadavg()[0]:.2f}", flush=True)
    if args.part in ("squash", "both"):
        data = load_category(DATA, "magnetic_tile")
        picked = data.train[:args.squash_train] if args.squash_train else data.train
        ratio = 0.01 * len(data.train) / len(picked)  # the full fit's bank size (1% of every training image's patches)
        name = f"squash_{len(picked)}"
        train = [] if (args.cache / f"{name}.pt").is_file() else [load_image(s.path) for s in picked]
        step = max(1, len(data.test) // args.images)
        images = [load_image(s.path) for s in data.test[::step][:args.images]]
        model = fitted(PatchCoreConfig(coreset_ratio=ratio, input_mode="squash"), train, args.cache, name)
        title = (f"squash 256², magnetic_tile, bank {model.memory_bank.shape[0]:,} x {model.memory_bank.shape[1]}, "
                 f"{len(images)} images x {args.repeats}")
        if not args.fit_only:
            print(profile(model, images, staged_squash_full, args.repeats, title), flush=True)
    if args.part in ("tiles", "both"):
        data = load_category(DATA, "pcb_00041")
        name = f"tiles_{args.tile_train}_{args.tile_bank}"
        train = [] if (args.cache / f"{name}.pt").is_file() else [load_image(s.path) for s in data.train[:args.tile_train]]
        patches = args.tile_train * 9 * 1024  # 9 tiles of 256 px per 640² image, 32 x 32 patches each
        ratio = args.tile_bank / patches / TILE_BANK_SHARE
        config = PatchCoreConfig(input_mode="tiles", tile=256, coreset_ratio=ratio)
        model = fitted(config, train, args.cache, name)
        images = [load_image(s.path) for s in data.test[:args.images]]
        title = (f"tiles 256 px (9 per 640² image), pcb_00041, bank {model.memory_bank.shape[0]:,}, "
                 f"{len(images)} images x {args.repeats}")
        if not args.fit_only:
            print(profile(model, images, staged_tiles, args.repeats, title), flush=True)
    print(f"load after {os.getloadavg()[0]:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
