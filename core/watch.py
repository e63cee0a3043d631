"""The watch folder: images that appear in ``in_dir`` are judged once and stored by verdict.

    python -m core watch --category C --in DIR --ok DIR --defect DIR [--log results.csv] [--copy] [--once]

- A file is taken only when it is stable: same size and modification time on two polls ``settle`` seconds
  apart (a camera still writing it is waited for). A stable file that is not yet a complete image (a camera
  that paused longer than the settle time) is retried on the next polls; only when it is still unreadable
  ``max_wait`` seconds after it was first seen is it rejected, with the reason.
- Never overwrite: cameras reuse file names, so each image is stored as ``<stem>-<sha1[:8]><suffix>`` (plus
  ``-<n>`` on a clash) in its verdict folder; the log row's ``moved_to`` names the stored file. Files are
  placed with a hard link (or a copy) that fails instead of replacing an existing file.
- Exactly once, across crashes. Each image goes through these steps, each idempotent:
  1. judged, and its result appended (fsync) to the journal ``<in_dir>/.watch_journal.jsonl`` as a "scored"
     entry with a fresh ``id`` and the target file;
  2. placed at the target (the source removed after the target exists);
  3. its reason file written (rejected images);
  4. its CSV row appended, carrying the ``id``;
  5. its line-log row appended, carrying the ``id``;
  6. a "done" line appended to the journal.
  A restart finishes every "scored" entry without "done" from the step it reached (a row is written only when
  no complete row with that ``id`` exists yet), without scoring it again. A line cut by a crash is never
  glued to the next one: the journal and the line log are ended with a newline first, the CSV's cut row is
  cut off before the next append.
- The journal is not trusted blindly: an entry whose file is not a plain name inside ``in_dir``, whose target
  is not a plain name inside the folder of its verdict, or whose file (source or stored) does not match the
  journalled hash is refused and logged; its file, if any, is judged afresh.
- NO VERDICT images (too small) and unreadable files go to ``rejected/`` with ``<stored name>.reason.txt``.

Fault injection (tests and ``benchmarks/bench_watch_cycles.py``): ``INSPECT_WATCH_CRASH_AT=STEP[:N]`` makes the
process ``os._exit(CRASH_EXIT)`` the N-th time (default 1) it reaches step boundary STEP (one of :data:`STEPS`;
``*_partial`` steps exit with half of a line written).
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from core import line_log
from core.imageio import SUPPORTED_SUFFIXES, ImageLoadError, load_image
from core.inspection import NO_VERDICT, inspect
from core.store import atomic_write_bytes

logger = logging.getLogger(__name__)

JOURNAL = ".watch_journal.jsonl"
LOG_FIELDS = ["time", "file", "sha1", "verdict", "score", "threshold", "model", "version", "latency_ms", "moved_to",
              "note", "id"]
REJECTED = "REJECTED"
STEPS: tuple[str, ...] = ("judged", "journal_partial", "journaled", "linked", "placed", "reasoned", "csv_partial",
                          "csv", "line_partial", "line", "done_partial", "done")
CRASH_ENV = "INSPECT_WATCH_CRASH_AT"
CRASH_EXIT = 77

Hook = Callable[[str], None]


@dataclass(frozen=True)
class WatchConfig:
    in_dir: Path
    ok_dir: Path
    defect_dir: Path
    rejected_dir: Path
    log: Path
    copy: bool = False  # copy instead of move (the input folder keeps the files; the journal remembers them)
    settle: float = 1.0
    poll: float = 0.5
    line_log: Path | None = None
    max_wait: float = 30.0  # seconds a stable but unreadable file is retried before it is rejected


def crash_hook_from_env() -> Hook | None:
    """The fault-injection hook ``INSPECT_WATCH_CRASH_AT=STEP[:N]`` asks for, or None when it is not set."""
    spec = os.environ.get(CRASH_ENV, "").strip()
    if not spec:
        return None
    step, _, nth = spec.partition(":")
    if step not in STEPS or (nth and not nth.isdigit()):
        raise ValueError(f"expected {CRASH_ENV}=STEP[:N] with STEP in {list(STEPS)}, found {spec!r}")
    count = int(nth or 1)
    reached = 0

    def hook(name: str) -> None:
        nonlocal reached
        if name == step:
            reached += 1
            if reached == count:
                os._exit(CRASH_EXIT)

    return hook


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _plain_name(name: Any) -> bool:
    """Whether ``name`` is a bare file name (no folder part, not hidden, no control characters)."""
    return (isinstance(name, str) and bool(name) and name not in (".", "..") and not name.startswith(".")
            and "/" not in name and "\\" not in name and not any(ord(c) < 32 for c in name))


def _one_line(value: Any) -> Any:
    """CSV cells never hold a line break, so a row cut by a crash ends at the file's last newline."""
    return " ".join(value.splitlines()) if isinstance(value, str) else value


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _end_with_newline(path: Path) -> None:
    """Terminate a line a crash cut short, so the next append starts a line of its own."""
    if not path.is_file():
        return
    with open(path, "rb+") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() == 0:
            return
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) != b"\n":
            handle.write(b"\n")
            handle.flush()
            os.fsync(handle.fileno())


def _cut_partial_row(handle: BinaryIO) -> None:
    """Truncate an append-mode file after its last newline (drops a CSV row a crash cut short)."""
    end = handle.seek(0, os.SEEK_END)
    if end == 0:
        return
    handle.seek(end - 1)
    if handle.read(1) == b"\n":
        return
    pos = end
    while pos > 0:
        start = max(0, pos - 65536)
        handle.seek(start)
        chunk = handle.read(pos - start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            handle.truncate(start + cut + 1)
            return
        pos = start
    handle.truncate(0)


def _write_line(handle: BinaryIO, data: bytes, hook: Hook | None, step: str) -> None:
    """Write one line and fsync it; with a fault-injection hook, in two halves with ``step`` between them."""
    if hook is None:
        handle.write(data)
    else:
        half = len(data) // 2
        handle.write(data[:half])
        handle.flush()
        os.fsync(handle.fileno())
        hook(step)
        handle.write(data[half:])
    handle.flush()
    os.fsync(handle.fileno())


class Watcher:
    """One watch folder. ``model_for()`` returns the model to judge with (the store's current version);
    ``hook`` (default: :func:`crash_hook_from_env`) is called with each step boundary's name."""

    def __init__(self, config: WatchConfig, model_for: Callable[[], Any], hook: Hook | None = None) -> None:
        self.config = config
        self.model_for = model_for
        self.hook = hook if hook is not None else crash_hook_from_env()
        for folder in (config.ok_dir, config.defect_dir, config.rejected_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.journal = config.in_dir / JOURNAL
        self._seen: dict[str, tuple[int, int]] = {}
        self._first_seen: dict[str, float] = {}  # name -> when this watcher first saw it (for max_wait)
        self.results: dict[tuple[str, str], dict[str, Any]] = {}  # (file, sha1) -> unfinished "scored" entry
        self.done: set[tuple[str, str]] = set()
        self._claimed: set[str] = set()  # targets of unfinished entries (not on disk yet)
        self._read_journal()

    def _step(self, name: str) -> None:
        if self.hook is not None:
            self.hook(name)

    # -- the journal ---------------------------------------------------------------------------------------

    def _read_journal(self) -> None:
        if not self.journal.is_file():
            return
        _end_with_newline(self.journal)
        scored: dict[str, dict[str, Any]] = {}
        finished: set[str] = set()
        for line in self.journal.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash: its file was not placed yet, it is judged again (never twice)
            if not isinstance(entry, dict):
                continue
            entry_id = self._entry_id(entry)
            if entry.get("state") == "scored":
                problem = self._entry_problem(entry)
                if problem is not None:
                    self._refuse(entry, problem)
                    continue
                scored[entry_id] = entry
            elif entry.get("state") == "done":
                finished.add(entry_id)
                if isinstance(entry.get("file"), str) and isinstance(entry.get("sha1"), str):
                    self.done.add((entry["file"], entry["sha1"]))
        for entry_id, entry in scored.items():
            if entry_id not in finished:
                self.results[(entry["file"], entry["sha1"])] = entry
                self._claimed.add(str(entry["moved_to"]))

    @staticmethod
    def _entry_id(entry: dict[str, Any]) -> str:
        """The entry's id (entries journalled before ids existed: file and hash)."""
        return str(entry.get("id") or f"{entry.get('file')}:{entry.get('sha1')}")

    def _folder_for(self, verdict: Any) -> Path:
        return {"OK": self.config.ok_dir, "DEFECT": self.config.defect_dir}.get(verdict, self.config.rejected_dir)

    def _entry_problem(self, entry: dict[str, Any]) -> str | None:
        """Why a journalled "scored" entry cannot be trusted, or None."""
        if not _plain_name(entry.get("file")):
            return f"expected a plain file name inside {self.config.in_dir}, found {entry.get('file')!r}"
        sha1 = entry.get("sha1")
        if not (isinstance(sha1, str) and len(sha1) == 40 and all(c in "0123456789abcdef" for c in sha1)):
            return f"expected a SHA-1 hex digest, found {sha1!r}"
        if entry.get("verdict") not in ("OK", "DEFECT", REJECTED, NO_VERDICT):
            return f"expected a verdict OK, DEFECT, {REJECTED} or {NO_VERDICT}, found {entry.get('verdict')!r}"
        moved_to = entry.get("moved_to")
        folder = self._folder_for(entry["verdict"])
        if not isinstance(moved_to, str) or not _plain_name(Path(moved_to).name):
            return f"expected a target file inside {folder}, found {moved_to!r}"
        if Path(moved_to).parent.resolve() != folder.resolve():
            return f"expected the target of a {entry['verdict']} image inside {folder}, found {moved_to!r}"
        return None

    def _refuse(self, entry: dict[str, Any], problem: str) -> None:
        logger.warning("watch journal %s: refused entry %s for %r: %s", self.journal, self._entry_id(entry),
                       entry.get("file"), problem)
        key = (str(entry.get("file")), str(entry.get("sha1")))
        if self.results.get(key) is entry:
            del self.results[key]
        self._claimed.discard(str(entry.get("moved_to")))

    def _journal_append(self, record: dict[str, Any], step: str) -> None:
        data = (json.dumps(record, default=float) + "\n").encode()
        with open(self.journal, "ab") as handle:
            _write_line(handle, data, self.hook, step)

    # -- recovery ------------------------------------------------------------------------------------------

    def recover(self) -> int:
        """Finish entries a crash left between "scored" and "done" (placed and logged once, not scored again).
        Entries whose files do not match their journalled hash are refused. Returns the number finished."""
        pending = list(self.results.values())
        if not pending:
            return 0
        csv_ids = self._csv_ids()
        line_ids = line_log.ids(self.config.line_log) if self.config.line_log is not None else set()
        finished = 0
        for entry in pending:
            problem = self._files_problem(entry)
            if problem is not None:
                self._refuse(entry, problem)
                continue
            self._complete(entry, csv_ids, line_ids)
            finished += 1
        return finished

    def _files_problem(self, entry: dict[str, Any]) -> str | None:
        """Why an unfinished entry's files do not let it be finished (None: they match its hash)."""
        source = self.config.in_dir / entry["file"]
        target = Path(entry["moved_to"])
        if target.is_file():
            if _sha1(target) != entry["sha1"]:
                return f"expected {target} to hold the journalled image {entry['sha1'][:12]}, found other content"
            return None
        if not source.is_file():
            return f"expected {source} or {target}, found neither"
        if _sha1(source) != entry["sha1"]:
            return (f"expected {source} to match the journalled hash {entry['sha1'][:12]}, found other content "
                    "(it is judged as a new image)")
        return None

    def _csv_ids(self) -> set[str]:
        """Ids of the complete rows of the CSV log (a last row without its newline does not count: it is cut)."""
        if not self.config.log.is_file():
            return set()
        lines = self.config.log.read_bytes().decode(errors="replace").split("\n")[:-1]
        rows = list(csv.reader(lines))
        if not rows or "id" not in rows[0]:
            return set()
        at = rows[0].index("id")
        return {row[at] for row in rows[1:] if len(row) > at}

    # -- one image -----------------------------------------------------------------------------------------

    def stable_files(self) -> list[Path]:
        """Image files whose size and mtime did not change since the previous poll."""
        ready = []
        current: dict[str, tuple[int, int]] = {}
        now = time.time()
        for path in sorted(self.config.in_dir.iterdir()):
            if not path.is_file() or path.name.startswith(".") or path.suffix.lower() not in SUPPORTED_SUFFIXES:
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            current[path.name] = (st.st_size, st.st_mtime_ns)
            settled = now - st.st_mtime >= self.config.settle
            if self._seen.get(path.name) == current[path.name] and settled:
                ready.append(path)
        self._seen = current
        self._first_seen = {name: self._first_seen.get(name, now) for name in current}
        return ready

    def _target(self, folder: Path, name: str, sha1: str) -> Path:
        """A file name in ``folder`` no file and no unfinished entry uses: ``<stem>-<sha1[:8]><suffix>``."""
        stem, suffix = Path(name).stem, Path(name).suffix
        for n in range(100_000):
            candidate = folder / f"{stem}-{sha1[:8]}{'' if n == 0 else f'-{n}'}{suffix}"
            if not candidate.exists() and str(candidate) not in self._claimed:
                return candidate
        raise FileExistsError(f"expected a free file name for {name} in {folder}, found 100,000 taken")

    def process(self, path: Path) -> dict[str, Any] | None:
        """Judge one stable file exactly once; returns its result (None when already handled or not a complete
        image yet)."""
        try:
            data = path.read_bytes()  # hashed and decoded from the same bytes
        except FileNotFoundError:
            return None
        sha1 = hashlib.sha1(data).hexdigest()
        key = (path.name, sha1)
        if key in self.done:
            if not self.config.copy:  # a file moved back in by hand: handled before, not judged twice
                target = self._target(self.config.rejected_dir, path.name, sha1)
                self._place(path, target)
                self._reason(target, "already judged (same name and content); see the log")
            return None
        if key in self.results:
            self.recover()
            return None
        image: Any = None
        problem = ""
        try:
            image = load_image(data, name=path.name)
        except ImageLoadError as exc:
            waited = time.time() - self._first_seen.get(path.name, time.time())
            if waited < self.config.max_wait:
                return None  # maybe a camera that paused mid-file: tried again on the next polls
            problem = (f"{exc.reason} (still not a complete image {self.config.max_wait:g} s after it "
                                    "appeared)")
        model = self.model_for()
        entry: dict[str, Any] = {"state": "scored", "id": uuid.uuid4().hex, "time": time.time(), "file": path.name,
                                 "sha1": sha1, "category": model.category, "model": model.kind,
                                 "version": model.version, "threshold": model.calibration.image_threshold}
        if image is None:
            entry.update({"verdict": REJECTED, "score": None, "latency_ms": None, "note": problem})
        else:
            found = inspect(model, [image])[0]
            entry.update({"verdict": found.verdict, "score": found.score, "latency_ms": found.latency_ms,
                          "note": found.note})
        entry["moved_to"] = str(self._target(self._folder_for(entry["verdict"]), path.name, sha1))
        self._step("judged")
        self._journal_append(entry, "journal_partial")  # the result is durable before anything moves
        self.results[key] = entry
        self._claimed.add(entry["moved_to"])
        self._step("journaled")
        self._complete(entry)
        return entry

    def _complete(self, entry: dict[str, Any], csv_ids: set[str] | None = None,
                  line_ids: set[str] | None = None) -> None:
        """Steps 2-6 for a journalled entry; ``csv_ids``/``line_ids`` (recovery) skip rows already written."""
        target = Path(entry["moved_to"])
        self._place(self.config.in_dir / entry["file"], target, entry["sha1"] if csv_ids is not None else None)
        self._step("placed")
        if entry["verdict"] in (REJECTED, NO_VERDICT):
            self._reason(target, entry["note"] or entry["verdict"])
        self._step("reasoned")
        if csv_ids is None or entry["id"] not in csv_ids:
            self._write_row(entry)
        self._step("csv")
        if self.config.line_log is not None and (line_ids is None or entry["id"] not in line_ids):
            line_log.append(self.config.line_log, self._line_record(entry),
                            between=None if self.hook is None else lambda: self._step("line_partial"))
        self._step("line")
        self._journal_append({"state": "done", "id": entry["id"], "file": entry["file"], "sha1": entry["sha1"]},
                             "done_partial")
        key = (entry["file"], entry["sha1"])
        self.results.pop(key, None)
        self._claimed.discard(entry["moved_to"])
        self.done.add(key)
        self._step("done")

    def _place(self, source: Path, target: Path, sha1: str | None = None) -> None:
        """Put ``source``'s file at ``target`` without ever replacing a file there; idempotent (a target that
        exists is the result of an earlier attempt: the source left behind is removed, unless copying, and, with
        ``sha1`` (recovery), only if it still holds that content: a new image under the same name is kept)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            if sha1 is not None and source.is_file() and _sha1(source) != sha1:
                return
        else:
            if self.config.copy:
                self._copy_in(source, target)
            else:
                try:
                    os.link(source, target)
                except FileExistsError:
                    raise
                except OSError as exc:  # another file system, or one without hard links
                    if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                        raise
                    self._copy_in(source, target)
            _fsync_dir(target.parent)
            self._step("linked")
        if not self.config.copy and source.exists():
            source.unlink()
            _fsync_dir(source.parent)

    @staticmethod
    def _copy_in(source: Path, target: Path) -> None:
        """Copy to a hidden part file beside ``target`` (fsync), then link or rename it into place."""
        part = target.with_name(f".{target.name}.part")
        part.unlink(missing_ok=True)
        shutil.copy2(source, part)
        with open(part, "rb") as handle:
            os.fsync(handle.fileno())
        try:
            os.link(part, target)
            part.unlink()
        except FileExistsError:
            part.unlink()
            raise
        except OSError:
            if target.exists():
                raise FileExistsError(f"expected no file at {target}, found one") from None
            os.rename(part, target)

    def _reason(self, target: Path, reason: str) -> None:
        atomic_write_bytes(self.config.rejected_dir / f"{target.name}.reason.txt", (reason + "\n").encode())

    def _write_row(self, entry: dict[str, Any]) -> None:
        log = self.config.log
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a+b") as handle:
            _cut_partial_row(handle)
            handle.seek(0, os.SEEK_END)
            fields = LOG_FIELDS
            if handle.tell() == 0:
                handle.write((",".join(LOG_FIELDS) + "\r\n").encode())
            else:
                handle.seek(0)
                header = handle.readline().decode(errors="replace").strip()
                if header and header.split(",") != LOG_FIELDS:
                    fields = header.split(",")  # a log begun by an older version: its columns are kept
            text = io.StringIO()
            csv.DictWriter(text, fieldnames=fields, extrasaction="ignore").writerow(
                {k: _one_line(entry.get(k)) for k in fields})
            _write_line(handle, text.getvalue().encode(), self.hook, "csv_partial")

    @staticmethod
    def _line_record(entry: dict[str, Any]) -> dict[str, Any]:
        return {"time": entry["time"], "source": "watch", "id": entry["id"], "name": entry["file"],
                "sha1": entry["sha1"],
                **{k: entry.get(k) for k in ("category", "score", "threshold", "verdict", "model", "version",
                                             "latency_ms")},
                "reason": entry.get("note") or "", "path": entry["moved_to"]}

    # -- the loop ------------------------------------------------------------------------------------------

    def poll(self) -> int:
        """One look at the folder: judge the stable files. Returns the number judged."""
        judged = 0
        for path in self.stable_files():
            if self.process(path) is not None:
                judged += 1
        return judged

    def run(self, once: bool = False, stop: Callable[[], bool] = lambda: False,
            on_poll: Callable[[], None] | None = None) -> int:
        """Poll until ``stop()`` (or, with ``once``, until the folder holds no unhandled image). Returns the
        number of files judged. ``on_poll`` is called after every poll that went through."""
        judged = self.recover()
        while not stop():
            judged += self.poll()
            if on_poll is not None:
                on_poll()
            if once and not self._pending():
                break
            time.sleep(self.config.poll)
        return judged

    def _pending(self) -> bool:
        """Whether an image file in the input folder still waits for a verdict."""
        for p in self.config.in_dir.iterdir():
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SUPPORTED_SUFFIXES:
                if self.config.copy and (p.name, _sha1(p)) in self.done:
                    continue
                return True
        return False
