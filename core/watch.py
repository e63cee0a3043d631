"""The watch folder: images that appear in ``in_dir`` are judged once and moved by verdict.

    python -m core watch --category C --in DIR --ok DIR --defect DIR [--log results.csv] [--copy] [--once]

- A file is taken only when it is stable: same size and modification time on two polls ``settle`` seconds
  apart (a camera still writing it is waited for).
- Exactly once, across crashes: before a file is moved, its result is appended (fsync) to a journal
  (``<in_dir>/.watch_journal.jsonl``); after the move a "done" line follows. A restart finishes any file the
  journal holds a result for (moves it, writes its log row) without scoring it again.
- An unreadable file goes to ``rejected/`` (beside ``in_dir`` unless given) with ``<name>.reason.txt``.
- NO VERDICT images (too small) go to ``rejected/`` too, with the reason.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import line_log
from core.imageio import SUPPORTED_SUFFIXES, ImageLoadError, load_image
from core.inspection import NO_VERDICT, inspect

JOURNAL = ".watch_journal.jsonl"
LOG_FIELDS = ["time", "file", "sha1", "verdict", "score", "threshold", "model", "version", "latency_ms", "moved_to",
              "note"]


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


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _append_json(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record, default=float) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


class Watcher:
    """One watch folder. ``model_for()`` returns the model to judge with (the store's current version)."""

    def __init__(self, config: WatchConfig, model_for: Callable[[], Any]) -> None:
        self.config = config
        self.model_for = model_for
        for folder in (config.ok_dir, config.defect_dir, config.rejected_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.journal = config.in_dir / JOURNAL
        self._seen: dict[str, tuple[int, int]] = {}
        self.results: dict[tuple[str, str], dict[str, Any]] = {}  # (file, sha1) -> result, from the journal
        self.done: set[tuple[str, str]] = set()
        self._read_journal()

    def _read_journal(self) -> None:
        if not self.journal.is_file():
            return
        for line in self.journal.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash: its file was not moved yet, it is judged again (never twice)
            key = (entry["file"], entry["sha1"])
            if entry.get("state") == "scored":
                self.results[key] = entry
            elif entry.get("state") == "done":
                self.done.add(key)

    def recover(self) -> int:
        """Finish files a crash left between "scored" and "done" (moved and logged, not scored again)."""
        finished = 0
        for key, entry in list(self.results.items()):
            if key in self.done:
                continue
            source = self.config.in_dir / key[0]
            target = Path(entry["moved_to"])
            if source.exists() and not target.exists():
                self._move(source, target)
            self._finish(entry)
            finished += 1
        return finished

    def stable_files(self) -> list[Path]:
        """Image files whose size and mtime did not change since the previous poll."""
        ready = []
        current: dict[str, tuple[int, int]] = {}
        for path in sorted(self.config.in_dir.iterdir()):
            if not path.is_file() or path.name.startswith(".") or path.suffix.lower() not in SUPPORTED_SUFFIXES:
                continue
            st = path.stat()
            current[path.name] = (st.st_size, st.st_mtime_ns)
            settled = time.time() - st.st_mtime >= self.config.settle
            if self._seen.get(path.name) == current[path.name] and settled:
                ready.append(path)
        self._seen = current
        return ready

    def process(self, path: Path) -> dict[str, Any] | None:
        """Judge one stable file exactly once; returns its result (None when already handled)."""
        sha1 = _sha1(path)
        key = (path.name, sha1)
        if key in self.done:
            if not self.config.copy:  # a file moved back in by hand: handled before, not judged twice
                self._move(path, self.config.rejected_dir / path.name)
                self._reason(path.name, "already judged (same name and content); see the log")
            return None
        if key in self.results:
            self.recover()
            return None
        model = self.model_for()
        entry: dict[str, Any] = {"state": "scored", "time": time.time(), "file": path.name, "sha1": sha1,
                                 "category": model.category, "model": model.kind, "version": model.version,
                                 "threshold": model.calibration.image_threshold}
        try:
            image = load_image(path)
        except ImageLoadError as exc:
            entry.update({"verdict": "REJECTED", "score": None, "latency_ms": None, "note": exc.reason,
                          "moved_to": str(self.config.rejected_dir / path.name)})
        else:
            found = inspect(model, [image])[0]
            target = {"OK": self.config.ok_dir, "DEFECT": self.config.defect_dir}.get(found.verdict,
                                                                                      self.config.rejected_dir)
            entry.update({"verdict": found.verdict, "score": found.score, "latency_ms": found.latency_ms,
                          "note": found.note, "moved_to": str(target / path.name)})
        _append_json(self.journal, entry)  # the result is durable before anything moves
        self.results[key] = entry
        self._move(path, Path(entry["moved_to"]))
        if entry["verdict"] in ("REJECTED", NO_VERDICT):
            self._reason(path.name, entry["note"])
        self._finish(entry)
        return entry

    def _move(self, source: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        if self.config.copy:
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copy2(source, tmp)
            os.replace(tmp, target)
        else:
            shutil.move(str(source), str(target))

    def _reason(self, name: str, reason: str) -> None:
        (self.config.rejected_dir / f"{name}.reason.txt").write_text(reason + "\n")

    def _finish(self, entry: dict[str, Any]) -> None:
        new = not self.config.log.exists()
        self.config.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.config.log, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({**entry, "moved_to": entry["moved_to"]})
        if self.config.line_log is not None:
            line_log.append(self.config.line_log, {"time": entry["time"], "source": "watch", "name": entry["file"],
                                                   **{k: entry.get(k) for k in ("category", "score", "threshold",
                                                                               "verdict",
                                                                               "model", "version", "latency_ms")},
                                                   "path": entry["moved_to"]})
        _append_json(self.journal, {"state": "done", "file": entry["file"], "sha1": entry["sha1"]})
        self.done.add((entry["file"], entry["sha1"]))

    def run(self, once: bool = False, stop: Callable[[], bool] = lambda: False) -> int:
        """Poll until ``stop()`` (or, with ``once``, until the folder holds no unhandled image). Returns the
        number of files judged."""
        judged = self.recover()
        while not stop():
            for path in self.stable_files():
                if self.process(path) is not None:
                    judged += 1
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
