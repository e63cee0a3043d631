"""Discovery of MVTec-layout categories and plain folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.dataset import DatasetError, list_categories, load_category, load_folder
from core.imageio import save_png_atomic


def test_mvtec_layout(demo_root: Path) -> None:
    data = load_category(demo_root, "demo_metal")
    assert data.layout == "mvtec"
    assert len(data.train) == 16
    assert {s.defect for s in data.test} == {"good", "scratch", "spot"}
    assert data.defect_types == ("scratch", "spot")
    assert sum(s.label for s in data.test) == 10
    for s in data.test:
        if s.label:
            assert s.mask_path is not None and s.mask_path.name == f"{s.path.stem}_mask.png"
        else:
            assert s.mask_path is None
    assert data.problems == ()


def test_missing_mask_is_reported_not_fatal(tmp_path: Path) -> None:
    img = np.zeros((8, 8, 3), np.uint8)
    save_png_atomic(img, tmp_path / "c" / "train" / "good" / "0.png")
    save_png_atomic(img, tmp_path / "c" / "test" / "crack" / "7.png")
    data = load_category(tmp_path, "c")
    assert data.test[0].mask_path is None
    assert len(data.problems) == 1 and "7_mask.png" in data.problems[0]


def test_plain_folder_category(tmp_path: Path) -> None:
    img = np.zeros((8, 8, 3), np.uint8)
    for i in range(3):
        save_png_atomic(img, tmp_path / "parts" / f"{i}.png")
    (tmp_path / "parts" / "notes.txt").write_text("not an image")
    assert list_categories(tmp_path) == ["parts"]
    data = load_category(tmp_path, "parts")
    assert data.layout == "folder" and len(data.train) == 3 and data.test == ()
    assert load_folder(tmp_path / "parts").name == "parts"


@pytest.mark.parametrize("call", [lambda p: list_categories(p / "missing"), lambda p: load_category(p, "missing"),
                                  lambda p: load_folder(p / "missing")])
def test_missing_folders_raise_clear_errors(tmp_path: Path, call) -> None:
    with pytest.raises(DatasetError, match="found nothing"):
        call(tmp_path)


def test_empty_train_folder(tmp_path: Path) -> None:
    (tmp_path / "c" / "train" / "good").mkdir(parents=True)
    with pytest.raises(DatasetError, match="expected training images"):
        load_category(tmp_path, "c")
