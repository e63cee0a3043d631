"""``python -m core``: train, evaluate, predict, list, with meaningful exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.cli import main
from core.data.imageio import save_png_atomic

ROOT = Path(__file__).resolve().parents[1]


def test_train_evaluate_predict(demo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "models"
    code = main(["train", "--data", str(demo_root), "--category", "demo_metal", "--model", "patchcore",
                 "--store", str(store), "--image-size", "64", "64", "--coreset-ratio", "0.1"])
    assert code == 0
    assert (store / "demo_metal" / "patchcore" / "v1" / "manifest.json").is_file()
    assert main(["evaluate", "--data", str(demo_root), "--category", "demo_metal", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert '"image_auroc"' in out and '"aupro"' in out
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    good = demo_root / "demo_metal" / "test" / "scratch" / "000.png"
    code = main(["predict", "--store", str(store), "--category", "demo_metal", "--overlays", str(tmp_path / "ov"),
                 str(good), str(bad)])
    captured = capsys.readouterr()
    assert code == 1  # one input could not be used
    assert "000.png" in captured.out and ("DEFECT" in captured.out or "OK" in captured.out)
    assert "bad.png" in captured.err and "no image decoder" in captured.err
    assert (tmp_path / "ov" / "000_overlay.png").is_file()
    assert main(["list", "--store", str(store)]) == 0
    assert "demo_metal/patchcore" in capsys.readouterr().out


def test_plain_folder_training(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(4):
        save_png_atomic(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8), tmp_path / "good_parts" / f"{i}.png")
    (tmp_path / "good_parts" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code = main(["train", "--data", str(tmp_path / "good_parts"), "--store", str(tmp_path / "m"),
                 "--image-size", "64", "64", "--coreset-ratio", "0.5"])
    assert code == 1  # trained, but one file was unreadable
    assert (tmp_path / "m" / "good_parts" / "patchcore" / "v1" / "weights.pt").is_file()


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--data", "/nonexistent/data", "--category", "x"],
        ["evaluate", "--data", "/nonexistent/data", "--category", "x"],
        ["predict", "--store", "/nonexistent/models", "--category", "x", "a.png"],
    ],
)
def test_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "error:" in capsys.readouterr().err


def test_module_entry_point_offline(demo_root: Path, tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": str(tmp_path / "cache"), "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "core", "train", "--data", str(demo_root), "--category", "demo_metal",
                           "--store", str(tmp_path / "m"), "--image-size", "64", "64", "--coreset-ratio", "0.05"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[100%]" in proc.stderr
    assert not (tmp_path / "cache" / "huggingface").exists()
    assert proc.stdout.strip().startswith("{")


def test_evaluate_names_unreadable_test_image(demo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    broken = root / "demo_metal" / "test" / "good" / "001.png"
    broken.write_bytes(broken.read_bytes()[:100])
    store = tmp_path / "m"
    assert main(["train", "--data", str(root), "--category", "demo_metal", "--store", str(store),
                 "--image-size", "64", "64", "--coreset-ratio", "0.1"]) == 0
    code = main(["evaluate", "--data", str(root), "--category", "demo_metal", "--store", str(store)])
    err = capsys.readouterr().err
    assert code == 1
    assert "001.png" in err and "truncated" in err
    evaluation = json.loads((store / "demo_metal" / "patchcore" / "v1" / "evaluation.json").read_text())
    assert evaluation["overall"]["num_good"] == 5  # six good test images, one unreadable


def test_help_is_fast_because_nothing_heavy_is_imported() -> None:
    code = ("import sys, core.cli\n"
            "heavy = [m for m in ('torch', 'anomalib', 'timm', 'onnxruntime') if m in sys.modules]\n"
            "print(heavy)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_invalid_category_refused_before_training(demo_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--data", str(demo_root), "--category", "../demo_metal", "--store", "/tmp/unused"]) == 2
    assert "expected a plain category name" in capsys.readouterr().err


def test_missing_masks_are_reported_once(demo_root: Path, tmp_path: Path) -> None:
    import shutil

    from core.data.dataset import load_category

    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    shutil.rmtree(root / "demo_metal" / "ground_truth")
    problems = load_category(root, "demo_metal").problems
    assert len(problems) == 1 and problems[0].startswith("10 defect images without a mask")


def test_versions_and_feedback_commands(demo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    store = tmp_path / "models"
    base = ["--store", str(store), "--category", "demo_metal"]
    assert main(["train", "--data", str(root), "--category", "demo_metal", "--store", str(store),
                 "--image-size", "64", "64", "--coreset-ratio", "0.1"]) == 0
    capsys.readouterr()
    alarm = root / "demo_metal" / "test" / "scratch" / "000.png"
    assert main(["predict", *base, str(alarm)]) == 0
    score_before = float(capsys.readouterr().out.splitlines()[1].split(",")[1])
    assert main(["feedback", *base, str(alarm)]) == 0
    assert "marked OK" in capsys.readouterr().out
    assert main(["predict", *base, str(alarm)]) == 0
    assert float(capsys.readouterr().out.splitlines()[1].split(",")[1]) < 0.5 * score_before
    assert main(["versions", *base]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[1].startswith("1,,,trained") and rows[2].startswith("2,*,1,feedback: 000.png marked OK")
    assert main(["feedback", *base, "--undo"]) == 0
    assert "v1 is current again" in capsys.readouterr().out
    assert main(["predict", *base, str(alarm)]) == 0
    assert float(capsys.readouterr().out.splitlines()[1].split(",")[1]) == pytest.approx(score_before, rel=1e-5)
    assert main(["versions", *base, "--use", "2"]) == 0  # redo by hand: a pointer move
    assert "demo_metal/patchcore v2 is now current" in capsys.readouterr().err
    assert main(["versions", *base, "--use", "9"]) == 2
    assert "expected one of the versions [1, 2]" in capsys.readouterr().err
    # defect marking files the image under test/<defect>/, and refuses a path as a defect name
    assert main(["feedback", *base, "--data", str(root), "--defect", "crack", str(alarm)]) == 0
    assert len(list((root / "demo_metal" / "test" / "crack").glob("feedback_*.png"))) == 1
    capsys.readouterr()
    assert main(["feedback", *base, "--data", str(root), "--defect", "../x", str(alarm)]) == 1
    assert "expected a plain defect name" in capsys.readouterr().err
    assert main(["feedback", *base, "--log"]) == 0
    actions = [json.loads(line)["action"] for line in capsys.readouterr().out.splitlines()]
    assert actions == ["mark_ok", "undo", "mark_defect"]


def test_train_on_a_data_root_without_category_is_refused(demo_root: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "m"
    assert main(["train", "--data", str(demo_root), "--model", "patchcore", "--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert "--category" in err and "demo_metal" in err
    assert not store.exists()  # nothing trained on the defect images
    assert main(["train", "--data", str(demo_root / "demo_metal"), "--store", str(store)]) == 2
    assert f"--data {demo_root} --category demo_metal" in capsys.readouterr().err


def test_predict_on_a_folder_with_no_images_says_so(demo_root: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    assert main(["predict", "--store", str(_store(demo_root, tmp_path)), "--category", "demo_metal",
                 str(tmp_path / "empty")]) == 1
    assert "no images" in capsys.readouterr().err


def test_predict_checks_paths_before_loading_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # no model at all: a missing image is named first, without touching the store
    assert main(["predict", "--store", str(tmp_path / "nothing"), "--category", "demo_metal",
                 str(tmp_path / "missing.png")]) == 2
    err = capsys.readouterr().err
    assert "missing.png" in err and "nothing there" in err and "trained model" not in err


def test_unknown_category_lists_the_known_ones(demo_root: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    store = _store(demo_root, tmp_path)
    image = demo_root / "demo_metal" / "test" / "good" / "000.png"
    assert main(["predict", "--store", str(store), "--category", "demo_metl", str(image)]) == 2
    err = capsys.readouterr().err
    assert "demo_metl" in err and "demo_metal/patchcore" in err


def test_list_on_an_empty_store_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--store", str(tmp_path / "models")]) == 0
    out = capsys.readouterr()
    assert "no models" in out.out + out.err


def test_help_has_examples_and_every_argument_is_explained(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "python -m core train --data" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "IMAGE_OR_FOLDER image files or folders to score" in text
    assert "--model {patchcore,efficientad} model kind" in text
    assert "--store STORE model store folder" in text


@pytest.mark.parametrize("env, expect", [
    ({}, ROOT / "models"),  # the app's default, whatever the working directory
    ({"INSPECT_MODEL_STORE": "/srv/inspect/models"}, Path("/srv/inspect/models")),
])
def test_cli_and_app_share_one_default_store(env: dict[str, str], expect: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from core.cli import build_parser
    from ui.settings import load_settings

    monkeypatch.delenv("INSPECT_MODEL_STORE", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    assert build_parser().parse_args(["list"]).store == expect
    assert load_settings().model_store == expect


def _store(demo_root: Path, tmp_path: Path) -> Path:
    store = tmp_path / "models"
    assert main(["train", "--data", str(demo_root), "--category", "demo_metal", "--store", str(store),
                 "--image-size", "64", "64", "--coreset-ratio", "0.1"]) == 0
    return store
