"""Durable file writes, the one helper every module uses, with one durability choice: a file is fsynced before
it counts as written, and its folder is fsynced when an entry in it was created, renamed or removed.

* :func:`atomic_write_bytes` / :func:`atomic_write_json`: a file replaced atomically (temp file, fsync, rename,
  fsync of the folder); :func:`write_durable`: an fsynced new file (the folder is the caller's to fsync);
  :func:`copy_durable`: a copy, fsynced.
* :func:`append_line`: one JSON line appended under an exclusive ``flock`` of the file, fsynced; a line a crash
  cut short is ended first, so it never swallows the next record. :func:`write_synced` is its core, for callers
  that write other line formats (the watch folder's CSV).
* :func:`locked`: an exclusive lock across processes and threads (``flock`` of ``.<name>.lock`` beside a file);
  :func:`lock_file`: the same on a lock file named by the caller (the model store's ``.lock``).

Crash tests set :data:`STEP_HOOK` to stop an atomic write between its steps; :func:`append_line` and
:func:`write_synced` take a ``between`` hook called with half of the line written."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

# fsync of a folder on a file system that cannot do it (some network shares): the file itself was fsynced
_NO_DIR_FSYNC = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})
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
    except OSError as exc:
        if exc.errno not in _NO_DIR_FSYNC:
            raise
        log.debug("folder %s: its file system cannot fsync a folder (%s)", path, exc.strerror)
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


def copy_durable(source: Path, target: Path) -> None:
    """Copy ``source`` (content, mode and times) to ``target`` and fsync it (the folder is the caller's to
    fsync, usually after renaming ``target`` into place)."""
    shutil.copy2(source, target)
    with open(target, "rb") as handle:
        os.fsync(handle.fileno())


def write_synced(handle: IO[bytes], data: bytes, between: Callable[[], None] | None = None) -> None:
    """Write ``data`` at ``handle``'s position and fsync it. ``between`` (fault injection only): the data is
    written in two halves, each fsynced, and ``between()`` is called with only the first half on disk."""
    if between is not None:
        half = len(data) // 2
        handle.write(data[:half])
        handle.flush()
        os.fsync(handle.fileno())
        between()
        data = data[half:]
    handle.write(data)
    handle.flush()
    os.fsync(handle.fileno())


def append_line(path: Path, record: Any, lock: bool = True, between: Callable[[], None] | None = None) -> None:
    """Append ``record`` as one JSON line to ``path`` (made, with its folders, if missing) and fsync it; the
    folder is fsynced too when the file was created.

    ``lock``: hold an exclusive ``flock`` of the file while appending, so several processes and threads can share
    it (False only where the caller already serializes the writers). A last line a crash cut short (no newline)
    is ended first, so it stays one damaged line that readers skip and never swallows this record.
    ``between``: see :func:`write_synced` (the half-line crash tests)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, default=float) + "\n").encode()
    created = not path.exists()
    with open(path, "ab+") as handle:
        if lock:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            end = handle.seek(0, os.SEEK_END)
            if end:
                handle.seek(end - 1)
                if handle.read(1) != b"\n":
                    line = b"\n" + line  # the previous line was cut by a crash
            write_synced(handle, line, between)
        finally:
            if lock:
                fcntl.flock(handle, fcntl.LOCK_UN)
    if created:
        fsync_dir(path.parent)


@contextlib.contextmanager
def lock_file(lock_path: Path, mode: int = 0o644) -> Iterator[None]:
    """Hold an exclusive ``flock`` of ``lock_path`` (created empty with ``mode`` if missing) for the ``with``
    block: across processes, and across threads too (each call opens its own descriptor). Released when the
    block ends, or by the kernel when the process dies."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def locked(path: Path, mode: int = 0o644) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock on ``path`` for one read-modify-write: :func:`lock_file` of ``.<name>.lock`` beside it
    (the file itself is replaced atomically, so it cannot carry the lock). Read ``path`` inside the block."""
    path = Path(path)
    return lock_file(path.with_name(f".{path.name}.lock"), mode)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
