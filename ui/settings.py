"""Where the app finds data, models and the vector store (environment variables, with defaults)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class AppSettings:
    data_root: Path
    model_store: Path
    qdrant_path: Path
    qdrant_url: str | None


def load_settings() -> AppSettings:
    """``INSPECT_DATA_ROOT`` (default ``demo_data``), ``INSPECT_MODEL_STORE`` (default ``models``),
    ``QDRANT_URL`` (a Qdrant server; default: embedded local mode under the model store)."""
    data_root = Path(os.environ.get("INSPECT_DATA_ROOT", ROOT / "demo_data"))
    store = Path(os.environ.get("INSPECT_MODEL_STORE", ROOT / "models"))
    return AppSettings(data_root, store, store / ".qdrant", os.environ.get("QDRANT_URL") or None)
