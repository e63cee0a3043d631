"""Decoding every kind of image users upload, and refusing broken ones with a clear reason."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data.imageio import ImageLoadError, load_image, load_mask, save_png_atomic


def _encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("make", "fmt", "expected_pixel"),
    [
        (lambda: Image.new("L", (5, 4), 200), "PNG", (200, 200, 200)),
        (lambda: Image.new("RGB", (5, 4), (10, 20, 30)), "PNG", (10, 20, 30)),
        (lambda: Image.new("RGBA", (5, 4), (10, 20, 30, 0)), "PNG", (10, 20, 30)),  # alpha dropped, colour kept
        (lambda: Image.new("LA", (5, 4), (77, 128)), "PNG", (77, 77, 77)),
        (lambda: Image.fromarray(np.full((4, 5), 65535, np.uint16)), "PNG", (255, 255, 255)),  # 16-bit white
        (lambda: Image.fromarray(np.full((4, 5), 257 * 100, np.uint16)), "PNG", (100, 100, 100)),  # 16-bit gray
        (lambda: Image.new("RGB", (5, 4), (10, 20, 30)), "BMP", (10, 20, 30)),
        (lambda: Image.new("RGB", (5, 4), (10, 20, 30)), "TIFF", (10, 20, 30)),
        (lambda: Image.new("P", (5, 4), 0), "PNG", (0, 0, 0)),
        (lambda: Image.new("1", (5, 4), 1), "PNG", (255, 255, 255)),
    ],
)
def test_decodes_to_uint8_rgb(make, fmt: str, expected_pixel: tuple[int, int, int]) -> None:
    array = load_image(_encode(make(), fmt), name=f"x.{fmt.lower()}")
    assert array.dtype == np.uint8
    assert array.shape == (4, 5, 3)
    assert tuple(array[0, 0]) == expected_pixel


def test_float_tiff_is_rescaled() -> None:
    data = np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)
    array = load_image(_encode(Image.fromarray(data, mode="F"), "TIFF"))
    assert array[:, :, 0].tolist() == [[0, 128], [255, 64]]


def test_jpeg_close_to_source() -> None:
    src = np.full((16, 16, 3), (120, 60, 30), np.uint8)
    array = load_image(_encode(Image.fromarray(src), "JPEG"))
    assert np.allclose(array.astype(int), src.astype(int), atol=4)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"this is a text file, not an image", "no image decoder"),
        (b"%PDF-1.4 not an image", "no image decoder"),
    ],
)
def test_rejects_non_images(data: bytes, reason: str) -> None:
    with pytest.raises(ImageLoadError, match=reason) as info:
        load_image(data, name="upload.png")
    assert info.value.source == "upload.png"


def test_rejects_truncated_png() -> None:
    full = _encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    with pytest.raises(ImageLoadError, match="damaged or truncated"):
        load_image(full[: len(full) // 2], name="cut.png")


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ImageLoadError, match="no file"):
        load_image(tmp_path / "nope.png")


def test_mask_resized_nearest(tmp_path) -> None:
    mask = np.zeros((4, 4), np.uint8)
    mask[:2, :2] = 255
    path = save_png_atomic(mask, tmp_path / "m.png")
    out = load_mask(path, (8, 8))
    assert out.dtype == bool and out.shape == (8, 8)
    assert out[:4, :4].all() and not out[4:, :].any() and not out[:, 4:].any()


def test_atomic_png_leaves_no_temp(tmp_path) -> None:
    save_png_atomic(np.zeros((3, 3, 3), np.uint8), tmp_path / "a.png")
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_load_many_keeps_going(tmp_path) -> None:
    from core.data.imageio import load_many

    good = save_png_atomic(np.zeros((3, 4, 3), np.uint8), tmp_path / "ok.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    kept, images, problems = load_many([bad, good, tmp_path / "missing.png"])
    assert kept == [1] and images[0].shape == (3, 4, 3)
    assert len(problems) == 2 and "bad.png" in problems[0] and "missing.png" in problems[1]


@pytest.mark.parametrize(
    ("fmt", "found"),
    [("GIF", "GIF"), ("WEBP", "WEBP"), ("ICO", "ICO"), ("PPM", "PPM"), ("TGA", "found"),
     ("PCX", "PCX")],
)
def test_refuses_undocumented_formats_by_content(tmp_path, fmt: str, found: str) -> None:
    """Only PNG/JPEG/BMP/TIFF decode, judged by the data (a GIF named .png is still a GIF); the message names
    the accepted formats and what was found."""
    data = _encode(Image.new("RGB", (16, 16), (10, 20, 30)), fmt)
    with pytest.raises(ImageLoadError, match="expected a PNG, JPEG, BMP or TIFF image, found") as info:
        load_image(data, name="disguised.png")
    assert found in info.value.reason
    path = tmp_path / "disguised.png"
    path.write_bytes(data)
    with pytest.raises(ImageLoadError, match=found):
        load_image(path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "TIFF"])
def test_documented_formats_decode_whatever_the_name(tmp_path, fmt: str) -> None:
    path = tmp_path / "named.gif"
    path.write_bytes(_encode(Image.new("RGB", (16, 16), (10, 20, 30)), fmt))
    assert load_image(path).shape == (16, 16, 3)


def test_exif_orientation_applied() -> None:
    src = Image.new("RGB", (6, 4), (0, 0, 0))
    src.putpixel((0, 0), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    buffer = io.BytesIO()
    src.save(buffer, format="JPEG", exif=exif, quality=100)
    array = load_image(buffer.getvalue())
    assert array.shape == (6, 4, 3)  # width and height swapped
    assert array[0, -1].min() > 200  # the top-left pixel is now top-right


def test_pixel_budget_checked_from_the_header() -> None:
    data = _encode(Image.new("L", (300, 200), 0))
    with pytest.raises(ImageLoadError, match="expected at most 50,000 pixels, found 300x200"):
        load_image(data, max_pixels=50_000)
    assert load_image(data, max_pixels=60_000).shape == (200, 300, 3)


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n this file was cut short", b"\xff\xd8\xff\xe0 cut", b"BM cut"])
def test_a_documented_format_cut_before_its_header_ends_is_called_damaged(data: bytes) -> None:
    """A file that starts as a PNG/JPEG/BMP but stops inside its header is damaged, not 'another format'."""
    with pytest.raises(ImageLoadError) as info:
        load_image(data, name="cut.png")
    assert "damaged or truncated" in info.value.reason and "expected a PNG" not in info.value.reason


def test_median_shape_reads_headers_and_skips_what_it_cannot(tmp_path: Path) -> None:
    from core.data.imageio import median_shape

    paths = []
    for i, (h, w) in enumerate([(10, 20), (10, 20), (30, 40)]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(paths[-1])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert median_shape([*paths, tmp_path / "broken.png", tmp_path / "missing.png"]) == (10, 20)
    assert median_shape([tmp_path / "broken.png"]) is None
    assert median_shape([]) is None
