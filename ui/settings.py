"""Where the app finds data, models and the vector store (environment variables, with defaults)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class AppSettings:
    """``data_roots``: the only folders the browser may read categories from (and Annotate write into)."""

    data_roots: tuple[Path, ...]
    model_store: Path
    qdrant_path: Path
    qdrant_url: str | None

    @property
    def data_root(self) -> Path:
        return self.data_roots[0]


def load_settings() -> AppSettings:
    """``INSPECT_DATA_ROOT`` (one folder; default ``demo_data``) or ``INSPECT_DATA_ROOTS`` (several, separated
    by ``os.pathsep``), ``INSPECT_MODEL_STORE`` (default ``models``), ``QDRANT_URL`` (a Qdrant server; default:
    embedded local mode under the model store)."""
    many = [p for p in os.environ.get("INSPECT_DATA_ROOTS", "").split(os.pathsep) if p.strip()]
    roots = tuple(Path(p).expanduser() for p in many) or (
        Path(os.environ.get("INSPECT_DATA_ROOT", ROOT / "demo_data")).expanduser(),)
    store = Path(os.environ.get("INSPECT_MODEL_STORE", ROOT / "models"))
    return AppSettings(roots, store, store / ".qdrant", os.environ.get("QDRANT_URL") or None)
