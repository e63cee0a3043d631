"""Line rows into the history database as they are judged, beside the JSONL line log.

The service and the watch folder append every row to the JSONL log first (the durable record, as before) and
then hand it to :func:`record`, which writes it into the store's history (:class:`core.store.history.History`)
at once. One History per process and (store, line log), opened lazily at the first row (opening imports what the
JSONL log holds and the database does not). A database that cannot be opened or written is logged (at most one
line per :data:`LOG_INTERVAL_S`, counting the others) and never fails the caller: the JSONL row is there, and the
next :meth:`History.open` (the next process, or this one after :data:`RETRY_OPEN_S`) imports it. Rows are keyed
by their content (journal id, or the row's own fields), so the direct write and the import make one row.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.data.imageio import SUPPORTED_SUFFIXES
from core.files import atomic_write_bytes
from core.store.history import LINE_FOLDER, History, Recorded

logger = logging.getLogger(__name__)

IMAGES = "images"  # <store>/.line/images/<sha1[:2]>/<sha1><suffix>: the service's REVIEW and DEFECT uploads
# the suffix of a kept upload whose name has none of SUPPORTED_SUFFIXES, from its first bytes
MAGIC: tuple[tuple[bytes, str], ...] = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"BM", ".bmp"),
                                     (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"))
RETRY_OPEN_S = 30.0  # after a failed open, the database is not tried again for this long (rows stay in the log)
LOG_INTERVAL_S = 30.0  # at most one log line per interval about a failing database

_LOCK = threading.Lock()
_OPEN: dict[tuple[str, str | None], History] = {}
_FAILED_AT: dict[tuple[str, str | None], float] = {}
_LOGGED_AT = [0.0]
_HELD = [0]


def _key(store_root: Path | str, line_log: Path | None) -> tuple[str, str | None]:
    return str(Path(store_root).resolve()), None if line_log is None else str(Path(line_log).resolve())


def _warn(message: str, *args: object) -> None:
    """A warning at most once per :data:`LOG_INTERVAL_S` (the others are counted in the next one)."""
    now = time.monotonic()
    with _LOCK:
        if now - _LOGGED_AT[0] < LOG_INTERVAL_S and _LOGGED_AT[0]:
            _HELD[0] += 1
            return
        held, _HELD[0], _LOGGED_AT[0] = _HELD[0], 0, now
    logger.warning(message + " (%d more such failures since the last message)", *args, held)


def history_for(store_root: Path | str, line_log: Path | None) -> History | None:
    """The process's History of ``store_root`` (opened with ``line_log`` imported at the first call), or None
    while it cannot be opened (logged; tried again after :data:`RETRY_OPEN_S`)."""
    key = _key(store_root, line_log)
    with _LOCK:
        held = _OPEN.get(key)
        if held is not None:
            return held
        if time.monotonic() - _FAILED_AT.get(key, -RETRY_OPEN_S) < RETRY_OPEN_S:
            return None
        try:
            opened = History.open(Path(key[0]), line_log=None if key[1] is None else Path(key[1]))
        except Exception as exc:  # any database problem: the rows stay in the JSONL log
            _FAILED_AT[key] = time.monotonic()
            failure: Exception | None = exc
        else:
            _OPEN[key] = opened
            return opened
    _warn("line history of %s cannot be opened, rows stay in the JSONL log until it can (%s: %s)", key[0],
          type(failure).__name__, failure)
    return None


def record(store_root: Path | str, line_log: Path | None, row: Mapping[str, Any]) -> Recorded | None:
    """Write ``row`` (as ``core.line.results_log`` writes it) into the history; None when it was not written
    (the database is down or refused it: logged, the JSONL log keeps the row for the next import)."""
    history = history_for(store_root, line_log)
    if history is None:
        return None
    try:
        return history.record_line_record(row)
    except Exception as exc:  # any database problem: the rows stay in the JSONL log
        _warn("line history %s: a row was not written, it stays in the JSONL log for the next import (%s: %s)",
              history.label, type(exc).__name__, exc)
        return None


def image_path(store_root: Path | str, sha1: str, suffix: str) -> Path:
    """Where a kept upload with content hash ``sha1`` lives: ``<store>/.line/images/<sha1[:2]>/<sha1><suffix>``."""
    return Path(store_root) / LINE_FOLDER / IMAGES / sha1[:2] / f"{sha1}{suffix}"


def suffix_of(name: str | None, data: bytes) -> str:
    """The kept file's suffix: the upload name's when it is one of ``SUPPORTED_SUFFIXES`` (lower case), else the
    one its first bytes say (:data:`MAGIC`), else ``.img`` (the image decoder judges a file by its bytes)."""
    suffix = Path(name or "").suffix.lower()
    if suffix in SUPPORTED_SUFFIXES:
        return suffix
    return next((found for magic, found in MAGIC if data.startswith(magic)), ".img")


def keep_image(store_root: Path | str, data: bytes, name: str | None) -> Path | None:
    """Keep an upload's bytes content-addressed (:func:`image_path`; a file there already holds the same bytes
    and is left alone), written atomically and durably. None when it cannot be written (logged: the verdict is
    answered all the same, the row has no image)."""
    target = image_path(Path(store_root).resolve(), hashlib.sha1(data).hexdigest(), suffix_of(name, data))
    if target.is_file():
        return target
    try:
        return atomic_write_bytes(target, data)
    except OSError as exc:
        _warn("line images: %s not kept (%s: %s)", target, type(exc).__name__, exc)
        return None


def close_all() -> None:
    """Close every History this process opened (tests; a process that ends needs not call it)."""
    with _LOCK:
        held = list(_OPEN.values())
        _OPEN.clear()
        _FAILED_AT.clear()
    for history in held:
        history.close()
