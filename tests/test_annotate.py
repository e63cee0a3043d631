"""Hand-drawn masks become MVTec ground truth that evaluation picks up."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from core.annotate import mask_from_canvas, save_annotation
from core.dataset import load_category


def test_canvas_alpha_becomes_mask_at_image_size() -> None:
    canvas = np.zeros((20, 30, 4), np.uint8)
    canvas[5:10, 6:12] = (255, 0, 0, 120)
    mask = mask_from_canvas(canvas, (40, 60))
    assert mask.shape == (40, 60)
    assert mask[10:20, 12:24].all()
    assert mask.sum() == 10 * 12


def test_saved_annotation_counts_as_ground_truth(demo_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    image = np.full((64, 64, 3), 100, np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[10:20, 10:30] = True
    img_path, mask_path = save_annotation(root, "demo_metal", "dent", "part_7", image, mask)
    assert img_path == root / "demo_metal" / "test" / "dent" / "part_7.png"
    assert mask_path == root / "demo_metal" / "ground_truth" / "dent" / "part_7_mask.png"
    data = load_category(root, "demo_metal")
    sample = next(s for s in data.test if s.path == img_path)
    assert sample.label == 1 and sample.mask_path == mask_path
    assert "dent" in data.defect_types


@pytest.mark.parametrize(
    ("defect", "stem", "mask", "message"),
    [
        ("good", "a", np.ones((4, 4), bool), "other than 'good'"),
        ("../x", "a", np.ones((4, 4), bool), "defect type"),
        ("dent", "a b", np.ones((4, 4), bool), "image name"),
        ("dent", "a", np.zeros((4, 4), bool), "empty mask"),
        ("dent", "a", np.ones((5, 4), bool), "mask of the image's size"),
    ],
)
def test_bad_annotations_refused(tmp_path: Path, defect: str, stem: str, mask: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        save_annotation(tmp_path, "cat", defect, stem, np.zeros((4, 4, 3), np.uint8), mask)
    assert not any(tmp_path.rglob("*.png"))
