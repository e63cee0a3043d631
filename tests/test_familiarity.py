"""Unfamiliar-image guard and minimum size: hand-computed limits, the guard on other products and on defects,
NO VERDICT for images too small to judge (CLI and core), warm-up at load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.cli import main
from core.data.imageio import load_image, save_png_atomic
from core.scores import familiarity as fam
from core.store import lifecycle as det
from core.store.model_store import ModelStore
from core.types import Prediction
from core.verdict import inspection


def _pred(values: np.ndarray) -> Prediction:
    return Prediction(float(values.max()), np.asarray(values, dtype=np.float32), 1.0)


@pytest.mark.parametrize(
    ("medians", "expected"),
    [
        ([1.0, 2.0, 3.0], 3.0 + 3.0 * (3.0 - 2.0)),               # top 3, median 2: spread term 3 > relative 0.6
        ([10.0, 10.0, 10.0, 10.5], 10.5 + 0.2 * 10.5),            # median 10: relative 2.1 > spread term 1.5
        ([20.0, 20.05, 20.1], 20.1 + 0.2 * 20.1),                 # tight spread: the relative term (4.02 > 0.15)
        ([-0.3, -0.2, -0.1], -0.1 + 3.0 * 0.1),                   # maps below zero (EfficientAD): spread term
    ],
)
def test_fit_limit_hand_computed(medians: list[float], expected: float) -> None:
    preds = [_pred(np.full((4, 4), m)) for m in medians]
    assert fam.fit_limit(preds) == pytest.approx(expected)


def test_fit_limit_needs_three_images() -> None:
    assert fam.fit_limit([_pred(np.zeros((2, 2)))] * 2) is None


def test_typical_anomaly_ignores_a_local_defect() -> None:
    amap = np.zeros((10, 10))
    amap[:4] = 100.0  # a defect over 40% of the image moves the maximum, not the median
    assert fam.typical_anomaly(amap) == 0.0
    assert fam.assess(_pred(amap), (10, 10, 3), 1.0, None).familiar
    assert not fam.assess(_pred(amap + 5.0), (10, 10, 3), 1.0, None).familiar


@pytest.mark.parametrize(("shape", "ok"), [((100, 100), True), ((100, 124), True), ((100, 130), False),
                                           ((130, 100), False), ((124, 100), True)])
def test_aspect_margin(shape: tuple[int, int], ok: bool) -> None:
    assert fam.assess(_pred(np.zeros((4, 4))), shape, 1.0, (1.0, 1.0)).familiar is ok  # 1.0 +- 25%


@pytest.mark.parametrize(("shapes", "side"), [([(64, 64, 3)], 16), ([(400, 800, 3), (103, 222, 3)], 26),
                                              ([(1000, 2000, 3)], 250)])
def test_min_side_for(shapes: list[tuple[int, int, int]], side: int) -> None:
    assert fam.min_side_for(shapes) == side


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[det.LoadedModel, Path]:
    """PatchCore on the demo product at its real size (160 px, 40 good images: 8 held out)."""
    from core.data.dataset import load_category
    from core.data.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("demo160")
    make_demo_dataset(root, n_train=40, n_test_good=8, n_per_defect=6, size=160, seed=5)
    store = ModelStore(tmp_path_factory.mktemp("models160"))
    det.train(load_category(root, "demo_metal"), "patchcore", {"height": 128, "width": 128, "coreset_ratio": 0.1},
              store)
    return det.load(store.current("demo_metal", "patchcore")), root / "demo_metal"


def test_guard_flags_other_products_not_the_trained_ones_defects(demo_model: tuple[det.LoadedModel, Path]) -> None:
    from skimage import data as skdata

    model, folder = demo_model
    assert model.calibration.familiarity_limit is not None
    good = [load_image(p) for p in sorted((folder / "test" / "good").glob("*.png"))]
    defects = [load_image(p) for p in sorted((folder / "test").glob("[!g]*/*.png"))]
    others = [np.ascontiguousarray(skdata.astronaut()), np.ascontiguousarray(skdata.coffee()),
              np.ascontiguousarray(skdata.chelsea()), np.stack([skdata.camera()] * 3, axis=-1)]
    assert sum(r.familiar is False for r in inspection.inspect(model, good)) == 0
    assert sum(r.familiar is False for r in inspection.inspect(model, defects)) == 0  # a defect is local
    on_other = inspection.inspect(model, others)
    assert all(r.familiar is False and "unlike the training images" in r.note for r in on_other)
    assert all(r.verdict in ("OK", "DEFECT") and r.score is not None for r in on_other)  # flagged, still scored


@pytest.mark.parametrize("shape", [(1, 1, 3), (8, 200, 3)])
def test_too_small_gets_no_verdict(trained_store: Path, shape: tuple[int, int, int]) -> None:
    model = det.load(ModelStore(trained_store).current("demo_metal", "patchcore"))
    result = inspection.inspect(model, [np.full(shape, 100, np.uint8)])[0]
    assert result.verdict == inspection.NO_VERDICT and result.score is None
    assert f"{shape[0]}x{shape[1]} px" in result.note and "at least 16 px" in result.note


def test_cli_predict_tiny_image(trained_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny = tmp_path / "tiny.png"
    save_png_atomic(np.full((1, 1, 3), 90, np.uint8), tiny)
    code = main(["predict", "--store", str(trained_store), "--category", "demo_metal", str(tiny)])
    captured = capsys.readouterr()
    assert code == 1
    assert "NO VERDICT" in captured.out and "too small for a verdict" in captured.err
    assert "warm-up" in captured.err


def test_model_without_guard_still_judges(trained_store: Path, tmp_path: Path) -> None:
    """A calibration written before the guard existed: no flag, default minimum side, verdicts as before."""
    import json
    import shutil

    store = tmp_path / "models"
    shutil.copytree(trained_store, store)
    path = ModelStore(store).calibration_file(ModelStore(store).current("demo_metal", "patchcore"))
    old = {k: v for k, v in json.loads(path.read_text()).items()
           if k not in ("familiarity_limit", "aspect_min", "aspect_max", "min_side")}
    path.write_text(json.dumps(old))
    model = det.load(ModelStore(store).current("demo_metal", "patchcore"))
    result = inspection.inspect(model, [np.full((64, 64, 3), 120, np.uint8)])[0]
    assert result.familiar is None and result.verdict in ("OK", "DEFECT")


@pytest.mark.parametrize("kind", ["patchcore", "efficientad"])
def test_load_warms_up_so_the_first_image_is_steady_state(trained_store: Path, kind: str) -> None:
    """The first forward pass (ONNX export, session) happens at load: the graph for the model's input size
    exists before any user image is scored, and the warm-up time is reported separately."""
    model = det.load(ModelStore(trained_store).current("demo_metal", kind))
    cfg = model.detector.config
    assert (cfg.height, cfg.width) in model.detector._graph._runners
    assert model.warmup_ms > 0
