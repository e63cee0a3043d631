"""Where the product finds its data and models: one rule for the CLI, the service and the dashboard.

| variable | meaning | default |
|---|---|---|
| ``INSPECT_MODEL_STORE`` | the model store folder | ``models/`` in the repository (not the working directory) |
| ``INSPECT_DATA_ROOT`` | the data root the dashboard offers | ``demo_data/`` in the repository |
| ``INSPECT_DATA_ROOTS`` | several data roots, separated by ``os.pathsep`` (wins over ``INSPECT_DATA_ROOT``) | |
| ``INSPECT_USERS_FILE`` | the dashboard's users and roles (``core/access.py``) | ``users.json`` in the model store |
| ``INSPECT_MODEL_CACHE_SIZE`` | loaded model networks kept per process (least recently used dropped first) | ``4`` |
| ``INSPECT_MAX_PIXELS`` | the service's pixel budget per image (checked from the header, before decoding) | ``40000000`` |

Read when asked (not at import), so a test or a launcher that sets a variable is seen.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL_STORE_ENV = "INSPECT_MODEL_STORE"
DATA_ROOT_ENV = "INSPECT_DATA_ROOT"
DATA_ROOTS_ENV = "INSPECT_DATA_ROOTS"
USERS_FILE_ENV = "INSPECT_USERS_FILE"
MODEL_CACHE_SIZE_ENV = "INSPECT_MODEL_CACHE_SIZE"
DEFAULT_MODEL_CACHE_SIZE = 4


def model_store() -> Path:
    """``INSPECT_MODEL_STORE`` (``~`` expanded), else the repository's ``models/``."""
    value = os.environ.get(MODEL_STORE_ENV, "").strip()
    return Path(value).expanduser() if value else REPO / "models"


def users_file() -> Path:
    """``INSPECT_USERS_FILE`` (``~`` expanded), else ``users.json`` in the model store."""
    value = os.environ.get(USERS_FILE_ENV, "").strip()
    return Path(value).expanduser() if value else model_store() / "users.json"


def data_roots() -> tuple[Path, ...]:
    """``INSPECT_DATA_ROOTS`` (several), else ``INSPECT_DATA_ROOT``, else the repository's ``demo_data/``."""
    many = [p for p in os.environ.get(DATA_ROOTS_ENV, "").split(os.pathsep) if p.strip()]
    if many:
        return tuple(Path(p).expanduser() for p in many)
    one = os.environ.get(DATA_ROOT_ENV, "").strip()
    return (Path(one).expanduser() if one else REPO / "demo_data",)


def _positive_int(name: str, default: int) -> int:
    """The whole number >= 1 in environment variable ``name``, else ``default``; raises ValueError naming it."""
    value = os.environ.get(name, "").strip()
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


MAX_PIXELS_ENV = "INSPECT_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 40_000_000


def max_pixels() -> int:
    """``INSPECT_MAX_PIXELS`` (a whole number of at least 1), else 40 Mpx: the largest image the service decodes."""
    return _positive_int(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS)


DATABASE_URL_ENV = "INSPECT_DATABASE_URL"


def database_url() -> str | None:
    """``INSPECT_DATABASE_URL`` (stripped; a SQLAlchemy URL such as ``postgresql://user@host/db``), else None:
    the line's history is the SQLite file in the model store (``core/store/history.py``)."""
    return os.environ.get(DATABASE_URL_ENV, "").strip() or None
