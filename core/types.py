"""Result types shared by the detectors, the evaluator and the views."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

ProgressFn = Callable[[str, float], None]
"""``progress(stage_message, fraction_done)`` with ``fraction_done`` in [0, 1]."""


class TrainingCancelled(RuntimeError):
    """Training was cancelled by the user; nothing was written."""


@dataclass(frozen=True)
class Prediction:
    """Raw output for one image: the image score and the anomaly map at the ORIGINAL image size ``[H, W]``."""

    score: float
    anomaly_map: np.ndarray
    latency_ms: float


@dataclass(frozen=True)
class TrainControl:
    """Progress reporting and cancellation for a training run (both optional)."""

    progress: ProgressFn | None = None
    cancel: threading.Event | None = None

    def report(self, message: str, fraction: float) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise TrainingCancelled(f"cancelled during: {message}")
        if self.progress is not None:
            self.progress(message, min(max(fraction, 0.0), 1.0))


NO_CONTROL = TrainControl()
