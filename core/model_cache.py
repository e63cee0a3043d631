"""Loaded models for long-running processes (the service, the watch folder): one network per model, reloaded
when the store's current version has other weights, with the calibration re-read when its file changes."""

from __future__ import annotations

import threading
from dataclasses import replace

from core import detector as det
from core.store import ModelRef, ModelStore


class ModelCache:
    """``get(ref)``: the model version ``ref``, loaded once per weights file and calibration content."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str], tuple[tuple[str, str], det.LoadedModel]] = {}

    def get(self, ref: ModelRef) -> det.LoadedModel:
        stamp = (self.store.weights_stamp(ref), self.store.calibration_stamp(ref))
        with self._lock:
            held = self._models.get((ref.category, ref.kind))
            if held is None or held[0][0] != stamp[0]:
                model = det.load(ref)
            elif held[0][1] != stamp[1] or held[1].ref != ref:
                model = replace(held[1], ref=ref, calibration=det.read_calibration(ref),
                                manifest=self.store.read_manifest(ref))
            else:
                model = held[1]
            self._models[(ref.category, ref.kind)] = (stamp, model)
        return model

    def current(self, category: str, kind: str) -> det.LoadedModel:
        """The store's current version of (category, kind), as it is now."""
        return self.get(self.store.current(category, kind))
