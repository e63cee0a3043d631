"""The automatic input mode (core/models/input_choice.py): decided from good images and synthetic small defects,
recorded in the manifest, readable from old manifests, shown on the Models page."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.data.synthetic import PAINTERS, paste_defect, synthetic_defects
from core.models.input_choice import (
    AUTO,
    CandidateScore,
    InputChoice,
    auroc_se,
    candidates,
    choose_input,
    decide,
    tie_margin,
)
from core.models.patchcore import PatchCore, PatchCoreConfig

SIDE = 192  # images 3x the model input: the small defects vanish when squashed
# torch: the same network numerics on every machine (runtime "auto" measures OpenVINO against ONNX Runtime here)
SMALL = {"height": 64, "width": 64, "tile": 64, "coreset_ratio": 0.1, "batch_size": 8, "runtime": "torch"}


def fine_pattern(rng: np.random.Generator, side: int = SIDE) -> np.ndarray:
    """A finely structured surface: 2 px stripes (aliased away when squashed 3x) and a little noise."""
    xx = np.mgrid[:side, :side][1]
    grey = 70 + 120 * ((xx // 2) % 2) + rng.normal(0, 4, (side, side))
    return np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def smooth_surface(rng: np.random.Generator, side: int = SIDE) -> np.ndarray:
    """A plain surface: a gentle gradient and a little noise, where even a small spot stands out when squashed."""
    yy, xx = np.mgrid[:side, :side] / side
    a, b = rng.uniform(-20, 20, 2)
    grey = 128 + a * yy + b * xx + rng.normal(0, 2, (side, side))
    return np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def goods(make, n: int = 24, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [make(rng) for _ in range(n)]


def config(**extra: object) -> PatchCoreConfig:
    return PatchCoreConfig.from_dict({**SMALL, "input_mode": AUTO, **extra})


def test_synthetic_defects_are_small_visible_and_seeded() -> None:
    images = goods(fine_pattern, 4)
    first = synthetic_defects(images[:2], images[2:], seed=5)
    again = synthetic_defects(images[:2], images[2:], seed=5)
    assert [d.kind for d in first] == list(PAINTERS) * 2
    for d, e in zip(first, again, strict=True):
        assert np.array_equal(d.image, e.image) and np.array_equal(d.mask, e.mask)
        ys, xs = np.nonzero(d.mask)
        extent = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
        assert 1 <= extent <= int(0.03 * SIDE) + 6, (d.kind, extent)  # 1-3% of the side (a scratch's width aside)
        changed = np.abs(d.image.astype(int) - images[d.source].astype(int)).sum(axis=2) > 0
        assert changed.any() and not changed[~d.mask].any()  # only inside its mask
    with pytest.raises(ValueError, match="expected a synthetic defect kind"):
        paste_defect(images[0], "dent", np.random.default_rng(0))


def test_candidates_follow_the_size_ratio() -> None:
    cfg = PatchCoreConfig(input_mode=AUTO)
    assert [c.mode for c in candidates([(256, 256, 3)] * 3, cfg)] == ["squash"]
    assert [c.mode for c in candidates([(400, 800, 3)] * 3, cfg)] == ["squash", "native", "tiles"]
    big = candidates([(1024, 1024, 3)] * 3, cfg)
    assert [(c.mode, c.settings.get("scale")) for c in big] == [("squash", None), ("tiles", 0.5), ("tiles", 1.0)]
    assert big[1].expected_ms < big[2].expected_ms


def _scored(*aurocs: float) -> list[CandidateScore]:
    labels = ("resized", "tiles at 0.5x", "tiles at 1x")
    return [CandidateScore("squash" if i == 0 else "tiles", labels[i], {"i": i}, 1.0 + 10 * i, True, a)
            for i, a in enumerate(aurocs)]


def test_a_tie_is_within_the_error_of_the_difference_not_only_the_bests() -> None:
    # Hand-computed (Hanley & McNeil, 8 goods, 24 defects): SE(0.990) = 0.0156, SE(0.958) = 0.0335, so the
    # resized input's tie margin is hypot(0.0156, 0.0335) = 0.037 > 0.990 - 0.958 = 0.032: a tie, the cheaper
    # wins. The best's error alone (0.0156, i.e. the 0.02 floor) called the 0.032 gap evidence and took tiles.
    assert auroc_se(0.99, 8, 24) == pytest.approx(0.01558, abs=1e-4)
    assert auroc_se(0.958, 8, 24) == pytest.approx(0.03349, abs=1e-4)
    assert tie_margin(0.99, 0.958, 8, 24) == pytest.approx(0.03694, abs=1e-4)
    pick, why, margin, marked = decide(_scored(0.958, 0.984, 0.990), 8, 24, 100.0)
    assert pick.label == "resized" and margin == pytest.approx(0.037) and "within 0.04" in why, why
    assert [c.margin for c in marked] == [pytest.approx(0.037), pytest.approx(0.025), None]
    # pcb_00041's figures: 0.698 tiles against 0.469 resized, tie margin hypot(0.1006, 0.1206) = 0.157 < 0.229.
    pick, why, margin, _ = decide(_scored(0.469, 0.698), 8, 24, 100.0)
    assert pick.label == "tiles at 0.5x" and margin == pytest.approx(0.157) and "more than 0.16" in why, why
    # Nothing separates them: the floor of 0.02 decides (a gap of 0.01 at AUROC 1 is a tie).
    assert tie_margin(1.0, 1.0, 8, 24) == 0.02
    assert decide(_scored(0.99, 1.0), 8, 24, 100.0)[0].label == "resized"


def test_images_the_size_of_the_input_stay_resized_without_scoring() -> None:
    images = goods(lambda rng: fine_pattern(rng, 64), 8)
    choice = choose_input(images, config(), PatchCore)
    assert (choice.mode, choice.scored) == ("squash", False)
    assert "1.00x the model input" in choice.reason


def test_a_tiny_defect_category_picks_tiles() -> None:
    choice = choose_input(goods(fine_pattern), config(), PatchCore)
    assert choice.scored and choice.mode == "tiles", choice.summary()
    resized = choice.candidates[0]
    chosen = next(c for c in choice.candidates if c.settings == choice.settings)
    assert resized.mode == "squash" and resized.margin is not None, choice.summary()
    assert (chosen.auroc or 0.0) > (resized.auroc or 0.0) + resized.margin, choice.summary()  # beyond the noise
    again = choose_input(goods(fine_pattern), config(), PatchCore)  # deterministic for a seed
    strip = lambda c: {**c.to_dict(), "seconds": 0, "candidates": [{**d, "measured_ms": 0} for d in c.to_dict()["candidates"]]}  # noqa: E731
    assert strip(again) == strip(choice)


def test_a_large_defect_category_keeps_resized() -> None:
    # Small spots on a plain surface survive the resize: every candidate sees them (AUROCs near 1) and no gap is
    # beyond the noise of 8 goods and 24 defects, so the cheapest input stays.
    choice = choose_input(goods(smooth_surface), config(), PatchCore)
    assert choice.scored and choice.mode == "squash", choice.summary()
    assert all(c.auroc is not None for c in choice.candidates)


def test_the_budget_rules_out_expensive_candidates() -> None:
    choice = choose_input(goods(fine_pattern), config(auto_budget_ms=1.0), PatchCore)
    assert choice.mode == "squash" and "budget" in choice.reason, choice.summary()


def _category(root: Path, make) -> Path:
    """The category of :func:`goods` on disk (the same images in the same order: the same choice)."""
    from core.data.imageio import save_png_atomic

    for i, image in enumerate(goods(make)):
        save_png_atomic(image, root / "fine" / "train" / "good" / f"{i:03d}.png")
    return root


def test_training_records_the_choice_and_the_model_loads_with_it(tmp_path: Path) -> None:
    from core.data.dataset import load_category
    from core.store import lifecycle as det
    from core.store.model_store import ModelStore

    root = _category(tmp_path / "data", fine_pattern)
    store = ModelStore(tmp_path / "models")
    result = det.train(load_category(root, "fine"), "patchcore", SMALL, store)
    manifest = store.read_manifest(result.ref)
    assert manifest["settings"]["input_mode"] == "tiles"  # resolved: a loaded model never sees "auto"
    choice = det.input_choice_of(manifest)
    assert choice is not None and choice.mode == "tiles" and choice.scored
    assert InputChoice.from_dict(json.loads(json.dumps(choice.to_dict()))) == choice
    model = det.load(result.ref)
    assert model.detector.config.input_mode == "tiles"
    assert model.detector.predict([fine_pattern(np.random.default_rng(9))])[0].anomaly_map.shape == (SIDE, SIDE)


def test_old_manifests_without_a_choice_load_as_squashed(trained_store: Path, tmp_path: Path) -> None:
    import shutil

    from core.store import lifecycle as det
    from core.store.model_store import ModelStore

    copy = tmp_path / "models"
    shutil.copytree(trained_store, copy)
    store = ModelStore(copy)
    ref = store.current("demo_metal", "patchcore")
    path = store.path(ref) / "manifest.json"
    manifest = json.loads(path.read_text())
    assert det.input_choice_of(manifest) is not None  # trained with the default: recorded
    manifest.pop("input_choice")
    manifest["settings"].pop("input_mode")  # as saved before the input mode existed
    path.write_text(json.dumps(manifest))
    model = det.load(ref)
    assert det.input_choice_of(model.manifest) is None
    assert model.detector.config.input_mode == "squash"


def test_models_page_shows_what_was_chosen_and_why(demo_root: Path, trained_store: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from core.store.model_store import ModelStore
    from tests.conftest import dashboard_env
    from tests.test_app import page

    store = ModelStore(dashboard_env(demo_root, trained_store, tmp_path, monkeypatch))
    ref = store.current("demo_metal", "patchcore")
    path = store.path(ref) / "manifest.json"
    manifest = json.loads(path.read_text())
    scored = [{"mode": "squash", "label": "resized to 256x256", "settings": {"input_mode": "squash"},
               "expected_ms": 8.0, "within_budget": True, "auroc": 0.612, "measured_ms": 9.0},
              {"mode": "tiles", "label": "tiles of 256 px at 1x (9 per 640x640 image)",
               "settings": {"input_mode": "tiles", "tile": 256, "scale": 1.0}, "expected_ms": 75.0,
               "within_budget": True, "auroc": 0.934, "measured_ms": 70.0}]
    manifest["input_choice"] = {"mode": "tiles", "settings": scored[1]["settings"], "label": scored[1]["label"],
                                "reason": "best synthetic-defect AUROC 0.934.", "candidates": scored, "scored": True,
                                "budget_ms": 100.0, "margin": 0.02, "seed": 0, "ratio": 2.5,
                                "images": {"fit": 16, "held_out": 8, "defects": 24}, "seconds": 12.0}
    path.write_text(json.dumps(manifest))
    at = page("models")
    shown = "\n".join(str(m.value) for m in at.markdown) + "\n".join(str(c.value) for c in at.caption)
    assert "tiles of 256 px at 1x (9 per 640x640 image)" in shown and "chosen automatically" in shown
    assert "Budget 100 ms/image" in shown
    table = next(d.value for d in at.dataframe if "synthetic-defect AUROC" in d.value.columns)
    assert list(table["synthetic-defect AUROC"]) == [0.612, 0.934]
    assert list(table["expected ms/image"]) == [8.0, 75.0]
    assert list(table["chosen"]) == ["", "●"]
