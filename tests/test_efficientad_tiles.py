"""EfficientAD's input modes (core/models/efficientad_tiles.py): the size rule of ``auto``, tiles trained on and
scored by, a tiled model through the store and the export bundle, tiny defects that only tiles see."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from core.data.dataset import load_category
from core.data.demo import surface
from core.data.imageio import load_image, save_png_atomic
from core.models import efficientad_tiles as tiles
from core.models.efficientad import EfficientAD, EfficientADConfig
from core.models.input_choice import auroc
from core.store import lifecycle as det
from core.store.model_store import ModelStore
from tests.conftest import EFFICIENTAD_TEST_SETTINGS, bundle_inspect

FAST: dict[str, Any] = {"train_batch": 2, "precision": "fp32", "batch_size": 9}
SIDE = 512  # 2 tiles of 256 px: "auto" tiles it (9 tiles of 256 px with the 25% overlap)


@pytest.mark.parametrize(("shape", "mode", "scale", "n"), [
    ((640, 640), "tiles", 1.0, 9),  # pcb_00041: defects of a few pixels on 640 x 640 scans
    ((400, 800), "squash", None, 0),  # juice_bottle_loco as we hold it: short side below 2 tiles
    ((300, 400), "squash", None, 0),  # magnetic_tile's larger crops
    ((512, 512), "tiles", 1.0, 9),
    ((1024, 1024), "tiles", 0.5, 9),  # 25 tiles at 1x are over AUTO_MAX_TILES: half resolution
    ((900, 900), "tiles", 0.5, 9),  # 25 tiles at 1x; at half resolution 450 px: one tile and more, 9 tiles
    ((820, 1000), "tiles", 0.5, 6),  # 410 x 500 px at half resolution: 2 x 3 tiles
    ((4000, 3000), "squash", None, 0),  # too many tiles even at half resolution
])
def test_auto_is_a_size_rule(shape: tuple[int, int], mode: str, scale: float | None, n: int) -> None:
    choice = tiles.choose_input([(*shape, 3)] * 5, EfficientADConfig())
    assert choice.mode == mode and choice.settings["input_mode"] == mode and not choice.scored
    assert choice.settings.get("scale") == scale
    assert ("tiles" in choice.label) == (mode == "tiles") and (f"({n} per" in choice.label or n == 0)
    assert "size rule" in choice.reason


def test_input_mode_settings_are_checked_and_old_settings_read_as_squashed() -> None:
    with pytest.raises(ValueError, match="input mode"):
        EfficientADConfig(input_mode="native")
    with pytest.raises(ValueError, match="multiples of 256"):
        EfficientADConfig(tile=320)
    assert EfficientADConfig().input_mode == "auto"
    assert EfficientADConfig.from_dict({"structure": "lite", "steps": 3}).input_mode == "squash"
    assert EfficientADConfig(input_mode="tiles", tile=256, height=512, width=512).input_spec.height == 256


def test_training_tiles_are_bounded_and_seeded() -> None:
    images = [np.zeros((640, 640, 3), np.uint8) + i for i in range(4)]
    config = EfficientADConfig(input_mode="tiles")
    assert len(tiles.training_tiles(images, config)) == 36
    few = tiles.training_tiles(images, config, limit=10)
    again = tiles.training_tiles(images, config, limit=10)
    assert len(few) == 10 and all(np.array_equal(a, b) for a, b in zip(few, again, strict=True))
    every = tiles.training_tiles(images, config)
    assert all(any(np.array_equal(t, e) for e in every) for t in few)  # a draw of the image's own tiles


def test_training_tiles_cut_only_the_drawn_images(monkeypatch: pytest.MonkeyPatch) -> None:
    """The draw picks (image, tile) first and cuts only images with a drawn tile: a large set's every tile is never
    held at once (1,000 images of 640 px: 9,000 tiles, 1.7 GB of copies, for 3,000 kept)."""
    images = [np.full((640, 640, 3), i, np.uint8) for i in range(50)]
    cut: list[int] = []
    real = tiles.image_tiles
    monkeypatch.setattr(tiles, "image_tiles", lambda image, config: (cut.append(int(image[0, 0, 0])), real(image, config))[1])
    few = tiles.training_tiles(images, EfficientADConfig(input_mode="tiles"), limit=3)
    assert len(few) == 3 and len(cut) <= 3
    assert {int(t[0, 0, 0]) for t in few} <= set(cut)


def _tiny_defect(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A dark dot of 3 x 3 px: 1.5 px once squashed to 256, all 3 px in a native-resolution tile."""
    out = image.copy()
    y, x = (int(v) for v in rng.integers(40, SIDE - 40, 2))
    out[y:y + 3, x:x + 3] = 20
    return out


def test_tiles_see_tiny_defects_that_the_resized_input_loses() -> None:
    rng = np.random.default_rng(5)
    train = [surface(rng, SIDE) for _ in range(8)]
    held = [surface(rng, SIDE) for _ in range(2)]
    good = [surface(rng, SIDE) for _ in range(6)]
    bad = [_tiny_defect(surface(rng, SIDE), rng) for _ in range(6)]
    result = {}
    for mode in ("squash", "auto"):
        model = EfficientAD(EfficientADConfig(steps=60, input_mode=mode, **FAST))
        info = model.fit_good(train, held)
        result[mode] = auroc([p.score for p in model.predict(good)], [p.score for p in model.predict(bad)])
        assert model.config.input_mode == ("squash" if mode == "squash" else "tiles")
    assert info["training_tiles"] == 72 and info["input_choice"]["mode"] == "tiles"
    assert result["auto"] >= result["squash"] + 0.2, result


# ---------------------------------------------------------------------- a tiled model in the store and the bundle
@pytest.fixture(scope="module")
def tiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelStore, det.Detector]:
    """A category ``board`` of 512 x 512 images, trained with the defaults' ``auto`` (-> tiles) for 3 steps; the
    store and the detector ``det.train`` fitted in memory."""
    root = tmp_path_factory.mktemp("board")
    rng = np.random.default_rng(2)
    for i in range(10):
        save_png_atomic(surface(rng, SIDE), root / "board" / "train" / "good" / f"{i:03d}.png")
    for i in range(2):
        save_png_atomic(surface(rng, SIDE), root / "board" / "test" / "good" / f"{i:03d}.png")
        save_png_atomic(_tiny_defect(surface(rng, SIDE), rng), root / "board" / "test" / "dot" / f"{i:03d}.png")
    store = ModelStore(tmp_path_factory.mktemp("models"))
    built: list[det.Detector] = []
    real_build = det.build

    def keep(kind: str, settings: dict) -> det.Detector:
        built.append(real_build(kind, settings))
        return built[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(det, "build", keep)
        det.train(load_category(root, "board"), "efficientad", {**EFFICIENTAD_TEST_SETTINGS, "batch_size": 9}, store)
    return root, store, built[0]


def test_a_tiled_model_records_its_choice_and_scores_as_saved(tiled: tuple[Path, ModelStore, det.Detector],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    root, store, trained = tiled
    ref = store.current("board", "efficientad")
    manifest = store.read_manifest(ref)
    assert manifest["settings"]["input_mode"] == "tiles" and manifest["input_choice"]["mode"] == "tiles"
    assert det.input_choice_of(manifest) is not None and manifest["train"]["training_tiles"] == 8 * 9
    images = [load_image(p) for p in sorted((root / "board" / "test").rglob("*.png"))]
    images.append(images[0][:300, :200])  # smaller than 2 tiles: one tile, resized up
    calls: list[int] = []
    a = det.load(ref).detector
    assert isinstance(a, EfficientAD)
    real = a.forward

    def counted(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(int(batch.shape[0]))
        return real(batch)

    monkeypatch.setattr(a, "forward", counted)
    first = a.predict(images)
    assert calls[:len(images) - 1] == [9] * (len(images) - 1)  # all tiles of an image in one network call
    second = det.load(ref).detector.predict(images)
    in_memory = trained.predict(images)  # the detector det.train fitted, before it was saved
    # runtime "auto": the first load times OpenVINO against ONNX Runtime and may run the other fp32 backend than a
    # later load (or the in-memory model), so scores agree to fp32 rounding, not bit for bit (seen: 6e-8 relative)
    for p, q, r, image in zip(first, second, in_memory, images, strict=True):
        assert p.score == pytest.approx(q.score, rel=1e-6, abs=1e-7) == pytest.approx(r.score, rel=1e-6, abs=1e-7)
        scale = float(np.abs(p.anomaly_map).max()) + 1e-12
        assert np.allclose(p.anomaly_map, q.anomaly_map, rtol=0, atol=1e-6 * scale)
        assert np.allclose(p.anomaly_map, r.anomaly_map, rtol=0, atol=1e-6 * scale)
        assert p.anomaly_map.shape == image.shape[:2]


def test_a_tiled_model_exports_and_the_bundle_tiles_like_the_app(tiled: tuple[Path, ModelStore, det.Detector],
                                                                 tmp_path: Path) -> None:
    from core.line.export import export_bundle
    from core.verdict.inspection import inspect

    root, store, _ = tiled
    ref = store.current("board", "efficientad")
    with zipfile.ZipFile(export_bundle(ref, tmp_path / "b.zip")) as bundle:
        bundle.extractall(tmp_path / "b")
    params = json.loads((tmp_path / "b" / "params.json").read_text())
    assert params["tiles"] == {"tile": 256, "overlap": 0.25, "scale": 1.0} and params["height"] == 256
    images = [load_image(p) for p in sorted((root / "board" / "test").rglob("*.png"))]
    app = inspect(det.load(ref), images)
    found = bundle_inspect(tmp_path / "b", images)
    for a, b in zip(app, found, strict=True):
        assert b.verdict == a.verdict and a.anomaly_map is not None and b.anomaly_map is not None
        assert b.score == pytest.approx(a.score, rel=1e-3, abs=1e-4)
        assert np.allclose(b.anomaly_map, a.anomaly_map, rtol=1e-3, atol=1e-3 * float(np.abs(a.anomaly_map).max()))
