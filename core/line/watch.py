"""The watch folder: images that appear in ``in_dir`` are judged once and stored by verdict.

    python -m core watch --category C --in DIR --ok DIR --defect DIR [--log results.csv] [--copy] [--once]

- A file is taken only when it is stable: same size and modification time on two polls ``settle`` seconds
  apart (a camera still writing it is waited for). A stable file that is not yet a complete image (a camera
  that paused longer than the settle time) is retried on the next polls; only when it is still unreadable
  ``max_wait`` seconds after it was first seen is it rejected, with the reason.
- Never overwrite: cameras reuse file names, so each image is stored as ``<stem>-<sha1[:8]><suffix>`` (plus
  ``-<n>`` on a clash) in its verdict folder; the log row's ``moved_to`` names the stored file. Files are
  placed with a hard link (or a copy) that fails instead of replacing an existing file.
- Claimed before it is read: a stable file is first renamed (copied, with ``--copy``) into the hidden claims
  folder ``<in_dir>/.claimed/<id><suffix>``, journalled as a "claimed" entry just before; what is hashed, judged
  and stored is that claimed file. A camera writing the same name again meanwhile makes a new file, judged on
  its own (never stored under the previous image's verdict, never removed unjudged).
- Exactly once, across crashes. Each image goes through these steps, each idempotent:
  1. claimed (above), judged, and its result appended (fsync) to the journal ``<in_dir>/.watch_journal.jsonl``
     as a "scored" entry with a fresh ``id``, its claim and the target file;
  2. placed at the target (the claimed file removed after the target exists);
  3. its reason file written (rejected images);
  4. its CSV row appended, carrying the ``id``;
  5. its line-log row appended, carrying the ``id``;
  6. a "done" line appended to the journal.
  A restart trusts a "scored" entry without "done" only when its target exists and holds the journalled image:
  then only the rows (each written only when no complete row with that ``id`` exists yet) and "done" remain.
  When its target does not exist no row can have been written yet, so the entry is journalled "dropped" and the
  claimed file judged again (a forged entry never files an image unjudged). Claimed files without a finished
  entry are judged. A line cut by a crash is never glued to the next one: the journal and the line log are
  ended with a newline first, the CSV's cut row is cut off before the next append.
- The journal is not trusted blindly: an entry whose file is not a plain name inside ``in_dir``, whose target
  is not a plain name inside the folder of its verdict, or whose stored file does not match the journalled hash
  is refused and logged; its file, if any, is judged afresh.
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
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from core.data.imageio import SUPPORTED_SUFFIXES, ImageLoadError, load_image
from core.files import append_line, atomic_write_bytes, copy_durable, fsync_dir, write_synced
from core.line import line_history
from core.line import results_log as line_log
from core.portable import DEFECT, OK, REVIEW
from core.store.history import History
from core.verdict.drift_status import DriftWatch
from core.verdict.inspection import NO_VERDICT, inspect

logger = logging.getLogger(__name__)

JOURNAL = ".watch_journal.jsonl"
LOG_FIELDS = ["time", "file", "sha1", "verdict", "score", "threshold", "model", "version", "latency_ms", "moved_to",
              "note", "id"]
REJECTED = "REJECTED"
CLAIMS = ".claimed"
STEPS: tuple[str, ...] = ("claim_partial", "claim_journaled", "claimed", "judged", "journal_partial", "journaled",
                          "linked", "placed", "reasoned", "csv_partial", "csv", "line_partial", "line", "done_partial",
                          "done")
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
    review_dir: Path | None = None  # REVIEW images (in the review band: a person decides); None: <ok_dir>/../review

    @property
    def review_folder(self) -> Path:
        return self.review_dir if self.review_dir is not None else self.ok_dir.parent / "review"


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


class Watcher:
    """One watch folder. ``model_for()`` returns the model to judge with (the store's current version);
    ``hook`` (default: :func:`crash_hook_from_env`) is called with each step boundary's name. With a line log,
    ``drift`` (default: one over the model store's results database, the line log imported into it) is checked
    after every poll that judged images: a WARNING in the log once per drift alarm."""

    def __init__(self, config: WatchConfig, model_for: Callable[[], Any], hook: Hook | None = None,
                 drift: DriftWatch | None = None) -> None:
        self.config = config
        self.drift = drift
        self._warned: set[int] = set()  # drift alarms (ids) this watcher logged
        self.model_for = model_for
        self.hook = hook if hook is not None else crash_hook_from_env()
        for folder in (config.ok_dir, config.defect_dir, config.review_folder, config.rejected_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.journal = config.in_dir / JOURNAL
        self.claims_dir = config.in_dir / CLAIMS
        self.claims_dir.mkdir(exist_ok=True)
        self._seen: dict[str, tuple[int, int]] = {}
        self._first_seen: dict[str, float] = {}  # name -> when this watcher first saw it (for max_wait)
        self.claims: dict[str, dict[str, Any]] = {}  # claim id -> "claimed" entry not finished yet
        self.results: dict[str, dict[str, Any]] = {}  # entry id -> unfinished "scored" entry
        self.done: set[tuple[str, str]] = set()  # (file, sha1) of every finished image
        self._reserved: set[str] = set()  # targets of unfinished entries (not on disk yet)
        self._store: str | None = None  # the model store of the models judging here (its results database)
        self._read_journal()

    def _step(self, name: str) -> None:
        if self.hook is not None:
            self.hook(name)

    # -- the journal ---------------------------------------------------------------------------------------

    def _read_journal(self) -> None:
        if not self.journal.is_file():
            return
        claims: dict[str, dict[str, Any]] = {}
        scored: dict[str, dict[str, Any]] = {}
        closed: set[str] = set()  # ids of entries finished ("done") or given up ("dropped")
        for line in self.journal.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash: its step did not happen yet, it is done again (never twice)
            if not isinstance(entry, dict):
                continue
            state = entry.get("state")
            if state == "claimed":
                problem = self._claim_problem(entry)
                if problem is not None:
                    self._refuse(entry, problem)
                    continue
                claims[str(entry["id"])] = entry
            elif state == "scored":
                problem = self._entry_problem(entry)
                if problem is not None:
                    self._refuse(entry, problem)
                    continue
                scored[self._entry_id(entry)] = entry
            elif state == "done":
                closed.add(self._entry_id(entry))
                closed.add(str(entry.get("claim_id")))
                if isinstance(entry.get("file"), str) and isinstance(entry.get("sha1"), str):
                    self.done.add((entry["file"], entry["sha1"]))
            elif state == "dropped":
                closed.add(str(entry.get("id")))
        self.claims = {cid: c for cid, c in claims.items() if cid not in closed}
        for entry_id, entry in scored.items():
            if entry_id not in closed:
                self.results[entry_id] = entry
                self._reserved.add(str(entry["moved_to"]))

    @staticmethod
    def _entry_id(entry: dict[str, Any]) -> str:
        """The entry's id (entries journalled before ids existed: file and hash)."""
        return str(entry.get("id") or f"{entry.get('file')}:{entry.get('sha1')}")

    def _folder_for(self, verdict: Any) -> Path:
        return {OK: self.config.ok_dir, DEFECT: self.config.defect_dir,
                REVIEW: self.config.review_folder}.get(verdict, self.config.rejected_dir)

    def _claim_problem(self, entry: dict[str, Any]) -> str | None:
        """Why a journalled "claimed" entry cannot be trusted, or None."""
        if not _plain_name(entry.get("file")):
            return f"expected a plain file name inside {self.config.in_dir}, found {entry.get('file')!r}"
        if not isinstance(entry.get("id"), str) or not _plain_name(entry.get("claim")):
            return f"expected an id and a plain claim file name inside {self.claims_dir}, found {entry.get('claim')!r}"
        return None

    def _entry_problem(self, entry: dict[str, Any]) -> str | None:
        """Why a journalled "scored" entry cannot be trusted, or None."""
        if not _plain_name(entry.get("file")):
            return f"expected a plain file name inside {self.config.in_dir}, found {entry.get('file')!r}"
        if "claim" in entry and not _plain_name(entry.get("claim")):
            return f"expected a plain claim file name inside {self.claims_dir}, found {entry.get('claim')!r}"
        sha1 = entry.get("sha1")
        if not (isinstance(sha1, str) and len(sha1) == 40 and all(c in "0123456789abcdef" for c in sha1)):
            return f"expected a SHA-1 hex digest, found {sha1!r}"
        if entry.get("verdict") not in (OK, REVIEW, DEFECT, REJECTED, NO_VERDICT):
            return f"expected a verdict OK, REVIEW, DEFECT, {REJECTED} or {NO_VERDICT}, found {entry.get('verdict')!r}"
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
        if self.results.get(self._entry_id(entry)) is entry:
            del self.results[self._entry_id(entry)]
            self._reserved.discard(str(entry.get("moved_to")))

    def _drop(self, entry_id: str) -> None:
        """Journal that an entry is given up (its step is done afresh): read back, it is neither pending nor
        judged."""
        self._journal_append({"state": "dropped", "id": entry_id}, None)
        entry = self.results.pop(entry_id, None)
        if entry is not None:
            self._reserved.discard(str(entry.get("moved_to")))
        self.claims.pop(entry_id, None)

    def _journal_append(self, record: dict[str, Any], step: str | None) -> None:
        """One fsynced journal line (a line a crash cut short is ended first); with a fault-injection hook and
        a ``step``, ``step`` is reached with half of the line written."""
        between = None if self.hook is None or step is None else (lambda: self._step(step))
        append_line(self.journal, record, between=between)

    # -- recovery ------------------------------------------------------------------------------------------

    def recover(self) -> int:
        """Finish what a crash left unfinished; returns the number of images finished or judged.

        A "scored" entry is trusted only when its target already exists and holds the journalled image (then
        only its rows and "done" remain). When the target does not exist, no row can have been written yet: the
        entry is dropped and its claimed file judged again (a forged entry never files an image unjudged).
        Claimed files without a finished entry are judged; claim entries whose file is gone (a crash before the
        rename: the image is still in the input folder) are dropped."""
        for part in self.claims_dir.glob(".*.part"):  # a copy into the claims a crash cut short
            part.unlink(missing_ok=True)
        finished = 0
        if self.results:
            csv_ids = self._csv_ids()
            line_ids = line_log.ids(self.config.line_log) if self.config.line_log is not None else set()
            for entry_id, entry in list(self.results.items()):
                target = Path(entry["moved_to"])
                if not target.is_file():
                    logger.info("watch journal %s: entry %s for %r was not placed before the crash (%s does not "
                                "exist): dropped, its file is judged again", self.journal, entry_id,
                                entry["file"], target)
                    self._drop(entry_id)
                    continue
                if _sha1(target) != entry["sha1"]:
                    self._refuse(entry, f"expected {target} to hold the journalled image {entry['sha1'][:12]}, "
                                        "found other content")
                    self._drop(entry_id)
                    continue
                self._complete(entry, csv_ids, line_ids)
                finished += 1
        for claim in list(self.claims.values()):
            if claim["id"] not in self.claims:
                continue  # finished by one of the entries above
            if (self.claims_dir / claim["claim"]).is_file():
                finished += self._judge_claim(claim) is not None
            else:
                self._drop(claim["id"])  # not renamed before the crash: its file is claimed again from in_dir
        known = {str(c["claim"]) for c in self.claims.values()}
        for path in sorted(self.claims_dir.iterdir()):  # no journalled claim (placed by hand): claimed afresh
            if path.is_file() and not path.name.startswith(".") and path.name not in known:
                logger.warning("watch folder %s: %s has no journalled claim: judged as a new image",
                               self.config.in_dir, path)
                stray = self._claim(path, path.name)
                if stray is not None:
                    finished += self._judge_claim(stray) is not None
        return finished

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
            if not candidate.exists() and str(candidate) not in self._reserved:
                return candidate
        raise FileExistsError(f"expected a free file name for {name} in {folder}, found 100,000 taken")

    def process(self, path: Path) -> dict[str, Any] | None:
        """Judge one stable file exactly once; returns its result (None when already handled or not a complete
        image yet). The file is first claimed (renamed into the claims folder, journalled), and what is judged,
        hashed and stored is that claimed file: a camera writing the same name again makes a new file."""
        try:
            data = path.read_bytes()  # a look before claiming: is it a complete image yet?
        except FileNotFoundError:
            return None
        sha1 = hashlib.sha1(data).hexdigest()
        if self.config.copy and (path.name, sha1) in self.done:
            return None  # copying: the input folder keeps the files it was given
        image: Any = None
        late = ""
        try:
            image = load_image(data, name=path.name)
        except ImageLoadError:
            waited = time.time() - self._first_seen.get(path.name, time.time())
            if waited < self.config.max_wait:
                return None  # maybe a camera that paused mid-file: tried again on the next polls
            late = f" (still not a complete image {self.config.max_wait:g} s after it appeared)"
        claim = self._claim(path, path.name)
        if claim is None:
            return None
        return self._judge_claim(claim, (sha1, image), late)

    def _claim(self, source: Path, name: str) -> dict[str, Any] | None:
        """Take ``source`` for judging: journal a "claimed" entry, then rename it (a copy, with ``copy``) to
        ``<claims>/<id><suffix>``. None when the file went away in between."""
        claim_id = uuid.uuid4().hex
        claim_name = f"{claim_id}{Path(name).suffix.lower()}"
        claim: dict[str, Any] = {"state": "claimed", "id": claim_id, "time": time.time(), "file": name,
                                 "claim": claim_name}
        self._journal_append(claim, "claim_partial")
        self.claims[claim_id] = claim
        self._step("claim_journaled")
        claimed = self.claims_dir / claim_name
        try:
            if self.config.copy and source.parent != self.claims_dir:
                part = self.claims_dir / f".{claim_name}.part"
                copy_durable(source, part)
                os.rename(part, claimed)
            else:
                os.rename(source, claimed)
        except FileNotFoundError:
            self._drop(claim_id)
            return None
        fsync_dir(self.claims_dir)
        fsync_dir(source.parent)
        self._step("claimed")
        return claim

    def _judge_claim(self, claim: dict[str, Any], looked: tuple[str, Any] | None = None,
                     late: str = "") -> dict[str, Any] | None:
        """Judge a claimed file and take it through steps 2-6; ``looked`` is the (sha1, image) of a look at the
        file before it was claimed, reused when the claimed file holds the same bytes."""
        claimed = self.claims_dir / claim["claim"]
        try:
            data = claimed.read_bytes()
        except FileNotFoundError:
            self._drop(claim["id"])
            return None
        name = claim["file"]
        sha1 = hashlib.sha1(data).hexdigest()
        if (name, sha1) in self.done:  # a file moved back in by hand: handled before, not judged twice
            target = self._target(self.config.rejected_dir, name, sha1)
            self._place(claimed, target)
            self._reason(target, "already judged (same name and content); see the log")
            self._drop(claim["id"])
            return None
        image: Any = looked[1] if looked is not None and looked[0] == sha1 else None
        problem = ""
        if image is None:
            try:
                image = load_image(data, name=name)
            except ImageLoadError as exc:
                problem = exc.reason + (late if looked is not None and looked[0] == sha1 else "")
        model = self.model_for()
        self._store = getattr(getattr(model, "ref", None), "store", self._store)
        entry: dict[str, Any] = {"state": "scored", "id": uuid.uuid4().hex, "claim_id": claim["id"],
                                 "claim": claim["claim"], "time": time.time(), "file": name, "sha1": sha1,
                                 "category": model.category, "model": model.kind, "version": model.version,
                                 "threshold": model.calibration.image_threshold}
        if image is None:
            entry.update({"verdict": REJECTED, "score": None, "latency_ms": None, "note": problem})
        else:
            found = inspect(model, [image])[0]
            entry.update({"verdict": found.verdict, "score": found.score, "latency_ms": found.latency_ms,
                          "note": found.note})
        entry["moved_to"] = str(self._target(self._folder_for(entry["verdict"]), name, sha1))
        self._step("judged")
        self._journal_append(entry, "journal_partial")  # the result is durable before anything moves
        self.results[entry["id"]] = entry
        self._reserved.add(entry["moved_to"])
        self._step("journaled")
        self._complete(entry)
        return entry

    def _complete(self, entry: dict[str, Any], csv_ids: set[str] | None = None,
                  line_ids: set[str] | None = None) -> None:
        """Steps 2-6 for a journalled entry; ``csv_ids``/``line_ids`` (recovery) skip rows already written."""
        target = Path(entry["moved_to"])
        source = self.claims_dir / entry["claim"] if "claim" in entry else self.config.in_dir / entry["file"]
        self._place(source, target, entry["sha1"])
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
        if self.config.line_log is not None:
            self._record_history(entry)
        self._step("line")
        self._journal_append({"state": "done", "id": entry["id"], "claim_id": entry.get("claim_id"),
                              "file": entry["file"], "sha1": entry["sha1"]}, "done_partial")
        self.results.pop(entry["id"], None)
        self.claims.pop(str(entry.get("claim_id")), None)
        self._reserved.discard(entry["moved_to"])
        self.done.add((entry["file"], entry["sha1"]))
        self._step("done")

    def _place(self, source: Path, target: Path, sha1: str | None = None) -> None:
        """Put the claimed file ``source`` at ``target`` without ever replacing a file there, then remove
        ``source``; idempotent (a target that exists is the result of an earlier attempt: ``source`` left behind
        is removed, only if it holds the same content ``sha1``)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            if not source.is_file() or (sha1 is not None and _sha1(source) != sha1):
                return
        else:
            try:
                os.link(source, target)
            except FileExistsError:
                raise
            except OSError as exc:  # another file system, or one without hard links
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                self._copy_in(source, target)
            fsync_dir(target.parent)
            self._step("linked")
        if source.exists() and (not self.config.copy or source.parent == self.claims_dir):
            source.unlink()
            fsync_dir(source.parent)

    @staticmethod
    def _copy_in(source: Path, target: Path) -> None:
        """Copy to a hidden part file beside ``target`` (fsync), then link or rename it into place."""
        part = target.with_name(f".{target.name}.part")
        part.unlink(missing_ok=True)
        copy_durable(source, part)
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
            write_synced(handle, text.getvalue().encode(),
                         None if self.hook is None else lambda: self._step("csv_partial"))

    @staticmethod
    def _line_record(entry: dict[str, Any]) -> dict[str, Any]:
        return {"time": entry["time"], "source": "watch", "id": entry["id"], "name": entry["file"],
                "sha1": entry["sha1"],
                **{k: entry.get(k) for k in ("category", "score", "threshold", "verdict", "model", "version",
                                             "latency_ms")},
                "reason": entry.get("note") or "", "path": entry["moved_to"]}

    def _record_history(self, entry: dict[str, Any]) -> None:
        """The line-log row of ``entry`` into the store's results database too (once: keyed by the entry's id;
        a database failure is logged and the line log keeps the row for the next import)."""
        if self._store is None:  # recovering before anything was judged: the model names the store
            try:
                self._store = self.model_for().ref.store
            except Exception as exc:  # no model now: the row waits in the line log for the next import
                logger.warning("watch folder %s: row %s not written to the results database (no model to name "
                               "the store: %s); the line log keeps it", self.config.in_dir, entry["id"], exc)
                return
        line_history.record(str(self._store), self.config.line_log, self._line_record(entry))

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
        logger.info("watch folder %s: started (%d finished from the journal)", self.config.in_dir, judged)
        while not stop():
            polled = self.poll()
            judged += polled
            logger.log(logging.INFO if polled else logging.DEBUG, "watch folder %s: poll: %d judged",
                       self.config.in_dir, polled)
            if polled:
                self.watch_drift()
            if on_poll is not None:
                on_poll()
            if once and not self._pending():
                break
            time.sleep(self.config.poll)
        logger.info("watch folder %s: stopped (%d judged)", self.config.in_dir, judged)
        return judged

    def watch_drift(self) -> None:
        """Log a WARNING when the drift watch of the model judging this folder alarms, once per alarm (only
        with a line log: the watch reads the results it logs)."""
        log = self.config.line_log
        if log is None:
            return
        model = self.model_for()
        if self.drift is None:
            store = Path(model.ref.store)
            self.drift = DriftWatch(lambda: History.open(store, line_log=log),
                                    refresh=lambda history: history.import_logs(store, log))
        status = self.drift.check(model)
        if status is None or status.open_alarm is None or status.open_alarm.id in self._warned:
            return
        self._warned.add(status.open_alarm.id)
        logger.warning("watch folder %s: %s/%s v%d: %s", self.config.in_dir, status.category, status.kind,
                       status.version, status.open_alarm.message)

    def _pending(self) -> bool:
        """Whether an image file in the input folder (or a claimed one) still waits for a verdict."""
        if any(p.is_file() and not p.name.startswith(".") for p in self.claims_dir.iterdir()):
            return True
        for p in self.config.in_dir.iterdir():
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SUPPORTED_SUFFIXES:
                if self.config.copy and (p.name, _sha1(p)) in self.done:
                    continue
                return True
        return False
