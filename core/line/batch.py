"""Batch re-inspection: judge an archive of images with one model version, each image exactly once.

``python -m core batch --category C --model K [--version N] SOURCE... [--ray ADDRESS]``. Sources are folders
(searched recursively), globs, image files, or a CSV of paths (:func:`expand_sources`). Every image goes through
the one verdict pipeline (:func:`core.verdict.inspection.inspect`) and into the store's results database
(:class:`core.store.history.History`, source ``batch``) keyed by (its content's sha1, category, kind, version): the
key is unique there (`batch:<sha1>`), so an image is recorded once per model version whatever happens, and a rerun (after a crash,
a killed worker, or with more sources) skips every image the version judged already.

How it runs:

- the driver (this process) walks the sources in chunks of ``chunk_size`` paths, hashes each file, asks the
  database which hashes the version has judged, and hands the rest to a :class:`Runner`;
- the runner judges chunks: :class:`LocalRunner` in this process with the model loaded once (no Ray imported, no
  start-up cost); ``core.line.ray_cluster.RayRunner`` on Ray actors, one model per actor;
- each judged chunk is written in one transaction (it is in the database entirely or not at all), then progress
  is reported (rate, remaining time);
- at the end, :class:`BatchSummary` counts the verdict transitions against the previous version's verdicts of
  the same images (from any source).

Crash tests stop a run between its steps through :func:`core.files.step` (``batch: ...`` names).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from core.data.imageio import SUPPORTED_SUFFIXES, ImageLoadError, load_image
from core.files import step
from core.progress import duration_text
from core.store import lifecycle
from core.store.history import BATCH_SOURCE, History
from core.store.model_store import ModelRef, ModelStore
from core.verdict import inspection

logger = logging.getLogger(__name__)

SOURCE = BATCH_SOURCE  # the results database's source of a batch verdict (outside the drift watch)
REJECTED = "REJECTED"  # a file that could not be read or decoded (as the watch folder says it)
FAILED = "FAILED"  # judging raised inside the model: nothing recorded, so a rerun tries the image again
CHUNK = 16  # paths per chunk: hashed, looked up, judged and written together
NONE = "-"  # the "previous verdict" of an image the previous version never judged
FAILURES_SHOWN = 20  # failed images named in the summary (all of them are in the log)
MAX_FAILED_IN_A_ROW = 32  # judged images failing one after the other: the model, not the images -> stop the run
TRACEBACKS_LOGGED = 3  # a judge logs the full traceback of its first failures only, one line each after that


class BatchAborted(ValueError):
    """The run stopped: ``failed`` images in a row could not be judged (nothing recorded for them; what was judged
    before is kept, so a rerun after the cause is fixed continues)."""

    def __init__(self, failed: int, first: tuple[str, str]) -> None:
        super().__init__(f"expected a model that judges the images, found {failed} failures in a row (stopped; "
                         f"nothing recorded for them, judged images kept: rerun once the cause is fixed); the first: "
                         f"{first[0]}: {first[1]}")
        self.failed = failed

__all__ = ["CHUNK", "FAILED", "MAX_FAILED_IN_A_ROW", "SOURCE", "BatchAborted", "BatchProgress", "BatchSummary", "Item", "Judge", "Judged", "LocalRunner", "Runner",
           "expand_sources", "run_batch"]


@dataclass(frozen=True)
class Item:
    """One image to judge: its ``path`` and the sha1 of its bytes as the driver read them."""

    path: str
    sha1: str


@dataclass(frozen=True)
class Judged:
    """One image's verdict as a runner answers it. ``sha1`` is the hash of the bytes the judge read (None when
    the file could not be read); ``score`` None for REJECTED and NO VERDICT; ``host`` where it was judged."""

    path: str
    sha1: str | None
    verdict: str
    score: float | None
    threshold: float | None
    latency_ms: float | None
    note: str
    familiar: bool | None
    host: str
    time: float

    def record(self, ref: ModelRef) -> dict[str, Any]:
        """The row for the results database (core.line.results_log's fields). Its ``id`` (the history's
        reference) is ``batch:<sha1>``, or ``batch:unreadable:<path>`` for a file that could not be read: with the
        category, kind and version it is the row's unique key, whenever and however often the image is judged."""
        return {
            "time": self.time, "source": SOURCE, "name": Path(self.path).name, "sha1": self.sha1,
            "category": ref.category, "model": ref.kind, "version": ref.version, "verdict": self.verdict,
            "score": self.score, "threshold": self.threshold, "latency_ms": self.latency_ms,
            "reason": self.note or None, "path": self.path, "familiar": self.familiar, "judged_on": self.host,
            "id": f"{SOURCE}:{self.sha1}" if self.sha1 else f"{SOURCE}:unreadable:{self.path}"}


class Judge:
    """Judges chunks of :class:`Item` with one loaded model version (one per process or Ray actor)."""

    def __init__(self, ref: ModelRef, inference: str = "fast") -> None:
        import socket

        self.ref = ref
        self.model = lifecycle.load(ref, inference)
        self.host = socket.gethostname()
        self.failures = 0

    def __call__(self, items: Sequence[Item]) -> list[Judged]:
        """One :class:`Judged` per item, in order; a file that cannot be read or decoded is REJECTED; an image
        whose judging raises is FAILED (with the error: the runner goes on, the run records nothing for it)."""
        threshold = self.model.calibration.image_threshold
        out: list[Judged] = []
        for item in items:
            try:
                data = Path(item.path).read_bytes()
            except OSError as exc:
                out.append(Judged(item.path, None, REJECTED, None, None, None,
                                  f"expected a readable file, found {exc.strerror or exc}", None, self.host, time.time()))
                continue
            sha1 = hashlib.sha1(data).hexdigest()
            try:
                image = load_image(data, Path(item.path).name)
            except ImageLoadError as exc:
                out.append(Judged(item.path, sha1, REJECTED, None, None, None, str(exc), None, self.host, time.time()))
                continue
            try:
                found = inspection.inspect(self.model, [image])[0]
            except Exception as exc:  # one image's failure (memory, a model bug) must not stop the archive
                self.failures += 1
                if self.failures <= TRACEBACKS_LOGGED:
                    logger.exception("batch: judging %s failed", item.path)
                else:
                    logger.error("batch: judging %s failed: %s: %s", item.path, type(exc).__name__, exc)
                out.append(Judged(item.path, sha1, FAILED, None, None, None,
                                  f"judging failed: {type(exc).__name__}: {exc}", None, self.host, time.time()))
                continue
            out.append(Judged(item.path, sha1, found.verdict, found.score, threshold,
                              None if found.score is None else found.latency_ms, found.note, found.familiar,
                              self.host, time.time()))
        return out


class Runner(Protocol):
    """Where chunks are judged: :class:`LocalRunner` (this process) or ``core.line.ray_cluster.RayRunner``."""

    @property
    def workers(self) -> int:
        """How many chunks it judges at once."""
        ...

    def map(self, chunks: Iterable[list[Item]]) -> Iterator[list[Judged]]:
        """The judged chunks, each complete, in any order; it draws from ``chunks`` as it has room."""
        ...

    def close(self) -> None:
        """Release what it holds (Ray actors; nothing for the local runner)."""
        ...


class LocalRunner:
    """Judges in this process, one chunk after the other, the model loaded at the first chunk."""

    workers = 1

    def __init__(self, ref: ModelRef, inference: str = "fast") -> None:
        self.ref, self.inference = ref, inference
        self._judge: Judge | None = None

    def map(self, chunks: Iterable[list[Item]]) -> Iterator[list[Judged]]:
        for chunk in chunks:
            if self._judge is None or self._judge.ref != self.ref:
                self._judge = Judge(self.ref, self.inference)
            yield self._judge(chunk)

    def close(self) -> None:
        self._judge = None


@dataclass(frozen=True)
class BatchProgress:
    """Where a run stands: ``done`` of ``total`` images (judged now or before), ``judged`` by this run, its rate
    (images judged per second of this run) and the remaining time at that rate (None before the first chunk)."""

    done: int
    total: int
    judged: int
    rate: float
    remaining_s: float | None

    def describe(self) -> str:
        left = "" if self.remaining_s is None else f", {duration_text(self.remaining_s)} left"
        return f"[{self.done}/{self.total}] {self.judged} judged, {self.rate:.1f} img/s{left}"


@dataclass(frozen=True)
class BatchSummary:
    """What a run did for ``ref_label``: ``total`` images named, ``judged`` now, ``skipped`` (the version had
    judged the content already, in an earlier run or under another name in this one), ``rejected`` (unreadable);
    ``transitions`` counts (previous version's verdict, this version's) over every image named (``"-"``: the
    previous version never judged it); ``previous_version`` None when there is none. ``failed``: images whose
    judging raised (not recorded: a rerun tries them again), the first :data:`FAILURES_SHOWN` of them with the
    error in ``failures`` (path, error)."""

    ref_label: str
    version: int
    total: int
    judged: int
    skipped: int
    rejected: int
    seconds: float
    previous_version: int | None
    transitions: Counter[tuple[str, str]] = field(default_factory=Counter)
    verdicts: Counter[str] = field(default_factory=Counter)
    failed: int = 0
    failures: tuple[tuple[str, str], ...] = ()

    @property
    def rate(self) -> float:
        """Images judged per second of the run."""
        return self.judged / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        """The summary for people: counts, rate, verdicts, and the transitions table."""
        lines = [f"{self.ref_label}: {self.total} image(s), {self.judged} judged, {self.skipped} already judged, "
                 f"{self.rejected} unreadable, in {duration_text(self.seconds)} ({self.rate:.1f} img/s)",
                 "verdicts: " + (", ".join(f"{v} {n}" for v, n in sorted(self.verdicts.items())) or "none")]
        if self.failed:
            lines.append(f"{self.failed} image(s) FAILED (nothing recorded; a rerun tries them again):")
            lines += [f"  {path}: {error}" for path, error in self.failures]
            if self.failed > len(self.failures):
                lines.append(f"  ... and {self.failed - len(self.failures)} more (see the log)")
        if self.previous_version is None:
            lines.append("no previous version to compare with")
            return "\n".join(lines)
        lines.append(f"changes v{self.previous_version} -> v{self.version} (previous verdict -> this one: images; "
                     f"'{NONE}': not judged by v{self.previous_version}):")
        for (before, after), n in sorted(self.transitions.items(), key=lambda kv: (-kv[1], kv[0])):
            mark = "" if before == after else "  changed"
            lines.append(f"  {before:>10} -> {after:<10} {n}{mark}")
        return "\n".join(lines)


def _csv_paths(path: Path) -> list[Path]:
    """The paths in the first column of a CSV (a header ``path`` is skipped; relative paths are relative to the
    CSV's folder)."""
    out: list[Path] = []
    with open(path, newline="", encoding="utf-8") as handle:
        for i, row in enumerate(csv.reader(handle)):
            if not row or not row[0].strip() or (i == 0 and row[0].strip().lower() == "path"):
                continue
            named = Path(row[0].strip())
            out.append(named if named.is_absolute() else path.parent / named)
    return out


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)


def expand_sources(sources: Sequence[str]) -> list[Path]:
    """The image files ``sources`` name, each once, in the order named: a folder's images (recursively, sorted),
    a glob's matches, a ``.csv`` file's paths, an image file as given.

    Raises:
        FileNotFoundError: a source names nothing (checked before any model is loaded).
    """
    found: dict[Path, None] = {}
    missing: list[str] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            named = _images_in(path)
        elif path.is_file():
            named = _csv_paths(path) if path.suffix.lower() == ".csv" else [path]
        elif glob.has_magic(source):
            named = []
            for match in sorted(glob.glob(source, recursive=True)):
                hit = Path(match)
                named.extend(_images_in(hit) if hit.is_dir() else [hit] if hit.suffix.lower() in SUPPORTED_SUFFIXES
                             else [])
            if not named:
                missing.append(source)
        else:
            missing.append(source)
            continue
        found.update(dict.fromkeys(named))
    if missing:
        raise FileNotFoundError(f"expected images, folders, globs or a CSV of paths, found nothing at: "
                                f"{', '.join(missing)}")
    return list(found)


def _file_sha1(path: Path) -> str | None:
    digest = hashlib.sha1()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def previous_version(ref: ModelRef) -> int | None:
    """The newest version of ``ref``'s model below ``ref.version``, or None."""
    older = [v for v in ModelStore(ref.store).version_numbers(ref.category, ref.kind) if v < ref.version]
    return max(older) if older else None


@dataclass
class _Tally:
    judged: int = 0
    skipped: int = 0
    rejected: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    in_a_row: int = 0  # judged images failing one after the other, now
    hashes: dict[str, None] = field(default_factory=dict)
    copies: dict[str, list[str]] = field(default_factory=dict)  # content queued in this run -> its other paths


def run_batch(ref: ModelRef, paths: Sequence[Path], runner: Runner, history: History, *, chunk_size: int = CHUNK,
              progress: Callable[[BatchProgress], None] | None = None) -> BatchSummary:
    """Judge every image of ``paths`` with model version ``ref`` on ``runner`` into ``history``, skipping the
    contents ``ref`` judged already; see the module docstring.

    Raises:
        ValueError: ``chunk_size`` below 1.
        BatchAborted: :data:`MAX_FAILED_IN_A_ROW` images in a row failed to be judged.
    """
    if chunk_size < 1:
        raise ValueError(f"expected a chunk size of at least 1, found {chunk_size}")
    tally = _Tally()
    started = time.monotonic()
    total = len(paths)

    def chunks() -> Iterator[list[Item]]:
        for start in range(0, total, chunk_size):
            block = [(str(p), _file_sha1(Path(p))) for p in paths[start:start + chunk_size]]
            known = [sha1 for _, sha1 in block if sha1 is not None]
            done = history.verdicts_by_hash(ref.category, ref.kind, ref.version, known, source=SOURCE)
            todo: list[Item] = []
            for path, sha1 in block:
                if sha1 is None:
                    todo.append(Item(path, ""))  # unreadable now: the judge says why (keyed by its path)
                elif sha1 in done:
                    tally.skipped += 1
                    tally.hashes.setdefault(sha1)
                elif sha1 in tally.hashes:  # queued in this run already: it shares that image's outcome
                    tally.skipped += 1
                    tally.copies.setdefault(sha1, []).append(path)
                else:
                    tally.hashes.setdefault(sha1)
                    todo.append(Item(path, sha1))
            step("batch: chunk hashed")
            if todo:
                yield todo

    for judged in runner.map(chunks()):
        step("batch: chunk judged")
        history.record_line_records([j.record(ref) for j in judged if j.verdict != FAILED])
        step("batch: chunk recorded")
        for j in judged:
            if j.verdict == FAILED:
                tally.failures.append((j.path, j.note))
                tally.in_a_row += 1
                if j.sha1:  # its copies were counted as judged already: they failed with it
                    tally.hashes.pop(j.sha1, None)
                    copies = tally.copies.pop(j.sha1, [])
                    tally.skipped -= len(copies)
                    tally.failures += [(path, j.note) for path in copies]
                if tally.in_a_row >= MAX_FAILED_IN_A_ROW:
                    raise BatchAborted(tally.in_a_row, tally.failures[0])
                continue
            tally.in_a_row = 0
            tally.judged += 1
            tally.rejected += j.verdict == REJECTED
            if j.sha1:
                tally.hashes.setdefault(j.sha1)
        if progress is not None:
            elapsed = time.monotonic() - started
            done = tally.judged + tally.skipped + len(tally.failures)
            rate = tally.judged / elapsed if elapsed > 0 else 0.0
            progress(BatchProgress(done, total, tally.judged, rate,
                                   (total - done) / rate if rate > 0 else None))
    seconds = time.monotonic() - started
    return _summary(ref, history, total, tally, seconds)


def _summary(ref: ModelRef, history: History, total: int, tally: _Tally, seconds: float) -> BatchSummary:
    hashes = list(tally.hashes)
    now = history.verdicts_by_hash(ref.category, ref.kind, ref.version, hashes, source=SOURCE)
    before_version = previous_version(ref)
    before = ({} if before_version is None
              else history.verdicts_by_hash(ref.category, ref.kind, before_version, hashes))
    transitions: Counter[tuple[str, str]] = Counter()
    if before_version is not None:
        transitions.update((before.get(h, NONE), verdict) for h, verdict in now.items())
    logger.info("batch %s: %d judged, %d skipped in %.1f s", ref.label, tally.judged, tally.skipped, seconds)
    return BatchSummary(ref.label, ref.version, total, tally.judged, tally.skipped, tally.rejected, seconds,
                        before_version, transitions, Counter(now.values()), len(tally.failures),
                        tuple(tally.failures[:FAILURES_SHOWN]))
