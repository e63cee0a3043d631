"""The line log: one JSON line per image the service or the watch folder judged, for the Line page.

Appends are whole lines under a file lock, so the service's workers and a watcher can share one log.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections import deque
from pathlib import Path
from typing import Any

ENV = "INSPECT_LINE_LOG"


def default_path(store_root: Path) -> Path:
    """``INSPECT_LINE_LOG`` or ``<store>/.line/results.jsonl``."""
    return Path(os.environ.get(ENV) or Path(store_root) / ".line" / "results.jsonl")


def append(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, default=float) + "\n"
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.write(line)
            handle.flush()
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def tail(path: Path, limit: int = 5000) -> list[dict[str, Any]]:
    """The last ``limit`` records (damaged lines, e.g. one cut by a crash, are skipped)."""
    if not Path(path).is_file():
        return []
    out: deque[dict[str, Any]] = deque(maxlen=limit)
    with open(path, errors="replace") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                out.append(record)
    return list(out)
