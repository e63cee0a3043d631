"""Model store: one folder per (category, model kind), written atomically, loadable offline.

Layout::

    <store>/<category>/<kind>/
        manifest.json       category, kind, backbone, settings, train time, versions, metrics summary
        weights.pt          model state (memory bank, or EfficientAD networks) -- never calibration
        calibration.json    raw good-score statistics and thresholds (user-editable, kept as data)
        evaluation.json     metrics overall and per defect type (when evaluated)
        eval_images.csv     per evaluation image: path, defect, label, raw score, latency
        eval_pixels.npz     pixel-score histograms of good and defect pixels (for pixel-level curves)

A whole model folder is first written to a hidden temp folder beside it and renamed into place, so a
crash never leaves a half-written model under the real name. Single files are replaced the same way.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

MANIFEST = "manifest.json"
WEIGHTS = "weights.pt"
CALIBRATION = "calibration.json"
EVALUATION = "evaluation.json"
EVAL_IMAGES = "eval_images.csv"
EVAL_PIXELS = "eval_pixels.npz"
SCHEMA_VERSION = 1
REQUIRED_MANIFEST_KEYS = ("schema", "category", "kind", "backbone", "settings", "created", "versions")


class ModelStoreError(RuntimeError):
    """A model folder is missing, incomplete or corrupt. The message names the folder and the problem."""


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: Path, data: Any) -> Path:
    return atomic_write_bytes(path, json.dumps(data, indent=2, sort_keys=False, default=float).encode())


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ModelStoreError(f"{path}: expected a JSON file, found none") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelStoreError(f"{path}: expected valid JSON, found damaged content ({exc})") from None
    if not isinstance(data, dict):
        raise ModelStoreError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def versions() -> dict[str, str]:
    """Versions of the packages a model depends on."""
    import platform

    import anomalib
    import timm

    return {"python": platform.python_version(), "torch": torch.__version__, "anomalib": anomalib.__version__,
            "timm": timm.__version__}


@dataclass(frozen=True)
class ModelRecord:
    """What the store knows of one model folder without loading its weights."""

    path: Path
    category: str
    kind: str
    manifest: dict[str, Any] | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


class ModelStore:
    """Folder-per-model store rooted at ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def folder(self, category: str, kind: str) -> Path:
        for part in (category, kind):
            if not part or "/" in part or "\\" in part or part.startswith("."):
                raise ModelStoreError(f"expected a plain folder name, found {part!r}")
        return self.root / category / kind

    def write_model(self, category: str, kind: str, weights: dict[str, Any], manifest: dict[str, Any],
                    calibration: dict[str, Any], extra_files: dict[str, bytes] | None = None) -> Path:
        """Write a complete model folder atomically (temp folder, then rename over any old one)."""
        final = self.folder(category, kind)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{kind}.tmp-"))
        try:
            buffer = io.BytesIO()
            torch.save(weights, buffer)
            (tmp / WEIGHTS).write_bytes(buffer.getvalue())
            (tmp / MANIFEST).write_text(json.dumps({"schema": SCHEMA_VERSION, **manifest}, indent=2, default=float))
            (tmp / CALIBRATION).write_text(json.dumps(calibration, indent=2, default=float))
            for name, data in (extra_files or {}).items():
                (tmp / name).write_bytes(data)
            old = None
            if final.exists():
                old = final.parent / f".{kind}.old-{os.getpid()}"
                os.replace(final, old)
            os.replace(tmp, final)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def write_file(self, category: str, kind: str, name: str, data: bytes) -> Path:
        folder = self.folder(category, kind)
        if not folder.is_dir():
            raise ModelStoreError(f"expected model folder {folder}, found nothing there")
        return atomic_write_bytes(folder / name, data)

    def write_json(self, category: str, kind: str, name: str, data: dict[str, Any]) -> Path:
        return self.write_file(category, kind, name, json.dumps(data, indent=2, default=float).encode())

    def read_manifest(self, category: str, kind: str) -> dict[str, Any]:
        folder = self.folder(category, kind)
        if not folder.is_dir():
            raise ModelStoreError(f"expected model folder {folder}, found nothing there")
        manifest = read_json(folder / MANIFEST)
        missing = [k for k in REQUIRED_MANIFEST_KEYS if k not in manifest]
        if missing:
            raise ModelStoreError(f"{folder / MANIFEST}: expected keys {missing}, found only {sorted(manifest)}")
        if manifest["kind"] != kind or manifest["category"] != category:
            raise ModelStoreError(f"{folder / MANIFEST}: expected {category}/{kind}, "
                                  f"found {manifest['category']}/{manifest['kind']}")
        return manifest

    def read_weights(self, category: str, kind: str) -> dict[str, Any]:
        path = self.folder(category, kind) / WEIGHTS
        if not path.is_file():
            raise ModelStoreError(f"{path}: expected model weights, found no file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for damaged files
            raise ModelStoreError(f"{path}: expected a torch weights file, found damaged data ({type(exc).__name__}: {exc})") from None
        if not isinstance(state, dict):
            raise ModelStoreError(f"{path}: expected a dict of tensors, found {type(state).__name__}")
        return state

    def read_calibration(self, category: str, kind: str) -> dict[str, Any]:
        return read_json(self.folder(category, kind) / CALIBRATION)

    def calibration_stamp(self, category: str, kind: str) -> str:
        """A digest of ``calibration.json`` as it is now ("" when absent): changes with any edit, wherever
        made (the dashboard, the CLI, another tab, a hand edit), so caches keyed on it see the change."""
        path = self.folder(category, kind) / CALIBRATION
        try:
            return hashlib.sha1(path.read_bytes()).hexdigest()[:16]
        except FileNotFoundError:
            return ""

    def weights_stamp(self, category: str, kind: str) -> str:
        """Changes whenever the model's weights are rewritten (retraining): size and modification time."""
        path = self.folder(category, kind) / WEIGHTS
        try:
            st = path.stat()
        except FileNotFoundError:
            return ""
        return f"{st.st_size}-{st.st_mtime_ns}"

    def read_optional_json(self, category: str, kind: str, name: str) -> dict[str, Any] | None:
        path = self.folder(category, kind) / name
        return read_json(path) if path.is_file() else None

    def list_models(self, category: str | None = None) -> list[ModelRecord]:
        """Every model folder (optionally of one category), broken ones included with their error."""
        records: list[ModelRecord] = []
        if not self.root.is_dir():
            return records
        categories = [category] if category else sorted(p.name for p in self.root.iterdir()
                                                         if p.is_dir() and not p.name.startswith("."))
        for cat in categories:
            cat_dir = self.root / cat
            if not cat_dir.is_dir():
                continue
            for kind_dir in sorted(p for p in cat_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                try:
                    manifest = self.read_manifest(cat, kind_dir.name)
                    if not (kind_dir / WEIGHTS).is_file():
                        raise ModelStoreError(f"{kind_dir / WEIGHTS}: expected model weights, found no file")
                    records.append(ModelRecord(kind_dir, cat, kind_dir.name, manifest, None))
                except ModelStoreError as exc:
                    records.append(ModelRecord(kind_dir, cat, kind_dir.name, None, str(exc)))
        return records
