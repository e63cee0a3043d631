"""The line log: one JSON line per image the service or the watch folder judged, for the Line page, and one per
request or image the service rejected (``verdict`` REJECTED, with ``reason`` and, for a whole request, the HTTP
``status``; no image is kept).

Appends are whole lines under a file lock, so the service's workers and a watcher can share one log. A line a
crash cut short is ended with a newline before the next append, so it never swallows the next record (readers
skip it).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from core import settings
from core.files import append_line

ENV = settings.LINE_LOG_ENV


def default_path(store_root: Path) -> Path:
    """``INSPECT_LINE_LOG`` or ``<store>/.line/results.jsonl``."""
    return settings.line_log(store_root)


def append(path: Path, record: dict[str, Any], between: Callable[[], None] | None = None) -> None:
    """Append ``record`` as one line under the file's lock, fsynced (:func:`core.files.append_line`).
    ``between`` (fault injection only) is called with half of the line written."""
    append_line(path, record, between=between)


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
