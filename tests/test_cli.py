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
from core.imageio import save_png_atomic

ROOT = Path(__file__).resolve().parents[1]


def test_train_evaluate_predict(demo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "models"
    code = main(["train", "--data", str(demo_root), "--category", "demo_metal", "--model", "patchcore",
                 "--store", str(store), "--image-size", "64", "64", "--coreset-ratio", "0.1"])
    assert code == 0
    assert (store / "demo_metal" / "patchcore" / "manifest.json").is_file()
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
    assert (tmp_path / "m" / "good_parts" / "patchcore" / "weights.pt").is_file()


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
    evaluation = json.loads((store / "demo_metal" / "patchcore" / "evaluation.json").read_text())
    assert evaluation["overall"]["num_good"] == 5  # six good test images, one unreadable
