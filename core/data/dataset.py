"""Dataset discovery: MVTec AD layout and plain folders of good images.

MVTec layout::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/<defect>/*.png          (defect == "good" for defect-free test images)
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png

A plain folder of images is a category with only good training images and no test set.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.data.imageio import SUPPORTED_SUFFIXES, load_many

GOOD = "good"


class DatasetError(FileNotFoundError):
    """The data root or category does not have the expected layout."""


@dataclass(frozen=True)
class Sample:
    """One image of a category. ``label`` is 0 for good, 1 for defective.

    ``key`` is the image's identity everywhere (evaluation rows, the similarity index, Compare): its path
    relative to the category folder, with ``/`` (``test/scratch/000.png``), the same whether the data root was
    given as a relative or an absolute path, from whichever working directory.
    """

    path: Path
    split: str
    defect: str
    label: int
    mask_path: Path | None
    key: str


@dataclass(frozen=True)
class CategoryData:
    """All images of one category, with the problems found while discovering them."""

    root: Path
    name: str
    layout: str
    train: tuple[Sample, ...]
    test: tuple[Sample, ...]
    problems: tuple[str, ...]

    @property
    def defect_types(self) -> tuple[str, ...]:
        return tuple(sorted({s.defect for s in self.test if s.label == 1}))

    @property
    def has_masks(self) -> bool:
        return any(s.mask_path is not None for s in self.test)


@dataclass(frozen=True)
class ReadBatch:
    """One batch of samples read from disk: ``start`` (index of its first sample in the whole sequence), the
    readable ``samples`` and their ``images`` (uint8 RGB ``[H, W, 3]`` each, same order), and one message per
    unreadable file in ``problems``."""

    start: int
    samples: list[Sample]
    images: list[np.ndarray]
    problems: list[str]


def read_batches(samples: Sequence[Sample], size: int) -> Iterator[ReadBatch]:
    """``samples`` read ``size`` at a time (never fails on a bad file: it is named in the batch's problems)."""
    for start in range(0, len(samples), size):
        part = samples[start:start + size]
        kept, images, problems = load_many([s.path for s in part])
        yield ReadBatch(start, [part[i] for i in kept], images, problems)


def image_files(directory: Path) -> list[Path]:
    """Sorted image files directly inside ``directory`` (hidden files skipped)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES and not p.name.startswith("."))


def legacy_key(path: str | Path) -> str:
    """The key of an image known only by a path written before keys existed (``.../test/<defect>/<name>`` ->
    ``test/<defect>/<name>``; anything else: the file name)."""
    parts = Path(path).parts
    if len(parts) >= 3 and parts[-3] in ("train", "test"):
        return "/".join(parts[-3:])
    return parts[-1] if parts else ""


def _sample(path: Path, category_dir: Path, split: str, defect: str, label: int, mask: Path | None) -> Sample:
    return Sample(path, split, defect, label, mask, path.relative_to(category_dir).as_posix())


def is_mvtec_category(path: Path) -> bool:
    return (path / "train" / GOOD).is_dir()


def list_categories(root: str | Path) -> list[str]:
    """Categories under ``root``: MVTec-style sub-folders, or sub-folders that directly hold images."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"expected a data folder, found nothing at {root}")
    found = []
    for child in sorted(root.iterdir()):
        if child.is_dir() and not child.name.startswith(".") and (is_mvtec_category(child) or image_files(child)):
            found.append(child.name)
    return found


def _find_mask(category_dir: Path, defect: str, image: Path) -> Path | None:
    folder = category_dir / "ground_truth" / defect
    for suffix in (".png", image.suffix, ".bmp", ".tif", ".tiff", ".jpg"):
        candidate = folder / f"{image.stem}_mask{suffix}"
        if candidate.is_file():
            return candidate
    return None


def load_category(root: str | Path, category: str) -> CategoryData:
    """Discover the images of ``category`` under ``root`` (MVTec layout or a plain folder of good images)."""
    root = Path(root)
    category_dir = root / category
    if not category_dir.is_dir():
        raise DatasetError(f"expected category folder {category_dir}, found nothing there")
    if not is_mvtec_category(category_dir):
        if (category_dir / "test").is_dir() or (category_dir / "train").is_dir():
            raise DatasetError(f"expected training images in {category_dir / 'train' / GOOD}, found no such folder")
        return load_folder(category_dir, name=category)
    problems: list[str] = []
    train = tuple(_sample(p, category_dir, "train", GOOD, 0, None) for p in image_files(category_dir / "train" / GOOD))
    if not train:
        raise DatasetError(f"expected training images in {category_dir / 'train' / GOOD}, found none")
    test: list[Sample] = []
    no_mask: list[str] = []
    test_dir = category_dir / "test"
    if test_dir.is_dir():
        for defect_dir in sorted(d for d in test_dir.iterdir() if d.is_dir() and not d.name.startswith(".")):
            defect = defect_dir.name
            for path in image_files(defect_dir):
                if defect == GOOD:
                    test.append(_sample(path, category_dir, "test", GOOD, 0, None))
                    continue
                mask = _find_mask(category_dir, defect, path)
                if mask is None:
                    no_mask.append(f"{path.relative_to(root)} (expected ground_truth/{defect}/{path.stem}_mask.png)")
                test.append(_sample(path, category_dir, "test", defect, 1, mask))
    if no_mask:  # one line, however many: a real category can have hundreds
        problems.append(f"{len(no_mask)} defect image{'s' if len(no_mask) > 1 else ''} without a mask, counted in "
                        f"image metrics only; first: {no_mask[0]}")
    return CategoryData(root, category, "mvtec", train, tuple(test), tuple(problems))


LAYOUT_FOLDERS = ("train", "test", "ground_truth")


def _refuse_layout(folder: Path) -> None:
    """A plain folder must hold good images only: an MVTec root, a category folder or anything with a
    ``test/`` or ``ground_truth/`` inside would teach defect images as normal."""
    categories = [c for c in list_categories(folder) if is_mvtec_category(folder / c)]
    if categories:
        shown = ", ".join(categories[:12]) + (f" (+{len(categories) - 12} more)" if len(categories) > 12 else "")
        raise DatasetError(f"expected a plain folder of good images at {folder}, found a data root with the "
                           f"categories {shown}: name one with --category (e.g. --category {categories[0]})")
    if is_mvtec_category(folder) or (folder / "test").is_dir():
        raise DatasetError(f"expected a plain folder of good images at {folder}, found a category folder "
                           f"(train/, test/): use --data {folder.parent} --category {folder.name}")
    for sub in folder.rglob("*"):
        if sub.is_dir() and sub.name in LAYOUT_FOLDERS:
            raise DatasetError(f"expected a plain folder of good images at {folder}, found {sub.relative_to(folder)}/ "
                               f"inside (an MVTec layout: train/good, test/<defect>, ground_truth/<defect>): give its "
                               f"data root with --data ROOT --category NAME")


def load_folder(folder: str | Path, name: str | None = None) -> CategoryData:
    """A plain folder of good images (its sub-folders too) as a category with no test set.

    Raises:
        DatasetError: no such folder, no images, or the folder holds an MVTec layout (a data root, a category
            folder, a ``test/`` or ``ground_truth/`` folder), which must be named with a category instead.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"expected a folder of good images, found nothing at {folder}")
    _refuse_layout(folder)
    paths = sorted(p for p in folder.rglob("*")
                   if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES and not p.name.startswith("."))
    if not paths:
        raise DatasetError(f"expected images ({', '.join(SUPPORTED_SUFFIXES)}) in {folder}, found none")
    train = tuple(_sample(p, folder, "train", GOOD, 0, None) for p in paths)
    return CategoryData(folder.parent, name or folder.name, "folder", train, (), ())
