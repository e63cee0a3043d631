"""The one logging configuration: the CLI (``--log-level``, ``--log-json``) and every service process.

Modules log through ``logging.getLogger(__name__)`` and never configure logging themselves; :func:`configure`
puts one handler on the root logger that writes each record as one line to stderr: text
(``2025-01-31 12:00:00,123 WARNING core.store.model_store: ...``, a traceback on the lines after), or with
``json_lines`` one JSON object per line::

    {"time": "2025-01-31T12:00:00.123+00:00", "level": "ERROR", "logger": "core.line.service",
     "message": "...", "exc_info": "Traceback (most recent call last): ..."}

(``exc_info`` only for a record that carries an exception). The level and the format come from the caller: the
CLI's flags or ``core.settings.log_level()`` / ``log_json()`` (``INSPECT_LOG_LEVEL``, ``INSPECT_LOG_JSON``).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True)
class LogConfig:
    """What :func:`configure` set: ``level`` one of :data:`LEVELS`; ``json_lines`` JSON objects, else text."""

    level: str
    json_lines: bool


class JsonLines(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601, milliseconds), ``level``, ``logger``, ``message``, and
    ``exc_info`` (the formatted traceback) / ``stack_info`` when the record has them."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, str] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc_info"] = record.exc_text
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class StderrHandler(logging.Handler):
    """Writes each record as a line to ``stream``, or to ``sys.stderr`` as it is when the record comes (so a
    replaced stderr, e.g. a test's capture, is followed rather than a closed one written to)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self._stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = self._stream if self._stream is not None else sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # logging must never break the work it reports on
            self.handleError(record)


_current: list[LogConfig] = []  # what configure() last set, if it ran in this process


def configure(level: str, json_lines: bool, stream: TextIO | None = None) -> LogConfig:
    """Set the root logger's ``level`` (a name in :data:`LEVELS`, any case) and its one :class:`StderrHandler`
    (text or ``json_lines``; ``stream`` instead of stderr for tests). Called again, it replaces its own handler
    and leaves other handlers (pytest's, an embedding application's) alone.

    Raises:
        ValueError: ``level`` is not a level name.
    """
    name = level.strip().upper()
    if name not in LEVELS:
        raise ValueError(f"expected a log level in ({', '.join(LEVELS)}), found {level.strip().upper()!r}")
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, StderrHandler)]:
        root.removeHandler(old)
        old.close()
    handler = StderrHandler(stream)
    handler.setFormatter(JsonLines() if json_lines else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(name)
    _current[:] = [LogConfig(name, json_lines)]
    return _current[0]


def current() -> LogConfig | None:
    """What :func:`configure` last set in this process, or None when it has not been called."""
    return _current[-1] if _current else None
