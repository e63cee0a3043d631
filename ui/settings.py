"""Where the app finds data, models and the vector store (environment variables, with defaults)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core import settings


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
    """Data roots and model store by :mod:`core.settings`' rule (the CLI's too), ``QDRANT_URL`` (a Qdrant
    server; default: embedded local mode under the model store)."""
    store = settings.model_store()
    return AppSettings(settings.data_roots(), store, store / ".qdrant", settings.qdrant_url())
