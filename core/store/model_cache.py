"""Loaded models: the one cache policy of every process that scores (the service, the watch folder, the CLI and,
through ``ui.cache``, the dashboard).

- A **network** is loaded once per *weights identity* and inference path (:func:`weights_key`: store, category,
  kind and the weights file's inode, size and mtime). Versions that share their weights (thresholds saved: a hard
  link) share one network; a rewritten weights file has another identity, so it is loaded again.
- Networks are kept in an **LRU** of ``size`` entries (``INSPECT_MODEL_CACHE_SIZE``, default 4): requests that
  alternate between versions (``?version=3``, ``?version=4``) or categories are served from memory; the least
  recently used network is dropped when a new one would exceed the size.
- Each key is loaded under **its own lock**: two requests for one version load it once, while a slow load of one
  category never blocks a request for another (a short global lock guards only the bookkeeping).
- The **calibration and manifest** of a version are re-read when their files change (a digest of the calibration,
  the manifest's file identity), without reloading the network.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from core.settings import model_cache_size
from core.store import lifecycle as det
from core.store.model_store import ModelRef, ModelStore

logger = logging.getLogger(__name__)

Loader = Callable[[ModelRef, str], det.LoadedModel]
NetworkKey = tuple[str, str]  # (weights_key, inference path)


def weights_key(ref: ModelRef) -> str:
    """The identity of the weights behind ``ref``: equal for versions sharing their weights file (a hard link),
    different once the file is rewritten."""
    return f"{ref.store}|{ref.category}|{ref.kind}|{ModelStore(ref.store).weights_stamp(ref)}"


def calibration_key(ref: ModelRef) -> str:
    """Changes with any edit of ``ref``'s calibration on disk (a digest of the file: whoever changed it)."""
    return ModelStore(ref.store).calibration_stamp(ref)


def view_stamp(ref: ModelRef) -> tuple[str, str]:
    """Changes whenever ``ref``'s calibration or manifest changes on disk (whoever changed it)."""
    return calibration_key(ref), ModelStore(ref.store).manifest_stamp(ref)


@dataclass(frozen=True)
class CacheStats:
    """What a :class:`ModelCache` did so far: networks ``loads``, requests served from memory (``hits``),
    networks dropped for room (``evictions``), networks held now (``held``) and the most it holds (``size``)."""

    loads: int
    hits: int
    evictions: int
    held: int
    size: int


@dataclass
class _Entry:
    """One loaded network; ``views``: the versions served from it, each with the stamp it was read at."""

    model: det.LoadedModel
    views: dict[ModelRef, tuple[tuple[str, str], det.LoadedModel]] = field(default_factory=dict)


@dataclass
class _Slot:
    """The lock of one key while anyone loads or waits for it (``users``: how many)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0


class ModelCache:
    """``get(ref)``: model version ``ref`` ready to score, its network loaded once per weights identity.

    Args:
        store: the store :meth:`current` reads the current version from (``get`` follows ``ref.store``).
        size: networks kept (least recently used dropped first); ``INSPECT_MODEL_CACHE_SIZE`` (default 4) if None.
        loader: ``(ref, inference) -> LoadedModel``; :func:`core.store.lifecycle.load` if None (tests inject others).
    """

    def __init__(self, store: ModelStore | None = None, size: int | None = None,
                 loader: Loader | None = None) -> None:
        self.store = store
        self.size = model_cache_size() if size is None else size
        if self.size < 1:
            raise ValueError(f"expected a model cache size of at least 1, found {self.size}")
        self._loader = loader
        self._guard = threading.Lock()  # held only for bookkeeping, never during a load or a file read
        self._entries: OrderedDict[NetworkKey, _Entry] = OrderedDict()
        self._slots: dict[NetworkKey, _Slot] = {}
        self._loads = self._hits = self._evictions = 0

    def get(self, ref: ModelRef, inference: str = "fast") -> det.LoadedModel:
        """The version ``ref`` with its calibration and manifest as they are on disk now.

        Raises:
            ModelStoreError: the version's files are missing or damaged (nothing is cached then).
        """
        key = (weights_key(ref), inference)
        stamp = view_stamp(ref)
        entry = self._network(key, ref, inference)
        with self._guard:
            held = entry.views.get(ref)
        if held is not None and held[0] == stamp:
            return held[1]
        base = entry.model
        if held is None and base.ref == ref:
            model = base  # loaded just now, with the files as they are
        else:
            model = replace(base, ref=ref, calibration=det.read_calibration(ref),
                            manifest=ModelStore(ref.store).read_manifest(ref))
        with self._guard:
            entry.views[ref] = (stamp, model)
        return model

    def current(self, category: str, kind: str, inference: str = "fast") -> det.LoadedModel:
        """The store's current version of (category, kind), as it is now."""
        if self.store is None:
            raise ValueError("expected a ModelCache made with a store to read the current version from, found none")
        return self.get(self.store.current(category, kind), inference)

    def is_loaded(self, ref: ModelRef, inference: str = "fast") -> bool:
        """Whether ``get(ref, inference)`` is served without loading a network."""
        key = (weights_key(ref), inference)
        with self._guard:
            return key in self._entries

    def stats(self) -> CacheStats:
        with self._guard:
            return CacheStats(self._loads, self._hits, self._evictions, len(self._entries), self.size)

    def clear(self) -> None:
        """Drop every loaded network (a load in progress still completes and is kept)."""
        with self._guard:
            self._entries.clear()

    def _network(self, key: NetworkKey, ref: ModelRef, inference: str) -> _Entry:
        """The entry of ``key``, loading it under the key's own lock when it is not held."""
        with self._guard:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self._hits += 1
                return entry
            slot = self._slots.setdefault(key, _Slot())
            slot.users += 1
        try:
            with slot.lock:
                with self._guard:
                    entry = self._entries.get(key)
                    if entry is not None:  # loaded by the request we waited for
                        self._entries.move_to_end(key)
                        self._hits += 1
                        return entry
                model = (self._loader or det.load)(ref, inference)
                entry = _Entry(model)
                with self._guard:
                    self._entries[key] = entry
                    self._entries.move_to_end(key)
                    self._loads += 1
                    while len(self._entries) > self.size:
                        dropped, old = self._entries.popitem(last=False)
                        self._evictions += 1
                        logger.info("model cache: dropped %s (%s; least recently used, size %d)",
                                    old.model.ref.label, dropped[1], self.size)
                return entry
        finally:
            with self._guard:
                slot.users -= 1
                if slot.users == 0:
                    del self._slots[key]
