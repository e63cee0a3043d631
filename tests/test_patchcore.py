"""PatchCore: fit -> save -> load -> predict round trip, map sizes, fast and stock paths agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.data.dataset import load_category
from core.data.imageio import load_image
from core.models.patchcore import PatchCore, PatchCoreConfig
from core.store import lifecycle as det
from core.store.model_store import ModelStore
from tests.conftest import PATCHCORE_TEST_SETTINGS, counting_embed, rgb


@pytest.fixture(scope="module")
def fitted(demo_root: Path) -> PatchCore:
    data = load_category(demo_root, "demo_metal")
    model = PatchCore(PatchCoreConfig.from_dict(PATCHCORE_TEST_SETTINGS))
    model.fit([load_image(s.path) for s in data.train])
    return model


def test_defects_score_higher(fitted: PatchCore, demo_root: Path) -> None:
    data = load_category(demo_root, "demo_metal")
    preds = fitted.predict([load_image(s.path) for s in data.test])
    good = [p.score for p, s in zip(preds, data.test, strict=True) if s.label == 0]
    bad = [p.score for p, s in zip(preds, data.test, strict=True) if s.label == 1]
    assert np.mean(bad) > np.mean(good)
    assert np.median(bad) > max(good) * 0.9


@pytest.mark.parametrize("shape", [(64, 64), (50, 130), (301, 77)])
def test_map_has_original_size(fitted: PatchCore, shape: tuple[int, int]) -> None:
    pred = fitted.predict([rgb(*shape)])[0]
    assert pred.anomaly_map.shape == shape
    assert pred.anomaly_map.dtype == np.float32 and np.isfinite(pred.anomaly_map).all()


def test_fast_search_equals_stock_anomalib_forward(fitted: PatchCore) -> None:
    images = [rgb(64, 64, seed=i) for i in range(3)]
    stock = PatchCore(PatchCoreConfig.from_dict({**PATCHCORE_TEST_SETTINGS, "search": "stock"}))
    stock.load_state(fitted.state())
    fast = [p for p in fitted.predict(images)]
    ref = [p for p in stock.predict(images)]
    for a, b in zip(fast, ref, strict=True):
        assert a.score == pytest.approx(b.score, rel=1e-4, abs=1e-5)
        assert np.allclose(a.anomaly_map, b.anomaly_map, rtol=1e-4, atol=1e-4)


def test_hnsw_close_to_exact(fitted: PatchCore) -> None:
    images = [rgb(64, 64, seed=i) for i in range(2)]
    approx = PatchCore(PatchCoreConfig.from_dict({**PATCHCORE_TEST_SETTINGS, "search": "hnsw"}))
    approx.load_state(fitted.state())
    for a, b in zip(fitted.predict(images), approx.predict(images), strict=True):
        assert b.score == pytest.approx(a.score, rel=0.05)


def test_native_mode_keeps_aspect(demo_root: Path) -> None:
    cfg = PatchCoreConfig.from_dict({**PATCHCORE_TEST_SETTINGS, "input_mode": "native", "scale": 0.5})
    model = PatchCore(cfg)
    model.fit([rgb(64, 96, seed=i) for i in range(4)])
    pred = model.predict([rgb(80, 120, seed=9), rgb(64, 96, seed=10)])
    assert [p.anomaly_map.shape for p in pred] == [(80, 120), (64, 96)]


def test_stock_coreset_path_runs(demo_root: Path) -> None:
    cfg = PatchCoreConfig.from_dict({**PATCHCORE_TEST_SETTINGS, "coreset": "stock"})
    model = PatchCore(cfg)
    report = model.fit([rgb(64, 64, seed=i) for i in range(3)])
    assert report.memory_bank == round(report.num_patches * cfg.coreset_ratio)


def test_round_trip_identical_scores(demo_root: Path, tmp_path: Path) -> None:
    data = load_category(demo_root, "demo_metal")
    store = ModelStore(tmp_path)
    result = det.train(data, "patchcore", PATCHCORE_TEST_SETTINGS, store)
    assert result.ref.version == 1 and store.current("demo_metal", "patchcore") == result.ref
    images = [load_image(s.path) for s in data.test[:4]]
    first = det.load(store.current("demo_metal", "patchcore"))
    again = det.load(store.current("demo_metal", "patchcore"))
    for a, b in zip(first.detector.predict(images), again.detector.predict(images), strict=True):
        assert a.score == b.score
        assert np.array_equal(a.anomaly_map, b.anomaly_map)
    manifest = first.manifest
    assert manifest["category"] == "demo_metal" and manifest["kind"] == "patchcore"
    assert manifest["backbone"] == "tf_efficientnet_lite0" and manifest["layers"] == ["blocks.2", "blocks.4"]
    # every good image in the bank, and every one scored without its own entries for calibration
    assert manifest["data"]["num_holdout_images"] == 0 and manifest["data"]["num_train_images"] == 16
    assert manifest["data"]["calibration"] == "leave_one_image_out"
    cal = first.calibration
    assert "leave-one-image-out" in cal.source and cal.num_images == 16 and len(cal.good_scores or ()) == 16
    assert cal.promise is not None and cal.promise.n == 16 and "too few images for a promise of 5%" in cal.promise.statement
    assert first.detector.bank_image is not None
    left_out = first.detector.predict_left_out([load_image(s.path) for s in data.train])
    assert [p.score for p in left_out] == pytest.approx(list(cal.good_scores or ()), rel=1e-5)
    assert set(manifest["versions"]) >= {"torch", "anomalib", "timm"}


def test_pooled_features_shape(fitted: PatchCore) -> None:
    feats = fitted.pooled_features([rgb(64, 64), rgb(70, 40)])
    assert feats.shape == (2, 152) and feats.dtype == np.float32


def test_empty_bank_refuses_to_predict() -> None:
    model = PatchCore(PatchCoreConfig.from_dict(PATCHCORE_TEST_SETTINGS))
    with pytest.raises(RuntimeError, match="empty memory bank"):
        model.predict([rgb(64, 64)])
    with pytest.raises(ValueError, match="memory bank"):
        model.load_state({"memory_bank": torch.empty(0)})


@pytest.mark.parametrize(
    ("mode", "shape", "expected"),
    [("squash", (600, 400), (64, 64)), ("native", (100, 300), (48, 152)), ("native", (4000, 2000), (512, 256)),
     ("native", (20, 20), (32, 32))],
)
def test_input_target_size(mode: str, shape: tuple[int, int], expected: tuple[int, int]) -> None:
    from core.models.preprocess import InputSpec

    spec = InputSpec(64, 64, mode=mode, scale=0.5, max_side=512)
    assert spec.target_size(shape) == expected


def test_full_bank_keeps_every_patch_and_scores_its_own_images_zero() -> None:
    model = PatchCore(PatchCoreConfig.from_dict({**PATCHCORE_TEST_SETTINGS, "coreset_ratio": 1.0}))
    images = [rgb(64, 64, seed=i) for i in range(2)]
    report = model.fit(images)
    assert report.memory_bank == report.num_patches == 2 * 8 * 8
    unseen = model.predict([rgb(64, 64, seed=99)])[0].score
    for pred in model.predict(images):  # every patch is in the bank: distance 0 up to |a|^2 - 2ab + |b|^2 rounding
        assert pred.score < 0.02 * unseen


# ------------------------------------------------------------- leave-one-image-out (calibration on all images)
def _hand_built(images: list[np.ndarray], search: str = "exact") -> tuple[PatchCore, list[torch.Tensor]]:
    """A model whose bank is every patch of ``images`` (entry owners known), and each image's patch features."""
    from core.models.preprocess import to_tensor

    model = PatchCore(PatchCoreConfig.from_dict({**PATCHCORE_TEST_SETTINGS, "search": search, "runtime": "torch"}))
    feats = [model.embed(to_tensor([im], model.config.input_spec)).flatten(2)[0].T.contiguous() for im in images]
    owners = torch.cat([torch.full((f.shape[0],), i, dtype=torch.int64) for i, f in enumerate(feats)])
    order = torch.randperm(owners.numel(), generator=torch.Generator().manual_seed(0))  # not grouped on purpose
    model.set_memory_bank(torch.cat(feats)[order], owners[order])
    return model, feats


def test_left_out_patches_never_find_their_own_image() -> None:
    images = [rgb(64, 64, seed=i) for i in range(3)]
    model, feats = _hand_built(images)
    assert bool((model.bank_image[1:] >= model.bank_image[:-1]).all())  # grouped by image whatever the input order
    own = model.predict(images)[0].score  # its own patches in the bank: ~0 (up to |a|^2 - 2ab + |b|^2 rounding)
    assert own < 0.05 * model.predict_left_out(images)[0].score
    index = model.search_index()
    for i, f in enumerate(feats):
        lo, hi = model.image_entries(i)
        assert (lo, hi) == (i * 64, (i + 1) * 64)
        dist, loc = index.leave_out_search(f, (lo, hi))
        others = torch.cat([g for j, g in enumerate(feats) if j != i])
        brute = torch.cdist(f.double(), others.double()).min(dim=1).values.float()
        assert torch.allclose(dist, brute, rtol=1e-4, atol=1e-4)
        assert dist.min() > 0.1  # never its own patch (distance 0)
        top = int(dist.argmax())
        assert int(model.bank_image[loc[top]]) != i


@pytest.mark.parametrize("ratio", [0.05, 0.3])
def test_left_out_prediction_equals_a_bank_without_that_image(ratio: float) -> None:
    """Coreset banks (some images keep few or no entries): each left-out prediction equals a fresh model whose
    bank lacks that image's entries, score (anomalib's re-weighting included) and map."""
    images = [rgb(64, 64, seed=10 + i) for i in range(5)]
    settings = {**PATCHCORE_TEST_SETTINGS, "coreset_ratio": ratio, "search": "exact", "runtime": "torch"}
    model = PatchCore(PatchCoreConfig.from_dict(settings))
    model.fit(images)
    assert model.bank_image is not None and model.bank_image.shape[0] == model.memory_bank.shape[0]
    left_out = model.predict_left_out(images)
    brute = PatchCore(model.config)
    for i, image in enumerate(images):
        brute.set_memory_bank(model.memory_bank[model.bank_image != i])
        ref = brute.predict([image])[0]
        assert left_out[i].score == pytest.approx(ref.score, rel=1e-4, abs=1e-5)
        assert np.allclose(left_out[i].anomaly_map, ref.anomaly_map, rtol=1e-4, atol=1e-4)
    full = model.predict(images)
    assert sum(a.score > b.score + 1e-6 for a, b in zip(left_out, full, strict=True)) >= 1  # own entries mattered


def test_left_out_hnsw_close_to_exact() -> None:
    images = [rgb(64, 64, seed=20 + i) for i in range(3)]
    exact, _ = _hand_built(images, "exact")
    approx, _ = _hand_built(images, "hnsw")
    for a, b in zip(exact.predict_left_out(images), approx.predict_left_out(images), strict=True):
        assert b.score == pytest.approx(a.score, rel=0.05)


@pytest.mark.parametrize(("mode", "shapes"), [("squash", [(64, 64)] * 5),
                                              ("native", [(64, 96), (80, 120), (64, 96), (80, 120), (64, 96)])])
def test_calibration_reuses_the_fit_features(mode: str, shapes: list[tuple[int, int]]) -> None:
    """Leave-one-image-out right after the fit takes the fit's own features (no backbone run) and gives the scores
    and maps of extracting them again (native: images of two sizes, batched by size, in mixed order)."""
    images = [rgb(h, w, seed=40 + i) for i, (h, w) in enumerate(shapes)]
    settings = {**PATCHCORE_TEST_SETTINGS, "input_mode": mode, "scale": 0.5 if mode == "native" else 1.0,
                "coreset_ratio": 0.3, "batch_size": 2}
    model = PatchCore(PatchCoreConfig.from_dict(settings))
    model.fit(images)
    calls = counting_embed(model)
    reused = model.predict_left_out(images)
    assert calls == [] and model.kept_features is None  # no backbone run; the features freed once used
    again = model.predict_left_out(images)
    assert sum(calls) == len(images)
    for a, b in zip(reused, again, strict=True):
        assert a.score == pytest.approx(b.score, rel=1e-5)
        assert a.anomaly_map.shape == b.anomaly_map.shape
        assert np.allclose(a.anomaly_map, b.anomaly_map, rtol=1e-5, atol=1e-5 * float(b.anomaly_map.max()))


def test_kept_features_serve_only_the_fit_images_of_this_bank() -> None:
    images = [rgb(64, 64, seed=50 + i) for i in range(3)]
    settings = {**PATCHCORE_TEST_SETTINGS, "input_mode": "squash", "coreset_ratio": 0.3, "runtime": "torch"}
    model = PatchCore(PatchCoreConfig.from_dict(settings))
    model.fit(images)
    calls = counting_embed(model)
    other = [images[0], rgb(64, 64, seed=99), images[2]]  # not the training images: extracted, not looked up
    model.predict_left_out(other)
    assert sum(calls) == 3
    model.fit(images)
    loaded = PatchCore(model.config)
    loaded.fit(images[::-1])
    loaded.load_state(model.state())  # another model's bank: the features of its own last fit are dropped
    assert loaded.kept_features is None


def test_features_of_a_fit_on_another_device_are_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fit whose features came from another device (CUDA, TF32 products) keeps none for calibration: the line
    scores on the CPU, so calibration must extract there too (the scores it calibrates are the line's)."""
    from core.models import patchcore

    images = [rgb(64, 64, seed=60 + i) for i in range(3)]
    settings = {**PATCHCORE_TEST_SETTINGS, "input_mode": "squash", "coreset_ratio": 0.3, "runtime": "torch"}
    model = PatchCore(PatchCoreConfig.from_dict(settings))
    monkeypatch.setattr(patchcore, "compute_device", lambda: torch.device("cuda"))
    monkeypatch.setattr(model, "_embed_on", lambda _device, batch: model.embed(batch))  # no CUDA here: CPU values
    model.fit(images)
    assert model.kept_features is None
    calls = counting_embed(model)
    model.predict_left_out(images)
    assert sum(calls) == len(images)  # calibration ran the CPU backbone


def test_input_candidates_run_the_model_s_compiled_network() -> None:
    """The automatic input choice's quick models use the model's runtime and its one compiled network (no torch
    forward passes, no compile per candidate)."""
    from core.models import input_choice

    model = PatchCore(PatchCoreConfig.from_dict({**PATCHCORE_TEST_SETTINGS, "tile": 64, "runtime": "onnx"}))
    built: list[PatchCore] = []

    def build(config: PatchCoreConfig) -> PatchCore:
        built.append(model._quick_model(config))
        return built[-1]

    images = [rgb(200, 200, seed=60 + i) for i in range(8)]
    choice = input_choice.choose_input(images, model.config, build)
    assert choice.scored and {b.config.input_mode for b in built} == {"squash", "tiles"}
    assert all(b.config.runtime == "onnx" and b._graph is model._graph for b in built)
    model.fit(images)
    assert model._graph is not None and model._graph is built[0]._graph


def test_bank_images_saved_and_old_models_still_load() -> None:
    images = [rgb(64, 64, seed=30 + i) for i in range(3)]
    model = PatchCore(PatchCoreConfig.from_dict({**PATCHCORE_TEST_SETTINGS, "runtime": "torch"}))
    model.fit(images)
    state = model.state()
    assert torch.equal(state["bank_image"], model.bank_image)
    again = PatchCore(model.config)
    again.load_state(state)
    assert torch.equal(again.bank_image, model.bank_image)
    old = PatchCore(model.config)
    old.load_state({"memory_bank": state["memory_bank"]})  # saved before banks recorded their images
    assert old.bank_image is None and old.predict(images[:1])[0].score == model.predict(images[:1])[0].score
    with pytest.raises(ValueError, match="saved without it"):
        old.predict_left_out(images)
    added = again.add_to_bank(images[:1])
    assert again.bank_image is not None and int((again.bank_image == -1).sum()) == added


def test_patchcore_calibrates_leave_one_out_and_efficientad_keeps_its_hold_out() -> None:
    from core.models.efficientad import EfficientAD

    assert issubclass(PatchCore, det.LeaveOneOut)
    assert not issubclass(EfficientAD, det.LeaveOneOut)  # k-fold would mean k trainings: 20% held out, as before
