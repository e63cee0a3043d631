"""Model store: numbered versions per (category, model kind), a pointer to the current one, atomic writes.

Layout::

    <store>/<category>/<kind>/
        current.json        {"version": N}: the version in use ("make current" and undo move only this)
        feedback.jsonl      one JSON line per feedback action (time, image hash, action, versions)
        .lock               taken while a version number is chosen and its folder created
        v<N>/
            manifest.json       category, kind, backbone, settings, versions, metrics, parent version, reason
            weights.pt          model state (memory bank, or EfficientAD networks) -- never calibration
            calibration.json    raw good-score statistics and thresholds (user-editable, kept as data)
            evaluation.json     metrics overall and per defect type (when evaluated)
            eval_images.csv     per evaluation image: path, key (category-relative), defect, label, raw score, latency
            eval_pixels.npz     pixel-score histograms of good and defect pixels (for pixel-level curves)

A model saved before versions existed (the files directly in ``<kind>/``) is read as version 1 and never
moved. A version is written to a hidden temp folder and renamed into place; files a new version shares with
its parent (weights when only thresholds change) are hard links, never rewritten in place. No module outside
this one names a file of the store: everything goes through :class:`ModelStore` and :class:`ModelRef`.

Durability: every file is fsynced before it is renamed into place, and so is the folder holding it after the
rename (a version's temp folder before its rename, the kind folder after it and after ``current.json`` is
replaced), so a power loss leaves either the old state or the new one. A version made with a feedback-log entry
(Mark as OK) carries that entry in its manifest (``feedback_log_entry``) before it is renamed into place; if the
process dies before the log line is written, the next reader of the log (or the next writer, or the first
:class:`ModelStore` of a process) finds the version, makes it current if the pointer still names its parent, and
appends the entry, so Undo can undo it. Temp folders and files (``.tmp-*``, ``.*.tmp``) older than
:data:`STALE_TEMP_S` are removed the first time a process opens the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.files import (
    append_line,
    atomic_write_bytes,
    atomic_write_json,
    copy_durable,
    fsync_dir,
    lock_file,
    now_iso,
    write_durable,
)
from core.files import step as _step

MANIFEST = "manifest.json"
WEIGHTS = "weights.pt"
CALIBRATION = "calibration.json"
EVALUATION = "evaluation.json"
EVAL_IMAGES = "eval_images.csv"
EVAL_PIXELS = "eval_pixels.npz"
CURRENT = "current.json"
FEEDBACK = "feedback.jsonl"
LOCK = ".lock"
SCHEMA_VERSION = 2
REQUIRED_MANIFEST_KEYS = ("schema", "category", "kind", "backbone", "settings", "created", "versions")
_VERSION_DIR = re.compile(r"^v(\d+)$")
_NAME = re.compile(r"^[^/\\\x00-\x1f.][^/\\\x00-\x1f]{0,127}$")
LEGACY_REASON = "trained (saved before model versions existed)"
LOG_ENTRY = "feedback_log_entry"  # manifest key: the feedback-log entry the version was made with (recovery)
STALE_TEMP_S = 15 * 60  # temp folders/files older than this are a dead writer's (a live one takes seconds)

logger = logging.getLogger(__name__)
_STARTED: set[str] = set()
_STARTED_GUARD = threading.Lock()

class ModelStoreError(RuntimeError):
    """A model folder is missing, incomplete or corrupt. The message names the folder and the problem."""


class ModelNotFound(ModelStoreError):
    """Nothing is there: no trained model of that category and kind, or no such version (a damaged model that
    is there raises the plain :class:`ModelStoreError`)."""


class StaleParentError(ModelStoreError):
    """A version was to be built on ``parent``, which is no longer current: another writer made ``current``
    in the meantime (two tabs, or the CLI beside the app). Nothing was written."""

    def __init__(self, parent: ModelRef, current: ModelRef) -> None:
        super().__init__(f"expected v{parent.version} of {parent.category}/{parent.kind} to be current, found it "
                         f"no longer current: v{current.version} is current now (made meanwhile by another "
                         "writer); nothing was written")
        self.parent = parent
        self.current = current


def validate_name(name: str, what: str = "name") -> str:
    """``name`` if it is a plain folder name: 1-128 characters, no '/' or '\\', not starting with '.'."""
    if not isinstance(name, str) or not _NAME.match(name) or name.strip() != name:
        raise ModelStoreError(f"expected a plain {what} (1-128 characters, no '/' or '\\', not starting with "
                              f"'.', no surrounding spaces), found {name!r}")
    return name


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
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "anomalib": anomalib.__version__,
            "timm": timm.__version__}


@dataclass(frozen=True)
class ModelRef:
    """One saved model version: the handle pages, the cache and the CLI pass around (hashable)."""

    store: str
    category: str
    kind: str
    version: int

    @property
    def label(self) -> str:
        return f"{self.category}/{self.kind} v{self.version}"


@dataclass(frozen=True)
class VersionInfo:
    """A version as the Models page and ``python -m core versions`` list it."""

    ref: ModelRef
    current: bool
    manifest: dict[str, Any] | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def reason(self) -> str:
        return str((self.manifest or {}).get("reason", ""))

    @property
    def parent(self) -> int | None:
        return (self.manifest or {}).get("parent")


@dataclass(frozen=True)
class ModelRecord:
    """The current version of one (category, kind) as the store knows it without loading weights."""

    path: Path
    category: str
    kind: str
    manifest: dict[str, Any] | None
    error: str | None
    ref: ModelRef | None = None
    num_versions: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


class ModelStore:
    """Versioned folder-per-model store rooted at ``root``; the only code that names its files."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._start()

    def _start(self) -> None:
        """Once per process and store: remove dead writers' temp folders and recover feedback-log entries."""
        key = os.path.abspath(self.root)
        with _STARTED_GUARD:
            if key in _STARTED:
                return
            _STARTED.add(key)
        if self.root.is_dir():
            try:
                self.recover()
            except OSError as exc:  # a read-only or vanished store: reading it still works
                logger.warning("%s: could not tidy the store at start (%s)", self.root, exc)

    def recover(self, max_age_s: float = STALE_TEMP_S) -> list[str]:
        """Tidy every model folder after a crash: remove temp folders and files older than ``max_age_s`` (a
        live writer's are younger) and append feedback entries that versions hold but the log lacks. Returns
        what was done, one line each (also logged). A damaged log is left as it is (reading it says so)."""
        done: list[str] = []
        if not self.root.is_dir():
            return done
        for cat in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for kind in sorted(p for p in cat.iterdir() if p.is_dir() and not p.name.startswith(".")):
                done += _remove_stale_temps(kind, max_age_s)
                try:
                    done += self._recover_if_pending(cat.name, kind.name)
                except ModelStoreError as exc:
                    logger.warning("%s/%s: feedback not recovered: %s", cat.name, kind.name, exc)
        return done

    # -- places ------------------------------------------------------------------------------------
    def kind_folder(self, category: str, kind: str) -> Path:
        validate_name(category, "category name")
        validate_name(kind, "model kind")
        return self.root / category / kind

    def _legacy(self, category: str, kind: str) -> bool:
        return (self.kind_folder(category, kind) / MANIFEST).is_file()

    def path(self, ref: ModelRef) -> Path:
        """The folder of one version (version 1 of a model saved before versions is the kind folder)."""
        base = self.kind_folder(ref.category, ref.kind)
        if ref.version == 1 and (base / MANIFEST).is_file() and not (base / "v1").exists():
            return base
        return base / f"v{ref.version}"

    def version_numbers(self, category: str, kind: str) -> list[int]:
        base = self.kind_folder(category, kind)
        if not base.is_dir():
            return []
        numbers = {int(m.group(1)) for p in base.iterdir() if p.is_dir() and (m := _VERSION_DIR.match(p.name))}
        if self._legacy(category, kind):
            numbers.add(1)
        return sorted(numbers)

    def current(self, category: str, kind: str) -> ModelRef:
        """The version in use: the one ``current.json`` names, else the newest.

        Raises:
            ModelNotFound: no model of this kind.
            ModelStoreError: a pointer naming a version that does not exist (a damaged store).
        """
        numbers = self.version_numbers(category, kind)
        base = self.kind_folder(category, kind)
        if not numbers:
            known = self.trained_names()
            raise ModelNotFound(f"expected a trained model in {base}, found nothing there; "
                                  + (f"trained here: {', '.join(known)}" if known else f"{self.root} holds no model"))
        pointer = base / CURRENT
        if not pointer.is_file():
            return ModelRef(str(self.root), category, kind, numbers[-1])
        number = read_json(pointer).get("version")
        if number not in numbers:
            raise ModelStoreError(f"{pointer}: expected one of the versions {numbers}, found {number!r} "
                                  f"(pick one with `python -m core versions --use N`)")
        return ModelRef(str(self.root), category, kind, int(number))

    def ref(self, category: str, kind: str, version: int | None = None) -> ModelRef:
        """A handle on ``version`` (the current one when None); raises ModelNotFound if it does not exist."""
        if version is None:
            return self.current(category, kind)
        numbers = self.version_numbers(category, kind)
        if version not in numbers:
            raise ModelNotFound(f"expected one of the versions {numbers} of {category}/{kind}, found {version}")
        return ModelRef(str(self.root), category, kind, int(version))

    def trained_names(self) -> list[str]:
        """``category/kind`` of every model folder with at least one version, sorted (for error messages)."""
        if not self.root.is_dir():
            return []
        return [f"{c.name}/{k.name}" for c in sorted(self.root.iterdir()) if c.is_dir() and not c.name.startswith(".")
                for k in sorted(c.iterdir()) if k.is_dir() and self.version_numbers(c.name, k.name)]

    def has_model(self, category: str, kind: str) -> bool:
        return bool(self.version_numbers(category, kind))

    def training_state_dir(self, category: str, kind: str) -> Path:
        """``<store>/.training/<category>/<kind>/``: where an interrupted training run keeps its state until it
        is resumed or replaced (the detector names the files in it; see ``core.types.ResumePoint``). Outside
        the kind folder, so a first run stopped before any version does not list as a broken model."""
        self.kind_folder(category, kind)  # checks both names
        return self.root / ".training" / category / kind

    def discard_training_state(self, category: str, kind: str) -> None:
        """Forget an interrupted run of (category, kind), if any."""
        shutil.rmtree(self.training_state_dir(category, kind), ignore_errors=True)

    # -- writing versions --------------------------------------------------------------------------
    def _locked(self, category: str, kind: str) -> contextlib.AbstractContextManager[None]:
        """The store lock of (category, kind): :func:`core.files.lock_file` of ``<kind folder>/.lock``."""
        return lock_file(self.kind_folder(category, kind) / LOCK)

    def create_version(self, category: str, kind: str, manifest: dict[str, Any], calibration: dict[str, Any],
                       reason: str, weights: dict[str, Any] | None = None, parent: ModelRef | None = None,
                       keep_evaluation: bool = False, require_parent_current: bool = False,
                       feedback: dict[str, Any] | None = None) -> ModelRef:
        """Write a new numbered version and make it current; returns its handle.

        ``weights`` None shares the parent's weights (a hard link); ``keep_evaluation`` shares its evaluation
        files (right when the scores cannot have changed, e.g. only thresholds were saved). The files are
        written to a temp folder first; the number is chosen and the folder renamed under a lock, so two
        writers never reuse a number or leave a half-written version.

        ``require_parent_current``: compare-and-swap on the current pointer. Under the same lock, ``parent``
        must still be the current version, else :class:`StaleParentError` (naming the version that is current
        now) and nothing is written: a change built on ``parent`` would otherwise drop whatever the newer
        version added. ``feedback``: a feedback-log entry appended under that lock once the version is current
        (``version_after`` is filled in), so the log's order is the versions' order.
        """
        if weights is None and parent is None:
            raise ValueError("expected weights or a parent version to share them from, found neither")
        base = self.kind_folder(category, kind)
        if not base.is_dir():
            base.mkdir(parents=True, exist_ok=True)
            fsync_dir(base.parent)
            fsync_dir(base.parent.parent)
        tmp = Path(tempfile.mkdtemp(dir=base, prefix=".tmp-"))
        try:
            _step("temp folder made")
            if weights is not None:
                import torch

                buffer = io.BytesIO()
                torch.save(weights, buffer)
                write_durable(tmp / WEIGHTS, buffer.getvalue())
            shared = ([] if weights is not None else [WEIGHTS]) + (
                [EVALUATION, EVAL_IMAGES, EVAL_PIXELS] if keep_evaluation else [])
            for name in shared:
                source = self.path(parent) / name  # type: ignore[arg-type]
                if source.is_file():
                    _link_or_copy(source, tmp / name)
            write_durable(tmp / CALIBRATION, json.dumps(calibration, indent=2, default=float).encode())
            _step("weights and calibration written")
            with self._locked(category, kind):
                _step("lock taken")
                self._recover_locked(category, kind)  # an earlier writer's crash is settled before we number
                if require_parent_current:
                    if parent is None:
                        raise ValueError("expected a parent version to compare with the current one, found none")
                    now = self.current(category, kind)
                    if now.version != parent.version:
                        raise StaleParentError(parent, now)
                number = max(self.version_numbers(category, kind), default=0) + 1
                body = {"schema": SCHEMA_VERSION, **{k: v for k, v in manifest.items() if k != LOG_ENTRY},
                        "category": category, "kind": kind, "version": number,
                        "parent": parent.version if parent else None, "reason": reason, "created": now_iso()}
                entry = None if feedback is None else {**feedback, "version_after": number}
                if entry is not None:
                    body[LOG_ENTRY] = entry
                write_durable(tmp / MANIFEST, json.dumps(body, indent=2, default=float).encode())
                _step("manifest written")
                fsync_dir(tmp)
                _step("temp folder synced")
                os.rename(tmp, base / f"v{number}")
                _step("renamed into place")
                fsync_dir(base)
                _step("kind folder synced")
                atomic_write_json(base / CURRENT, {"version": number})
                if entry is not None:
                    self._write_feedback(category, kind, entry)
                    _step("feedback logged")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return ModelRef(str(self.root), category, kind, number)

    def use(self, ref: ModelRef) -> ModelRef:
        """Make ``ref`` the current version (undo and "make current" are this pointer move)."""
        checked = self.ref(ref.category, ref.kind, ref.version)
        with self._locked(ref.category, ref.kind):
            self._recover_locked(ref.category, ref.kind)
            atomic_write_json(self.kind_folder(ref.category, ref.kind) / CURRENT, {"version": checked.version})
        return checked

    # -- reading a version -------------------------------------------------------------------------
    def read_manifest(self, ref: ModelRef) -> dict[str, Any]:
        folder = self.path(ref)
        if not folder.is_dir():
            raise ModelStoreError(f"expected model folder {folder}, found nothing there")
        manifest = read_json(folder / MANIFEST)
        missing = [k for k in REQUIRED_MANIFEST_KEYS if k not in manifest]
        if missing:
            raise ModelStoreError(f"{folder / MANIFEST}: expected keys {missing}, found only {sorted(manifest)}")
        if manifest["kind"] != ref.kind or manifest["category"] != ref.category:
            raise ModelStoreError(f"{folder / MANIFEST}: expected {ref.category}/{ref.kind}, "
                                  f"found {manifest['category']}/{manifest['kind']}")
        manifest.setdefault("version", ref.version)
        manifest.setdefault("parent", None)
        manifest.setdefault("reason", LEGACY_REASON)
        return manifest

    def read_weights(self, ref: ModelRef) -> dict[str, Any]:
        path = self.path(ref) / WEIGHTS
        if not path.is_file():
            raise ModelStoreError(f"{path}: expected model weights, found no file")
        import torch

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for damaged files
            raise ModelStoreError(f"{path}: expected a torch weights file, found damaged data ({type(exc).__name__}: {exc})") from None
        if not isinstance(state, dict):
            raise ModelStoreError(f"{path}: expected a dict of tensors, found {type(state).__name__}")
        return state

    def weights_bytes(self, ref: ModelRef) -> int:
        path = self.path(ref) / WEIGHTS
        return path.stat().st_size if path.is_file() else 0

    def read_calibration(self, ref: ModelRef) -> dict[str, Any]:
        return read_json(self.path(ref) / CALIBRATION)

    def calibration_file(self, ref: ModelRef) -> Path:
        """Where a version's thresholds live (shown to users who edit them by hand)."""
        return self.path(ref) / CALIBRATION

    def write_calibration(self, ref: ModelRef, data: dict[str, Any]) -> None:
        """Edit a version's calibration in place (scripts and tests; the app saves thresholds as a new version)."""
        atomic_write_json(self.calibration_file(ref), data)

    def calibration_stamp(self, ref: ModelRef) -> str:
        """A digest of the version's calibration as it is now ("" when absent): changes with any edit,
        wherever made (the dashboard, the CLI, another tab, a hand edit), so caches keyed on it see it."""
        try:
            return hashlib.sha1(self.calibration_file(ref).read_bytes()).hexdigest()[:16]
        except FileNotFoundError:
            return ""

    def manifest_stamp(self, ref: ModelRef) -> str:
        """The manifest file's identity: changes whenever it is rewritten (e.g. an evaluation saved)."""
        return _file_identity(self.path(ref) / MANIFEST)

    def weights_stamp(self, ref: ModelRef) -> str:
        """The weights file's identity (inode, size, mtime): equal for versions that share their weights."""
        return _file_identity(self.path(ref) / WEIGHTS)

    # -- evaluation results ------------------------------------------------------------------------
    def write_evaluation(self, ref: ModelRef, summary: dict[str, Any], images_csv: bytes, pixels_npz: bytes,
                         metrics: dict[str, Any]) -> None:
        """Save an evaluation of ``ref`` beside it and its metrics summary in the manifest."""
        folder = self.path(ref)
        if not folder.is_dir():
            raise ModelStoreError(f"expected model folder {folder}, found nothing there")
        atomic_write_json(folder / EVALUATION, summary)
        atomic_write_bytes(folder / EVAL_IMAGES, images_csv)
        atomic_write_bytes(folder / EVAL_PIXELS, pixels_npz)
        manifest = read_json(folder / MANIFEST)
        manifest["metrics"] = metrics
        atomic_write_json(folder / MANIFEST, manifest)

    def read_evaluation(self, ref: ModelRef) -> dict[str, Any] | None:
        path = self.path(ref) / EVALUATION
        return read_json(path) if path.is_file() else None

    def read_eval_images(self, ref: ModelRef) -> bytes | None:
        """The per-image evaluation table (CSV bytes), or None when not evaluated."""
        path = self.path(ref) / EVAL_IMAGES
        return path.read_bytes() if path.is_file() else None

    def read_eval_pixels(self, ref: ModelRef) -> bytes | None:
        """The pixel-score histograms (npz bytes), or None when not evaluated."""
        path = self.path(ref) / EVAL_PIXELS
        return path.read_bytes() if path.is_file() else None

    def evaluation_stamp(self, ref: ModelRef) -> str:
        """Changes whenever the version's evaluation is rewritten ("" when not evaluated)."""
        return _file_identity(self.path(ref) / EVAL_IMAGES)

    # -- feedback log ------------------------------------------------------------------------------
    def append_feedback(self, category: str, kind: str, entry: dict[str, Any]) -> None:
        """Append one action to the model's feedback log (one JSON line; under the store lock, after any entry
        a crashed writer left in a version's manifest)."""
        with self._locked(category, kind):
            self._recover_locked(category, kind)
            self._write_feedback(category, kind, entry)

    def _write_feedback(self, category: str, kind: str, entry: dict[str, Any]) -> None:
        """Append one line to the feedback log, durably; the caller holds the store lock."""
        append_line(self.kind_folder(category, kind) / FEEDBACK, entry)

    def read_feedback(self, category: str, kind: str) -> list[dict[str, Any]]:
        """Every logged feedback action, oldest first, including any a version holds but the log lacks (a
        writer that died between making the version and logging it): that entry is appended first.

        Raises:
            ModelStoreError: a line is not a JSON object (the file is left as it is; the message names the line).
        """
        entries = self._read_log(category, kind)
        if self._pending(category, kind, entries):
            self._recover_if_pending(category, kind)
            entries = self._read_log(category, kind)
        return entries

    def _recover_if_pending(self, category: str, kind: str) -> list[str]:
        """:meth:`_recover_locked` under the lock, taken only when something is pending."""
        if not self._pending(category, kind, self._read_log(category, kind)):
            return []
        with self._locked(category, kind):
            return self._recover_locked(category, kind)

    def _pending(self, category: str, kind: str, entries: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
        """(version, entry) of the versions newer than every logged one whose manifest holds a log entry: each
        was made, and its line never written. Only versions above the log's newest ``version_after`` are read
        (every writer settles these under the lock before it writes, so an older one cannot be pending)."""
        logged = max((v for e in entries if isinstance(v := e.get("version_after"), int)), default=0)
        base = self.kind_folder(category, kind)
        pending = []
        for number in self.version_numbers(category, kind):
            if number <= logged:
                continue
            try:
                entry = json.loads((base / f"v{number}" / MANIFEST).read_text()).get(LOG_ENTRY)
            except (OSError, ValueError, AttributeError):
                continue  # a damaged manifest is reported by whoever reads the version
            if isinstance(entry, dict) and entry.get("version_after") == number:
                pending.append((number, entry))
        return pending

    def _recover_locked(self, category: str, kind: str) -> list[str]:
        """Append the pending entries (oldest first); when the newest one's version was never made current and
        the pointer still names the version it was built on, make it current first (the write was complete at
        its rename: finish it). The caller holds the lock. Returns what was done."""
        pending = self._pending(category, kind, self._read_log(category, kind))
        done = []
        base = self.kind_folder(category, kind)
        for number, entry in pending:
            if number == self.version_numbers(category, kind)[-1]:
                current = self.current(category, kind).version
                if current != number and current == entry.get("version_before"):
                    atomic_write_json(base / CURRENT, {"version": number})
                    done.append(f"{category}/{kind}: v{number} made current (its writer stopped before)")
            self._write_feedback(category, kind, entry)
            done.append(f"{category}/{kind}: feedback entry of v{number} ({entry.get('action')}) logged")
        for line in done:
            logger.warning("recovered after a crash: %s", line)
        return done

    def _read_log(self, category: str, kind: str) -> list[dict[str, Any]]:
        path = self.kind_folder(category, kind) / FEEDBACK
        if not path.is_file():
            return []
        entries = []
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                entry = None
            if not isinstance(entry, dict):
                raise ModelStoreError(f"{path}, line {number}: expected one JSON object per line, found "
                                      f"{line[:60]!r}; the log is left untouched: repair or move that line")
            entries.append(entry)
        return entries

    # -- listing -----------------------------------------------------------------------------------
    def list_versions(self, category: str, kind: str) -> list[VersionInfo]:
        try:
            current: int | None = self.current(category, kind).version
        except ModelStoreError:
            current = None
        infos = []
        for number in self.version_numbers(category, kind):
            ref = ModelRef(str(self.root), category, kind, number)
            try:
                manifest: dict[str, Any] | None = self.read_manifest(ref)
                error = None if (self.path(ref) / WEIGHTS).is_file() else f"{self.path(ref) / WEIGHTS}: no weights"
            except ModelStoreError as exc:
                manifest, error = None, str(exc)
            infos.append(VersionInfo(ref, number == current, manifest, error))
        return infos

    def list_models(self, category: str | None = None) -> list[ModelRecord]:
        """The current version of every (category, kind), broken ones included with their error."""
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
                kind = kind_dir.name
                try:
                    ref = self.current(cat, kind)
                    manifest = self.read_manifest(ref)
                    if not (self.path(ref) / WEIGHTS).is_file():
                        raise ModelStoreError(f"{self.path(ref) / WEIGHTS}: expected model weights, found no file")
                    records.append(ModelRecord(self.path(ref), cat, kind, manifest, None, ref,
                                               len(self.version_numbers(cat, kind))))
                except ModelStoreError as exc:
                    records.append(ModelRecord(kind_dir, cat, kind, None, str(exc)))
        return records


def _file_identity(path: Path) -> str:
    """Inode, size and mtime of ``path`` ("" when absent): hard links share it, a rewrite changes it."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return ""
    return f"{st.st_ino}-{st.st_size}-{st.st_mtime_ns}"


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link ``source`` as ``target`` (a copy, fsynced, where links are not possible)."""
    try:
        os.link(source, target)
    except OSError:
        copy_durable(source, target)


def _remove_stale_temps(folder: Path, max_age_s: float) -> list[str]:
    """Remove ``folder``'s temp folders (``.tmp-*``: an unfinished version) and temp files (``.*.tmp``: an
    unfinished atomic write) not modified for ``max_age_s`` seconds. Returns one line per removal."""
    done = []
    cutoff = time.time() - max_age_s
    for path in folder.iterdir():
        name = path.name
        is_temp = (name.startswith(".tmp-") and path.is_dir()) or (
            name.startswith(".") and name.endswith(".tmp") and path.is_file())
        try:
            if not is_temp or path.lstat().st_mtime > cutoff:
                continue
            what = "folder" if path.is_dir() else "file"
            if what == "folder":
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:  # another process tidied it meanwhile
            continue
        done.append(f"{path}: removed (a temp {what} left by a stopped writer)")
    if done:
        fsync_dir(folder)
        for line in done:
            logger.warning("%s", line)
    return done
