"""The table of model kinds and the one device policy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.models import device
from core.models.registry import KINDS, label, spec

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("kind", "label_", "side_in", "side_out", "learns"), [
    ("patchcore", "PatchCore", 200, 200, True),
    ("efficientad", "EfficientAD", 300, 256, False),
    ("efficientad", "EfficientAD", 400, 512, False),
])
def test_each_kind_is_one_table_entry(kind: str, label_: str, side_in: int, side_out: int, learns: bool) -> None:
    entry = spec(kind)
    assert entry.name == kind and label(kind) == label_ and entry.learns_from_feedback is learns
    assert entry.input_size(side_in) == side_out
    assert set(entry.default_settings()) >= {"height", "width"}
    assert all(t.key in entry.default_settings() for t in entry.tunables)
    assert entry.inference_settings(entry.default_settings(), "stock")["runtime"] == "torch"
    assert entry.inference_settings(entry.default_settings(), "fast")["runtime"] == "auto"


def test_estimates_follow_the_settings() -> None:
    ead = spec("efficientad")
    old = {"schedule": "step", "student_width": 128}  # anomalib's one-image loop: time follows the steps
    base = ead.estimate_seconds({**old, "steps": 1000}, 100, None)
    assert ead.estimate_seconds({**old, "steps": 2000}, 100, None) == pytest.approx(2 * base - 100 * 0.08, rel=1e-6)
    assert ead.estimate_seconds({**old, "steps": 1000, "height": 512, "width": 512}, 100, None) == pytest.approx(4 * base)
    # the cosine recipe's steps are capped by its epochs: more images, more steps, up to the steps asked for
    few, many = ead.estimate_seconds({}, 40, None), ead.estimate_seconds({}, 400, None)
    assert few is not None and many is not None and few < many
    assert spec("patchcore").estimate_seconds({}, 100, None) is None


CAPPED = "training steps, not the 1,500 asked for: 12 passes over the"


@pytest.mark.parametrize(("settings", "images", "shape", "said"), [
    # 100 images: 20 held out for calibration, 80 fitted; 12 passes in batches of 2 = 480 of the 1,500 steps
    ({}, 100, None, f"480 {CAPPED} 80 training images (20 more kept for calibration) need only 480"),
    # 8 images: too few to hold any out; 12 x 8 / 2 = 48
    ({}, 8, None, f"48 {CAPPED} 8 training images need only 48"),
    ({"steps": 100}, 100, None, "100 training steps"),  # fewer asked than 12 passes take: all of them run
    ({"max_epochs": 0}, 100, None, "1,500 training steps"),  # no cap
    ({"schedule": "step", "steps": 6000}, 100, None, "6,000 training steps"),  # anomalib's loop: no cap
    # 640 px tiles of 256 at 25% overlap: starts 0, 192, 384 -> 3 x 3 per image; 10 images: 2 held out,
    # 8 x 9 = 72 tiles -> 12 x 72 / 2 = 432 steps
    ({"input_mode": "tiles"}, 10, (640, 640),
     f"432 {CAPPED} 72 tiles of the 8 training images (2 more kept for calibration) need only 432"),
    ({}, 10, (640, 640), f"432 {CAPPED} 72 tiles of the 8 training images (2 more kept for calibration) need only 432"),
    # auto at 1,000 px: tiles of the half-size image (500: starts 0, 192, 244 -> 9 per image), 80 fitted of 100:
    # 720 tiles, 12 x 720 / 2 = 4,320 > 1,500: every step runs
    ({}, 100, (1000, 1000), "1,500 training steps"),
    ({"input_mode": "tiles"}, 10, None, None),  # the tiles' number unknown without the images' size
])
def test_the_training_plan_says_when_fewer_steps_run_than_asked(settings: dict, images: int,
                                                                shape: tuple[int, int] | None, said: str | None) -> None:
    assert spec("efficientad").plan_text({**spec("efficientad").default_settings(), **settings}, images, shape) == said
    assert spec("patchcore").plan_text(spec("patchcore").default_settings(), images, shape) is None


def test_the_forecast_is_one_sentence_for_the_page_and_the_cli() -> None:
    forecast = spec("efficientad").training_forecast({}, 100, None)
    assert forecast is not None and forecast.startswith(f"EfficientAD at 256px on 100 good images: 480 {CAPPED}")
    assert forecast.endswith("on a quiet 2-core CPU (measured step time; longer while other work runs on the machine; "
                             "benchmarks/RESULTS.md)")
    assert spec("patchcore").training_forecast({}, 100, None) is None


def test_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"expected model kind in \('patchcore', 'efficientad'\), found 'vae'"):
        spec("vae")
    assert label("vae") == "vae" and KINDS == ("patchcore", "efficientad")


def test_no_kind_switches_outside_the_table() -> None:
    proc = subprocess.run(["grep", "-rn", "if kind ==", "core", "ui", "pages"], cwd=ROOT, capture_output=True, text=True)
    assert proc.stdout == ""


@pytest.mark.parametrize(("value", "expected"), [("cpu", "cpu"), ("", "cuda" if torch.cuda.is_available() else "cpu"),
                                                 ("auto", "cuda" if torch.cuda.is_available() else "cpu")])
def test_device_policy(monkeypatch: pytest.MonkeyPatch, value: str, expected: str) -> None:
    monkeypatch.setenv(device.ENV, value)
    assert device.compute_device().type == expected
    assert device.describe(device.compute_device()).startswith(expected)


def test_device_policy_refuses_what_it_cannot_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(device.ENV, "tpu")
    with pytest.raises(ValueError, match=r"expected INSPECT_DEVICE in \('auto', 'cpu', 'cuda'\), found 'tpu'"):
        device.compute_device()
    if not torch.cuda.is_available():
        monkeypatch.setenv(device.ENV, "cuda")
        with pytest.raises(ValueError, match="sees no CUDA device"):
            device.compute_device()


def test_manifest_records_the_training_device(trained_store: Path) -> None:
    from core.store.model_store import ModelStore

    store = ModelStore(trained_store)
    for kind in KINDS:
        assert store.read_manifest(store.current("demo_metal", kind))["train"]["device"] in ("cpu",) or \
            torch.cuda.is_available()


def test_store_module_names_every_store_file_alone() -> None:
    names = ["manifest.json", "weights.pt", "calibration.json", "evaluation.json", "eval_images.csv",
             "eval_pixels.npz", "current.json", "feedback.jsonl"]
    for name in names:
        proc = subprocess.run(["grep", "-rln", "--include=*.py", f'"{name}"', "core", "ui", "pages"], cwd=ROOT,
                              capture_output=True, text=True)
        # the bundle runner reads the bundle's copies and must not import this package (tests/test_export.py)
        found = set(proc.stdout.split()) - {"core/store/model_store.py", "core/line/bundle_runner.py"}
        if name == "manifest.json":
            found -= {"core/models/efficientad.py"}  # the teacher asset's manifest (assets/teacher/), not the store's
        assert not found, (name, found)


def test_cli_help_lists_kinds_from_the_table() -> None:
    proc = subprocess.run([sys.executable, "-m", "core", "train", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert "{patchcore,efficientad}" in proc.stdout


# Today's `train` flags, hand-copied from core/cli.py before its flags came from the kind table: dest -> default.
TRAIN_FLAG_DEFAULTS: dict[str, object] = {
    "image_size": None, "input_mode": None, "tile": None, "normalization": None, "scale": None, "backbone": None,
    "weights": None, "layers": None, "coreset_ratio": None, "coreset": None, "search": None, "steps": None,
    "runtime": None, "reason": None, "resume": False, "category": None, "model": "patchcore",
}
# What each flag put into the settings before (argv after `train --data D --model M`) -> settings.
TRAIN_FLAG_SETTINGS: list[tuple[str, list[str], dict[str, object]]] = [
    ("patchcore", [], {}),
    ("patchcore", ["--image-size", "64", "96"], {"height": 64, "width": 96}),
    ("patchcore", ["--input-mode", "tiles", "--tile", "32"], {"input_mode": "tiles", "tile": 32}),
    ("patchcore", ["--normalization", "backbone"], {"normalization": "backbone"}),
    ("patchcore", ["--input-mode", "native", "--scale", "0.5"], {"input_mode": "native", "scale": 0.5}),
    ("patchcore", ["--backbone", "tf_efficientnet_lite1"],
     {"backbone": "tf_efficientnet_lite1", "layers": ["blocks.2", "blocks.4"]}),
    ("patchcore", ["--backbone", "resnet18", "--layers", "layer2", "layer3"],
     {"backbone": "resnet18", "layers": ["layer2", "layer3"]}),
    ("patchcore", ["--coreset-ratio", "0.1", "--coreset", "stock", "--search", "exact"],
     {"coreset_ratio": 0.1, "coreset": "stock", "search": "exact"}),
    ("patchcore", ["--runtime", "torch"], {"runtime": "torch"}),
    ("efficientad", ["--steps", "7", "--runtime", "torch", "--image-size", "512", "512"],
     {"steps": 7, "runtime": "torch", "height": 512, "width": 512}),
]


def test_train_flags_keep_their_names_and_defaults() -> None:
    from core.cli import build_parser

    args = build_parser().parse_args(["train", "--data", "d"])
    assert {k: getattr(args, k) for k in TRAIN_FLAG_DEFAULTS} == TRAIN_FLAG_DEFAULTS


@pytest.mark.parametrize(("kind", "argv", "settings"), TRAIN_FLAG_SETTINGS)
def test_train_flags_set_the_same_settings(kind: str, argv: list[str], settings: dict[str, object]) -> None:
    from core.cli import _settings_from_args, build_parser

    assert _settings_from_args(build_parser().parse_args(["train", "--data", "d", "--model", kind, *argv])) == settings


def test_train_weights_flag_is_an_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.cli import _settings_from_args, build_parser

    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["train", "--data", "d", "--backbone", "resnet18", "--weights", "w.pth",
                                      "--layers", "layer2"])
    assert _settings_from_args(args)["weights"] == str(tmp_path / "w.pth")


def test_a_registered_kind_brings_its_own_train_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from core.cli import _settings_from_args, build_parser
    from core.models.registry import register, unregister
    from tests.test_toy_kind import TOY, MeanPixelConfig, toy_spec

    register(TOY, toy_spec)
    try:
        with pytest.raises(SystemExit):
            build_parser().parse_args(["train", "--help"])
        assert "--gain GAIN" in capsys.readouterr().out
        args = build_parser().parse_args(["train", "--data", "d", "--model", TOY, "--gain", "2.5"])
        assert spec(TOY).build(_settings_from_args(args)).config == MeanPixelConfig(gain=2.5)
        with pytest.raises(ValueError, match=r"expected PatchCore training flags \(--image-size, .*\), found --gain"):
            _settings_from_args(build_parser().parse_args(["train", "--data", "d", "--gain", "2.5"]))
    finally:
        unregister(TOY)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    assert "--gain" not in capsys.readouterr().out
