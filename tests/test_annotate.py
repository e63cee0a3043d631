"""Hand-drawn masks become MVTec ground truth that evaluation picks up."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from core.data.annotate import CANVAS_MAX, CANVAS_MIN, canvas_background, canvas_size, mask_from_canvas, save_annotation
from core.data.dataset import load_category


def test_canvas_alpha_becomes_mask_at_image_size() -> None:
    canvas = np.zeros((20, 30, 4), np.uint8)
    canvas[5:10, 6:12] = (255, 0, 0, 120)
    mask = mask_from_canvas(canvas, (40, 60))
    assert mask.shape == (40, 60)
    assert mask[10:20, 12:24].all()
    assert mask.sum() == 10 * 12


@pytest.mark.parametrize(("shape", "expected"), [((160, 160), (512, 512)), ((100, 160), (320, 512)), ((7, 3), (512, 219)),
                                               ((600, 400), (600, 400)), ((1000, 700), (640, 448)),
                                               ((40, 2000), (13, 640))])
def test_canvas_size_scales_small_images_up_and_large_ones_down(shape: tuple[int, int],
                                                                expected: tuple[int, int]) -> None:
    assert canvas_size(*shape) == expected
    assert CANVAS_MIN <= max(expected) <= CANVAS_MAX


@pytest.mark.parametrize("shape", [(160, 160), (100, 160), (7, 3), (37, 300), (600, 400)])
def test_mask_drawn_on_a_scaled_up_canvas_maps_back_to_the_original_pixels(shape: tuple[int, int]) -> None:
    """Painting exactly the canvas pixels that show some image pixels gives back exactly those image pixels
    (nearest-neighbour both ways, no pixel gained or lost at any scale)."""
    h, w = shape
    ch, cw = canvas_size(h, w)
    rng = np.random.default_rng(h * 1000 + w)
    truth = rng.random((h, w)) < 0.3
    ids = np.arange(h * w, dtype=np.uint32).reshape(h, w)  # which image pixel each canvas pixel shows
    shown = canvas_background(np.stack([ids & 255, (ids >> 8) & 255, ids >> 16], -1).astype(np.uint8), (ch, cw))
    assert shown.shape == (ch, cw, 3)
    shown_ids = shown[..., 0].astype(np.uint32) | shown[..., 1].astype(np.uint32) << 8 | shown[..., 2].astype(np.uint32) << 16
    assert set(np.unique(shown_ids)) == set(range(h * w))  # every image pixel is visible on the canvas
    canvas = np.zeros((ch, cw, 4), np.uint8)
    canvas[truth.reshape(-1)[shown_ids]] = (255, 0, 0, 115)
    mask = mask_from_canvas(canvas, (h, w))
    assert mask.shape == (h, w)
    assert np.array_equal(mask, truth)


def test_mask_from_a_scaled_down_canvas_has_the_image_size() -> None:
    ch, cw = canvas_size(1000, 700)
    canvas = np.zeros((ch, cw, 4), np.uint8)
    canvas[64:128, 32:96, 3] = 255  # a 64 x 64 block on the canvas = 100 x 100 image pixels
    mask = mask_from_canvas(canvas, (1000, 700))
    assert mask.shape == (1000, 700)
    assert mask[101:199, 51:149].all() and mask.sum() == pytest.approx(100 * 100, rel=0.03)


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
