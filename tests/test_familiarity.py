"""Unfamiliar-image guard and minimum size: hand-computed distances, profile files, the guard on other products,
and NO VERDICT for images too small to judge (CLI and core)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core import detector as det
from core import familiarity as fam
from core.cli import main
from core.imageio import load_image, save_png_atomic
from core.store import FAMILIARITY, ModelStore, ModelStoreError


def _profile(reference: list[list[float]], aspect: tuple[float, float] = (1.0, 1.0)) -> fam.FamiliarityProfile:
    ref = np.array(reference, dtype=np.float32)
    return fam.FamiliarityProfile(ref, np.zeros(ref.shape[1], np.float32), np.ones(ref.shape[1], np.float32), aspect, 16)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ([3.0, 4.0], 0.0),                      # on a reference point
        ([0.0, 1.0], np.sqrt(1.0 / 2)),         # nearest is the origin: squared distance 1 over 2 dims
        ([3.0, 0.0], np.sqrt(9.0 / 2)),         # |(3,0)-(0,0)|^2 = 9 < |(3,0)-(3,4)|^2 = 16
        ([6.0, 8.0], np.sqrt(25.0 / 2)),        # nearest is (3,4): 9 + 16 = 25
    ],
)
def test_distances_hand_computed(query: list[float], expected: float) -> None:
    profile = _profile([[0.0, 0.0], [3.0, 4.0]])
    assert profile.distances(np.array([query], np.float32))[0] == pytest.approx(expected, abs=1e-5)


def test_standardisation_and_leave_one_out() -> None:
    ref = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]], np.float32)
    profile = fam.FamiliarityProfile(ref, np.array([1.0, 1.0], np.float32), np.array([1.0, 2.0], np.float32),
                                     (1.0, 1.0), 16)
    raw = np.array([[1.0, 1.0]], np.float32)  # standardised: (0, 0) -> exactly reference 0
    assert profile.distances(raw)[0] == pytest.approx(0.0, abs=1e-6)
    assert profile.distances(raw, exclude_self=True)[0] == pytest.approx(np.sqrt(4.0 / 2), abs=1e-5)


@pytest.mark.parametrize(("shape", "ok"), [((100, 100), True), ((100, 124), True), ((100, 130), False),
                                           ((130, 100), False), ((124, 100), True)])
def test_aspect_margin(shape: tuple[int, int], ok: bool) -> None:
    assert _profile([[0.0]]).aspect_ok(shape) is ok  # 1.0 +- 25%


def test_profile_round_trip_and_damage() -> None:
    profile = _profile([[0.0, 1.0], [2.0, 3.0]], (0.5, 2.0))
    back = fam.FamiliarityProfile.from_bytes(profile.to_bytes())
    assert np.array_equal(back.reference, profile.reference) and back.aspect_range == (0.5, 2.0)
    with pytest.raises(ValueError, match="expected a familiarity profile"):
        fam.FamiliarityProfile.from_bytes(b"not a numpy file")


def test_guard_flags_other_products_not_the_trained_one(trained_store: Path, demo_root: Path) -> None:
    from skimage import data as skdata

    model = det.load(ModelStore(trained_store), "demo_metal", "patchcore")
    assert model.familiarity is not None and model.calibration.familiarity_limit is not None
    assert model.warmup_ms > 0
    good = [load_image(p) for p in sorted((demo_root / "demo_metal" / "test" / "good").glob("*.png"))]
    others = [np.ascontiguousarray(skdata.astronaut()), np.ascontiguousarray(skdata.coffee()),
              np.ascontiguousarray(skdata.chelsea()), np.stack([skdata.camera()] * 3, axis=-1)]
    on_good = det.inspect(model, good)
    on_other = det.inspect(model, others)
    assert sum(r.familiar is False for r in on_good) == 0
    assert all(r.familiar is False and "unlike the training images" in r.note for r in on_other)
    assert all(r.verdict in ("OK", "DEFECT") and r.score is not None for r in on_other)  # flagged, still scored


@pytest.mark.parametrize("shape", [(1, 1, 3), (8, 200, 3)])
def test_too_small_gets_no_verdict(trained_store: Path, shape: tuple[int, int, int]) -> None:
    model = det.load(ModelStore(trained_store), "demo_metal", "patchcore")
    result = det.inspect(model, [np.full(shape, 100, np.uint8)])[0]
    assert result.verdict == det.NO_VERDICT and result.score is None
    assert f"{shape[0]}x{shape[1]} px" in result.note and "at least 16 px" in result.note


def test_cli_predict_tiny_image(trained_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny = tmp_path / "tiny.png"
    save_png_atomic(np.full((1, 1, 3), 90, np.uint8), tiny)
    code = main(["predict", "--store", str(trained_store), "--category", "demo_metal", str(tiny)])
    captured = capsys.readouterr()
    assert code == 1
    assert "NO VERDICT" in captured.out and "too small for a verdict" in captured.err
    assert "warm-up" in captured.err


def test_damaged_profile_is_a_clear_load_error(trained_store: Path, tmp_path: Path) -> None:
    import shutil

    store = tmp_path / "models"
    shutil.copytree(trained_store, store)
    (store / "demo_metal" / "patchcore" / FAMILIARITY).write_bytes(b"garbage")
    with pytest.raises(ModelStoreError, match="familiarity.npz: expected a familiarity profile"):
        det.load(ModelStore(store), "demo_metal", "patchcore")
    det.load(ModelStore(store), "demo_metal", "efficientad")  # the other model still loads


@pytest.mark.parametrize(("kind", "graph"), [("patchcore", "_graph"), ("efficientad", "_graph")])
def test_load_warms_up_so_the_first_image_is_steady_state(trained_store: Path, kind: str, graph: str) -> None:
    """The first forward pass (ONNX export, session) happens at load: the graph for the model's input size
    exists before any user image is scored, and the warm-up time is reported separately."""
    model = det.load(ModelStore(trained_store), "demo_metal", kind)
    compiled = getattr(model.detector, graph)
    assert compiled is not None
    cfg = model.detector.config
    assert (cfg.height, cfg.width) in compiled._sessions
    assert model.warmup_ms > 0
