"""Discovery of MVTec-layout categories and plain folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from core.data.dataset import DatasetError, legacy_key, list_categories, load_category, load_folder
from core.data.imageio import save_png_atomic


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


@pytest.mark.parametrize("make, expect", [
    # an MVTec root (category folders): refused, naming --category and the categories found
    (lambda p: [save_png_atomic(np.zeros((8, 8, 3), np.uint8), p / "root" / c / "train" / "good" / "0.png")
                for c in ("bolt", "cable")], ["--category", "bolt", "cable"]),
    # one category folder itself (train/, test/): refused, naming the parent and the category
    (lambda p: [save_png_atomic(np.zeros((8, 8, 3), np.uint8), p / "root" / s / "0.png")
                for s in ("train/good", "test/crack")], ["--category", "root"]),
    # images with a ground_truth/ folder beside them: refused
    (lambda p: [save_png_atomic(np.zeros((8, 8, 3), np.uint8), p / "root" / s / "0.png")
                for s in ("", "ground_truth/crack")], ["ground_truth"]),
])
def test_plain_folder_refuses_an_mvtec_layout(tmp_path: Path, make, expect: list[str]) -> None:
    make(tmp_path)
    with pytest.raises(DatasetError) as info:
        load_folder(tmp_path / "root")
    for word in expect:
        assert word in str(info.value)


def test_plain_folder_trains_on_its_own_images_and_sub_folders(tmp_path: Path) -> None:
    img = np.zeros((8, 8, 3), np.uint8)
    save_png_atomic(img, tmp_path / "parts" / "0.png")
    save_png_atomic(img, tmp_path / "parts" / "2026-11-30" / "1.png")
    data = load_folder(tmp_path / "parts")
    assert [s.key for s in data.train] == ["0.png", "2026-11-30/1.png"]


def test_every_image_has_a_category_relative_key(demo_root: Path) -> None:
    data = load_category(demo_root, "demo_metal")
    keys = [s.key for s in [*data.train, *data.test]]
    assert len(set(keys)) == len(keys)
    assert "train/good/000.png" in keys and "test/scratch/000.png" in keys
    # the same image reached through a relative and an absolute root has the same key
    relative = load_category(Path(os.path.relpath(demo_root)), "demo_metal")
    assert [s.key for s in relative.test] == [s.key for s in data.test]


@pytest.mark.parametrize("path, key", [
    ("/data/root/bolt/test/crack/007.png", "test/crack/007.png"),
    ("demo_data/demo_metal/test/good/000.png", "test/good/000.png"),
    ("demo_metal/train/good/1.png", "train/good/1.png"),
    ("/x/test/y/test/crack/1.png", "test/crack/1.png"),  # the category's own test/, the last one
    ("just_a_name.png", "just_a_name.png"),
])
def test_key_of_a_legacy_path(path: str, key: str) -> None:
    assert legacy_key(path) == key


def test_read_batches_names_unreadable_files_and_keeps_order(tmp_path):
    from core.data.dataset import Sample, read_batches
    from core.data.imageio import save_png_atomic

    samples = []
    for i in range(5):
        path = tmp_path / f"{i}.png"
        if i == 3:
            path.write_bytes(b"not an image")
        else:
            save_png_atomic(np.full((8, 8, 3), i, dtype=np.uint8), path)
        samples.append(Sample(path, "test", "good", 0, None, f"test/good/{i}.png"))
    batches = list(read_batches(samples, 2))
    assert [b.start for b in batches] == [0, 2, 4]
    assert [[s.key for s in b.samples] for b in batches] == [["test/good/0.png", "test/good/1.png"],
                                                             ["test/good/2.png"], ["test/good/4.png"]]
    assert [int(b.images[0][0, 0, 0]) for b in batches] == [0, 2, 4]
    assert [len(b.problems) for b in batches] == [0, 1, 0] and "3.png" in batches[1].problems[0]
