"""Tiling: hand-checked tile grids, stitching, and PatchCore trained and scored on tiles."""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.models.image.patchcore.torch_model import PatchcoreModel
from PIL import Image

from core.data.dataset import load_category
from core.data.imageio import load_image
from core.models import tiling
from core.models.patchcore import PatchCore, PatchCoreConfig
from core.models.preprocess import to_tensor
from core.store import lifecycle as det
from core.store.model_store import ModelStore
from tests.conftest import bundle_inspect, counting_embed


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

    def forward(batch: torch.Tensor, rows: object) -> tuple[torch.Tensor, torch.Tensor]:
        n = batch.shape[0]
        return torch.arange(n, dtype=torch.float32), torch.arange(n, dtype=torch.float32).view(n, 1, 1).expand(n, 4, 4)

    pred = tiling.predict_tiled(forward, lambda tiles: torch.zeros(len(tiles), 3, 4, 4), [image], 4, 0.5, 8)[0]
    assert tiling.tile_boxes(image.shape, 4, 0.5) == [(0, 0, 4, 4), (0, 2, 4, 4)]
    assert pred.score == 1.0
    assert np.allclose(pred.anomaly_map[0], [0.0, 0.0, 0.5, 0.5, 1.0, 1.0])


def test_an_image_of_many_tiles_is_scored_in_bounded_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    image = np.random.default_rng(0).integers(0, 256, (4, 24, 3), dtype=np.uint8)  # 4 px tiles, no overlap: 6
    calls: list[int] = []

    def forward(batch: torch.Tensor, rows: object) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(int(batch.shape[0]))
        means = batch.mean(dim=(1, 2, 3))
        return means, means.view(-1, 1, 1).expand(-1, 4, 4)

    def to_batch(tiles: list[np.ndarray]) -> torch.Tensor:
        return torch.stack([torch.from_numpy(t).permute(2, 0, 1).float() for t in tiles])

    whole = tiling.predict_tiled(forward, to_batch, [image], 4, 0.0, 2)[0]
    assert calls == [6]  # all tiles of the image in one call, though batch_size is 2
    monkeypatch.setattr(tiling, "MAX_TILES_PER_CALL", 4)
    calls.clear()
    bounded = tiling.predict_tiled(forward, to_batch, [image], 4, 0.0, 2)[0]
    assert calls == [4, 2]
    assert bounded.score == whole.score and np.array_equal(bounded.anomaly_map, whole.anomaly_map)


def test_patchcore_on_tiles(demo_root: Path) -> None:
    data = load_category(demo_root, "demo_metal")
    model = PatchCore(PatchCoreConfig(input_mode="tiles", tile=32, coreset_ratio=0.2, batch_size=8))
    report = model.fit([load_image(s.path) for s in data.train[:6]])
    assert report.num_images == 6 * 9  # 64 px images, 32 px tiles, 25% overlap: 3 x 3 tiles each
    preds = model.predict([load_image(s.path) for s in data.test[:2]] + [np.full((50, 90, 3), 100, np.uint8)])
    assert [p.anomaly_map.shape for p in preds] == [(64, 64), (64, 64), (50, 90)]
    assert all(np.isfinite(p.score) for p in preds)


# ------------------------------------------------------------------ the fast path, leave-one-out, feedback, export
TILED = {"input_mode": "tiles", "tile": 64, "tile_overlap": 0.25, "coreset_ratio": 0.1, "batch_size": 4}


@pytest.fixture(scope="module")
def big_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A category ``big`` of 150 x 200 px images: 64 px tiles, 3 x 4 of them, the last row and column shifted."""
    from core.data.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("big")
    make_demo_dataset(root, n_train=6, n_test_good=2, n_per_defect=1, size=200, seed=11, category="big")
    for path in root.rglob("*.png"):  # 200 x 200 -> 150 x 200: not square, not a multiple of the stride
        Image.fromarray(np.asarray(Image.open(path))[:150]).save(path)
    return root


@pytest.fixture(scope="module")
def big_images(big_root: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    data = load_category(big_root, "big")
    return [load_image(s.path) for s in data.train], [load_image(s.path) for s in data.test]


def _fitted(train: list[np.ndarray]) -> PatchCore:
    model = PatchCore(PatchCoreConfig(**TILED))
    model.fit(train)
    return model


def _old_per_tile(model: PatchCore, image: np.ndarray, owner: int | None = None) -> tuple[float, np.ndarray]:
    """The path before the fast one: every tile on its own through the network and the search (``owner``: the
    leave-one-image-out search of before, one tile at a time), maps stitched with torch."""
    cfg = model.config
    total = np.zeros(image.shape[:2], np.float32)
    count = np.zeros(image.shape[:2], np.float32)
    scores = []
    for (y, x, h, w), tile in zip(tiling.tile_boxes(image.shape, cfg.tile, cfg.tile_overlap),
                                  tiling.crop_tiles(image, cfg.tile, cfg.tile_overlap), strict=True):
        batch = to_tensor([tile], cfg.input_spec)
        if owner is None:
            s, maps = model.forward(batch)
            score, amap = float(s[0]), maps[0]
        else:
            emb = model.embed(batch)
            gh, gw = emb.shape[-2:]
            flat = PatchcoreModel.reshape_embedding(emb)
            skip = model.image_entries(owner)
            dist, loc = model.search_index().leave_out_search(flat, skip)
            score = float(model._left_out_score(dist, loc, flat, skip))
            amap = model._smoother(dist.reshape(1, 1, gh, gw), (cfg.tile, cfg.tile))[0, 0]
        m = torch.nn.functional.interpolate(torch.as_tensor(amap)[None, None], size=(h, w), mode="bilinear",
                                            align_corners=False)[0, 0]
        total[y:y + h, x:x + w] += m.numpy()
        count[y:y + h, x:x + w] += 1.0
        scores.append(score)
    return max(scores), total / np.maximum(count, 1.0)


# ONNX Runtime rounds a batch of 12 tiles a little differently from 12 batches of one: 1e-4 relative.
RTOL = 1e-4


def test_fast_tiles_equal_the_old_per_tile_path(big_images: tuple[list[np.ndarray], list[np.ndarray]]) -> None:
    train, test = big_images
    model = _fitted(train)
    assert len(tiling.tile_boxes(test[0].shape, 64, 0.25)) == 12 > model.config.batch_size
    calls: list[int] = []
    forward = model.forward

    def counting(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(int(batch.shape[0]))
        return forward(batch)

    model.forward = counting  # type: ignore[method-assign]
    preds = model.predict(test)
    assert calls == [12] * len(test)  # all tiles of an image in one call, though batch_size is 4
    del model.forward
    for image, pred in zip(test, preds, strict=True):
        score, amap = _old_per_tile(model, image)
        assert pred.score == pytest.approx(score, rel=RTOL)
        assert np.allclose(pred.anomaly_map, amap, rtol=RTOL, atol=RTOL * float(amap.max()))


def test_tiled_leave_one_out_equals_one_tile_at_a_time(big_images: tuple[list[np.ndarray], list[np.ndarray]]) -> None:
    train, _ = big_images
    model = _fitted(train)
    preds = model.predict_left_out(train)
    own = model.predict(train)
    for i, (image, pred) in enumerate(zip(train, preds, strict=True)):
        score, amap = _old_per_tile(model, image, owner=i)
        assert pred.score == pytest.approx(score, rel=RTOL)
        assert np.allclose(pred.anomaly_map, amap, rtol=RTOL, atol=RTOL * float(amap.max()))
        assert pred.score >= own[i].score  # its own patches are skipped (equal where none is its nearest)


def test_tiled_calibration_reuses_the_fit_features(big_images: tuple[list[np.ndarray], list[np.ndarray]]) -> None:
    """Leave-one-image-out right after the fit takes the fit's own tile features (the backbone does not run again)
    and gives the scores and maps of the path that extracts them again (the fit's batches of 4 tiles against 12)."""
    train, _ = big_images
    model = _fitted(train)
    calls = counting_embed(model)
    reused = model.predict_left_out(train)
    assert calls == []  # no tile went through the network
    assert model.kept_features is None  # used once, then freed
    again = model.predict_left_out(train)  # nothing kept now: extracted again, 12 tiles per call
    assert calls == [12] * len(train)
    for a, b in zip(reused, again, strict=True):
        assert a.score == pytest.approx(b.score, rel=1e-5)
        assert a.anomaly_map.shape == b.anomaly_map.shape
        assert np.allclose(a.anomaly_map, b.anomaly_map, rtol=1e-5, atol=1e-5 * float(b.anomaly_map.max()))


def test_marking_a_tiled_image_ok_puts_its_tiles_in_the_bank(big_images: tuple[list[np.ndarray], list[np.ndarray]]) -> None:
    train, test = big_images
    model = _fitted(train)
    before = model.predict(test[-1:])[0]
    added = model.add_to_bank(test[-1:])
    assert added == 12 * 8 * 8  # 12 tiles of 8 x 8 patches, not the image squashed into one tile
    after = model.predict(test[-1:])[0]  # its own patches are in the bank now: distances 0 up to float rounding
    assert after.score < 1e-2 * before.score
    assert float(after.anomaly_map.max()) < 1e-2 * float(before.anomaly_map.max())


@pytest.fixture(scope="module")
def tiled_store(big_root: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    store = ModelStore(tmp_path_factory.mktemp("tiled_models"))
    det.train(load_category(big_root, "big"), "patchcore", TILED, store)
    return store


def test_a_tiled_model_round_trips_through_the_store(tiled_store: ModelStore,
                                                     big_images: tuple[list[np.ndarray], list[np.ndarray]]) -> None:
    train, test = big_images
    loaded = det.load(tiled_store.current("big", "patchcore"))
    assert loaded.detector.config.input_mode == "tiles" and loaded.manifest["data"]["calibration"] == "leave_one_image_out"
    fresh = _fitted(train)  # the same images and seed: the same bank
    assert torch.equal(loaded.detector.memory_bank, fresh.memory_bank)
    saved = [p.score for p in loaded.detector.predict(test)]
    assert saved == [p.score for p in fresh.predict(test)]
    assert loaded.calibration.familiarity_limit is not None  # the guard is fitted on the tiled maps


def test_a_tiled_model_through_the_service(tiled_store: ModelStore, big_root: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from core.line.service import ServiceConfig, create_app

    path = next((big_root / "big" / "test").rglob("*.png"))
    expected = det.load(tiled_store.current("big", "patchcore")).detector.predict([load_image(path)])[0].score
    app = create_app(ServiceConfig(tiled_store.root, line_log=tmp_path / "line.jsonl"))
    with TestClient(app) as client:
        for _ in range(600):
            if client.get("/ready").status_code == 200:
                break
            time.sleep(0.1)
        r = client.post("/v1/inspect/big", content=path.read_bytes(), headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    item = r.json()["results"][0]
    assert item["score"] == pytest.approx(expected, rel=1e-6)
    assert item["verdict"] in ("OK", "REVIEW", "DEFECT")


def test_a_tiled_model_exports_and_the_bundle_tiles_like_the_app(tiled_store: ModelStore, big_root: Path,
                                                                 tmp_path: Path) -> None:
    from core.line.export import export_bundle
    from core.verdict.inspection import inspect

    ref = tiled_store.current("big", "patchcore")
    with zipfile.ZipFile(export_bundle(ref, tmp_path / "b.zip")) as bundle:
        bundle.extractall(tmp_path / "b")
    params = json.loads((tmp_path / "b" / "params.json").read_text())
    assert params["tiles"] == {"tile": 64, "overlap": 0.25, "scale": 1.0} and params["height"] == 64
    paths = sorted((big_root / "big" / "test").rglob("*.png"))
    images = [load_image(p) for p in paths] + [np.asarray(Image.open(paths[0]).convert("RGB"))[:40, :50]]
    model = det.load(ref)
    app = inspect(model, images)
    found = bundle_inspect(tmp_path / "b", images)
    for a, b in zip(app, found, strict=True):
        assert b.verdict == a.verdict
        assert b.score == pytest.approx(a.score, rel=RTOL)
        assert b.anomaly_map.shape == a.anomaly_map.shape
        assert np.allclose(b.anomaly_map, a.anomaly_map, rtol=1e-3, atol=1e-3 * float(np.abs(a.anomaly_map).max()))


def test_grouped_coreset_covers_like_one_pass() -> None:
    from core.models.coreset import grouped_kcenter, kcenter_greedy

    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(20, 16, generator=gen) * 20
    groups = torch.arange(10).repeat_interleave(400)  # 10 "images", each 400 patches around 2 of the 20 centres
    x = centres[(groups * 2 + torch.randint(2, (4000,), generator=gen))] + torch.randn(4000, 16, generator=gen)
    picked = grouped_kcenter(x, groups, 40, first_share=0.1, projection_dim=0)
    assert picked.dtype == torch.int64 and len(set(picked.tolist())) == 40
    assert torch.equal(picked, grouped_kcenter(x, groups, 40, first_share=0.1, projection_dim=0))

    def radius(idx: torch.Tensor) -> float:
        return float(torch.cdist(x, x[idx]).min(dim=1).values.max())

    assert radius(picked) <= 2.0 * radius(kcenter_greedy(x, 40, projection_dim=0))  # composable: within 2x
    assert {int(g) for g in groups[picked]} == set(range(10))  # every image keeps some entries
