"""Durable file writes, the one helper every module uses: a file replaced atomically (temp file, fsync,
rename, fsync of the folder), JSON the same way, and an fsynced new file. Crash tests set :data:`STEP_HOOK`
to stop a write between its steps."""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Crash tests only: called with the name of each step of a write as it is reached (None in production).
STEP_HOOK: Callable[[str], None] | None = None


def step(name: str) -> None:
    if STEP_HOOK is not None:
        STEP_HOOK(name)


def fsync_dir(path: Path) -> None:
    """Make the entries of folder ``path`` (files created, renamed or removed in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file ``path`` and fsync it (its folder is the caller's to fsync)."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` via an fsynced temp file in the same folder and ``os.replace``, then fsync the
    folder: after a crash or power loss ``path`` holds the old content or the new one, never a mix. The temp file
    gets ``mode`` before it is renamed, so ``path`` never has another mode, even briefly (0o600 for secrets)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        step(f"temp file of {path.name} written")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    step(f"{path.name} replaced")
    fsync_dir(path.parent)
    return path


def atomic_write_json(path: Path, data: Any) -> Path:
    return atomic_write_bytes(path, json.dumps(data, indent=2, sort_keys=False, default=float).encode())


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
