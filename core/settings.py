"""Every environment variable the product reads, read here only: one rule for the CLI, the service and the dashboard.

:data:`VARIABLES` is the table (name, default, what reads it, meaning); README.md's "Settings" table is
:func:`markdown_table` of it, and ``tests/test_settings.py`` checks that the two agree and that no other module
reads an ``INSPECT_*`` variable (the one exception, the watch folder's test-only crash hook, is a row here).

Read when asked (not at import), so a test or a launcher that sets a variable is seen. A malformed value raises
ValueError naming the variable, what was expected and what was found.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL_STORE_ENV = "INSPECT_MODEL_STORE"
DATA_ROOT_ENV = "INSPECT_DATA_ROOT"
DATA_ROOTS_ENV = "INSPECT_DATA_ROOTS"
USERS_FILE_ENV = "INSPECT_USERS_FILE"
MODEL_CACHE_SIZE_ENV = "INSPECT_MODEL_CACHE_SIZE"
MAX_PIXELS_ENV = "INSPECT_MAX_PIXELS"
DEVICE_ENV = "INSPECT_DEVICE"
LINE_LOG_ENV = "INSPECT_LINE_LOG"
API_KEY_ENV = "INSPECT_API_KEY"
API_KEY_FILE_ENV = "INSPECT_API_KEY_FILE"
LOG_LEVEL_ENV = "INSPECT_LOG_LEVEL"
LOG_JSON_ENV = "INSPECT_LOG_JSON"
SERVICE_STORE_ENV = "INSPECT_SERVICE_STORE"
SERVICE_WORKERS_ENV = "INSPECT_SERVICE_WORKERS"
SERVICE_QUEUE_ENV = "INSPECT_SERVICE_QUEUE"
QDRANT_URL_ENV = "QDRANT_URL"
DATABASE_URL_ENV = "INSPECT_DATABASE_URL"
SPOT_CHECK_ENV = "INSPECT_SPOT_CHECK"
RUNTIME_CHOICE_ENV = "INSPECT_RUNTIME_CHOICE"
WATCH_CRASH_ENV = "INSPECT_WATCH_CRASH_AT"  # test-only; read by core/line/watch.py's crash_hook_from_env
JOURNEY_SHOTS_ENV = "INSPECT_JOURNEY_SHOTS"  # test-only; read by tests/test_journey.py

DEFAULT_MODEL_CACHE_SIZE = 4
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_SERVICE_WORKERS = 2
DEFAULT_SPOT_CHECK = 20
DEFAULT_LOG_LEVEL = "WARNING"
DEVICE_CHOICES = ("auto", "cpu", "cuda")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class Variable:
    """One row of the settings table: ``default`` and ``read_by`` as README.md shows them (Markdown)."""

    name: str
    default: str
    read_by: str
    meaning: str


VARIABLES: tuple[Variable, ...] = (
    Variable(MODEL_STORE_ENV, "`models/` in the repository (whatever the working directory)",
             "`model_store()`: the CLI's `--store`, the dashboard, `run_app.sh`", "the model store folder"),
    Variable(DATA_ROOT_ENV, "`demo_data/` in the repository",
             "`data_roots()`: the dashboard, `run_app.sh`, `python -m core demo`'s `--out`",
             "the data root the dashboard offers (and `run_app.sh` writes the demo into)"),
    Variable(DATA_ROOTS_ENV, "none", "`data_roots()`: the dashboard",
             "several data roots separated by `:` (wins over `INSPECT_DATA_ROOT`); the only folders the browser "
             "reads categories from and Annotate or Mark as defect write into"),
    Variable(USERS_FILE_ENV, "`users.json` in the model store", "`users_file()`: the dashboard's sign-in, "
             "`python -m core users`", "the dashboard's users and roles"),
    Variable(MODEL_CACHE_SIZE_ENV, "`4`", "`model_cache_size()`: the service, the watch folder, the CLI, the "
             "dashboard", "loaded networks one process keeps (least recently used dropped first)"),
    Variable(MAX_PIXELS_ENV, "`40000000`", "`max_pixels()`: the service",
             "the pixel budget per image, checked from the header before decoding"),
    Variable(DEVICE_ENV, "`auto`", "`device()`: training (`core/models/device.py`)",
             "`auto` (CUDA when torch sees a GPU, else the CPU), `cpu` or `cuda`"),
    Variable(LINE_LOG_ENV, "`.line/results.jsonl` in the model store", "`line_log()`: the service, "
             "`python -m core watch`, the Line page", "the line log (one JSON line per judged or refused image)"),
    Variable(API_KEY_ENV, "none (no key required)", "`api_key()`: `python -m core serve`",
             "the service's API key (`X-API-Key`); never on the command line"),
    Variable(API_KEY_FILE_ENV, "none", "`api_key_file()`: `python -m core serve`",
             "a file whose first line is the API key (wins over `INSPECT_API_KEY`; `--api-key-file` wins over it)"),
    Variable(LOG_LEVEL_ENV, "`WARNING`", "`log_level()`: the CLI (`--log-level` wins), the service's processes",
             "the module loggers' level: DEBUG, INFO, WARNING, ERROR or CRITICAL"),
    Variable(LOG_JSON_ENV, "`0` (text lines)", "`log_json()`: the CLI (`--log-json` wins), the service's processes",
             "`1`: one JSON object per log line (time, level, logger, message, exc_info)"),
    Variable(SERVICE_STORE_ENV, "the model store", "`service_store()`: the service's worker processes",
             "internal: set by `serve --processes N` for the processes it starts"),
    Variable(SERVICE_WORKERS_ENV, "`2`", "`service_workers()`: the service's worker processes",
             "internal: set by `serve --processes N` (its `--workers`)"),
    Variable(SERVICE_QUEUE_ENV, "4 x workers", "`service_queue()`: the service's worker processes",
             "internal: set by `serve --processes N` (its `--queue`)"),
    Variable(QDRANT_URL_ENV, "none (embedded Qdrant under the model store, `.qdrant/`)",
             "`qdrant_url()`: the dashboard's Similar page", "a Qdrant server, for large deployments"),
    Variable(DATABASE_URL_ENV, "none (`.line/history.sqlite3` in the model store)",
             "`database_url()`: the line's history (`core/store/history.py`)",
             "a PostgreSQL URL (`postgresql://user@host/db`) so several hosts share one history"),
    Variable(SPOT_CHECK_ENV, "`20`", "`spot_check_every()`: the line's history (`core/store/history.py`)",
             "1 in N OK verdicts (chosen by image hash) also goes to the review queue as a spot check, the unbiased "
             "sample *Recalibrate from the line* fits from; `0`: none"),
    Variable(RUNTIME_CHOICE_ENV, "`~/.cache/inspector/runtime_choice.json`",
             "`runtime_choice_file()`: the networks' `runtime=auto` (`core/models/runtime.py`)",
             "where the network runtime measured fastest on this machine (OpenVINO or ONNX Runtime) is recorded"),
    Variable(WATCH_CRASH_ENV, "none", "test-only: `core/line/watch.py` (`crash_hook_from_env`)",
             "fault injection `STEP[:N]`: the watch folder exits at step STEP the N-th time"),
    Variable(JOURNEY_SHOTS_ENV, "none (a temporary folder)", "test-only: `tests/test_journey.py`",
             "where the browser journey writes its screenshots (`docs` refreshes them)"),
)


def markdown_table() -> str:
    """README.md's "Settings" table: one row per :data:`VARIABLES` entry."""
    rows = ["| variable | default | read by | meaning |", "|---|---|---|---|"]
    rows += [f"| `{v.name}` | {v.default} | {v.read_by} | {v.meaning} |" for v in VARIABLES]
    return "\n".join(rows)


def _text(name: str) -> str:
    return os.environ.get(name, "").strip()


def _path(name: str) -> Path | None:
    value = _text(name)
    return Path(value).expanduser() if value else None


def model_store() -> Path:
    """``INSPECT_MODEL_STORE`` (``~`` expanded), else the repository's ``models/``."""
    return _path(MODEL_STORE_ENV) or REPO / "models"


def runtime_choice_file() -> Path:
    """``INSPECT_RUNTIME_CHOICE`` (``~`` expanded), else ``~/.cache/inspector/runtime_choice.json``."""
    return _path(RUNTIME_CHOICE_ENV) or Path.home() / ".cache" / "inspector" / "runtime_choice.json"


def users_file() -> Path:
    """``INSPECT_USERS_FILE`` (``~`` expanded), else ``users.json`` in the model store."""
    return _path(USERS_FILE_ENV) or model_store() / "users.json"


def data_roots() -> tuple[Path, ...]:
    """``INSPECT_DATA_ROOTS`` (several), else ``INSPECT_DATA_ROOT``, else the repository's ``demo_data/``."""
    many = [p for p in os.environ.get(DATA_ROOTS_ENV, "").split(os.pathsep) if p.strip()]
    if many:
        return tuple(Path(p).expanduser() for p in many)
    return (_path(DATA_ROOT_ENV) or REPO / "demo_data",)


def _positive_int(name: str, default: int) -> int:
    """The whole number >= 1 in environment variable ``name``, else ``default``; raises ValueError naming it."""
    value = _text(name)
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"{name}: expected a whole number of at least 1, found {value!r}")
    return number


def model_cache_size() -> int:
    """``INSPECT_MODEL_CACHE_SIZE`` (a whole number of at least 1), else 4: loaded networks one process keeps."""
    return _positive_int(MODEL_CACHE_SIZE_ENV, DEFAULT_MODEL_CACHE_SIZE)


def max_pixels() -> int:
    """``INSPECT_MAX_PIXELS`` (a whole number of at least 1), else 40 Mpx: the largest image the service decodes."""
    return _positive_int(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS)


def device() -> str:
    """``INSPECT_DEVICE`` (lower-cased) in ``auto``, ``cpu``, ``cuda``; else ``auto``.

    Raises:
        ValueError: another value.
    """
    choice = _text(DEVICE_ENV).lower() or "auto"
    if choice not in DEVICE_CHOICES:
        raise ValueError(f"expected {DEVICE_ENV} in {DEVICE_CHOICES}, found {choice!r}")
    return choice


def line_log(store_root: Path) -> Path:
    """``INSPECT_LINE_LOG`` (``~`` expanded), else ``<store_root>/.line/results.jsonl``."""
    return _path(LINE_LOG_ENV) or Path(store_root) / ".line" / "results.jsonl"


def api_key() -> str | None:
    """``INSPECT_API_KEY`` (stripped), else None."""
    return _text(API_KEY_ENV) or None


def api_key_file() -> Path | None:
    """``INSPECT_API_KEY_FILE`` (``~`` expanded), else None."""
    return _path(API_KEY_FILE_ENV)


def log_level() -> str:
    """``INSPECT_LOG_LEVEL`` (upper-cased) in :data:`LOG_LEVELS`, else ``WARNING``.

    Raises:
        ValueError: another value.
    """
    level = _text(LOG_LEVEL_ENV).upper() or DEFAULT_LOG_LEVEL
    if level not in LOG_LEVELS:
        raise ValueError(f"{LOG_LEVEL_ENV}: expected one of {', '.join(LOG_LEVELS)}, found {level!r}")
    return level


def log_json() -> bool:
    """``INSPECT_LOG_JSON``: true for ``1``/``true``/``yes``/``on``, false when unset or ``0``/``false``/``no``/``off``.

    Raises:
        ValueError: another value.
    """
    value = _text(LOG_JSON_ENV).lower()
    if value not in _TRUE + _FALSE:
        raise ValueError(f"{LOG_JSON_ENV}: expected 1 or 0 (true/false, yes/no, on/off), found {value!r}")
    return value in _TRUE


def log_environment(level: str, json_lines: bool) -> dict[str, str]:
    """The variables that make :func:`log_level` and :func:`log_json` answer ``level`` and ``json_lines`` in a
    child process (the service's worker processes)."""
    return {LOG_LEVEL_ENV: level, LOG_JSON_ENV: "1" if json_lines else "0"}


def service_store() -> Path:
    """``INSPECT_SERVICE_STORE`` (set by ``serve --processes N``), else :func:`model_store`."""
    return _path(SERVICE_STORE_ENV) or model_store()


def service_workers() -> int:
    """``INSPECT_SERVICE_WORKERS`` (a whole number of at least 1), else 2."""
    return _positive_int(SERVICE_WORKERS_ENV, DEFAULT_SERVICE_WORKERS)


def service_queue() -> int | None:
    """``INSPECT_SERVICE_QUEUE`` (a whole number of at least 1), else None (4 x workers)."""
    return _positive_int(SERVICE_QUEUE_ENV, 0) or None


def qdrant_url() -> str | None:
    """``QDRANT_URL`` (a Qdrant server), else None: embedded Qdrant under the model store."""
    return _text(QDRANT_URL_ENV) or None



def spot_check_every() -> int:
    """``INSPECT_SPOT_CHECK`` (a whole number, 0: no spot checks), else 20: 1 in N OK verdicts is spot-checked."""
    value = _text(SPOT_CHECK_ENV)
    if value == "0":
        return 0
    return _positive_int(SPOT_CHECK_ENV, DEFAULT_SPOT_CHECK)


def database_url() -> str | None:
    """``INSPECT_DATABASE_URL`` (stripped; a SQLAlchemy URL such as ``postgresql://user@host/db``), else None:
    the line's history is the SQLite file in the model store (``core/store/history.py``)."""
    return os.environ.get(DATABASE_URL_ENV, "").strip() or None
