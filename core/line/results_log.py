"""The line log: one JSON line per image the service or the watch folder judged, for the Line page, and one per
request or image the service rejected (``verdict`` REJECTED, with ``reason`` and, for a whole request, the HTTP
``status``; no image is kept).

Appends are whole lines under a file lock, so the service's workers and a watcher can share one log. A line a
crash cut short is ended with a newline before the next append, so it never swallows the next record (readers
skip it).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from core import settings

ENV = settings.LINE_LOG_ENV


def default_path(store_root: Path) -> Path:
    """``INSPECT_LINE_LOG`` or ``<store>/.line/results.jsonl``."""
    return settings.line_log(store_root)


def append(path: Path, record: dict[str, Any], between: Callable[[], None] | None = None) -> None:
    """Append ``record`` as one line (fsync). ``between`` (fault injection only) is called with half of the line
    written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, default=float) + "\n").encode()
    with open(path, "ab+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            end = handle.seek(0, os.SEEK_END)
            if end:
                handle.seek(end - 1)
                if handle.read(1) != b"\n":
                    line = b"\n" + line  # the previous line was cut by a crash
            if between is not None:
                handle.write(line[: len(line) // 2])
                handle.flush()
                os.fsync(handle.fileno())
                between()
                line = line[len(line) // 2:]
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _records(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, errors="replace") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                yield record


def tail(path: Path, limit: int = 5000) -> list[dict[str, Any]]:
    """The last ``limit`` records (damaged lines, e.g. one cut by a crash, are skipped)."""
    if not Path(path).is_file():
        return []
    return list(deque(_records(Path(path)), maxlen=limit))


def ids(path: Path) -> set[str]:
    """The ``id`` of every complete record (the watch folder's journal ids), to write each record once."""
    if not Path(path).is_file():
        return set()
    return {str(r["id"]) for r in _records(Path(path)) if r.get("id") is not None}
