"""Result types shared by the detectors, the evaluator and the views."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ProgressFn = Callable[[str, float], None]
"""``progress(stage_message, fraction_done)`` with ``fraction_done`` in [0, 1]."""


class TrainingCancelled(RuntimeError):
    """Training was cancelled by the user; no model version was written (the message says whether the run's
    state was kept to resume, see :class:`ResumePoint`)."""


HOLDOUT_FRACTION = 0.2  # of the good training images, for calibration of kinds without leave-one-out
MAX_HOLDOUT = 200  # at most this many held out
MIN_HOLDOUT_IMAGES = 10  # fewer good images than this: none held out (calibrated on the training images)


def holdout_count(n: int, fraction: float = HOLDOUT_FRACTION, limit: int = MAX_HOLDOUT) -> int:
    """How many of ``n`` good training images a kind without leave-one-out keeps out of fitting for its
    calibration: ``fraction`` of them, at most ``limit``, none below :data:`MIN_HOLDOUT_IMAGES` (the one rule for
    ``core.store.lifecycle.split_holdout`` and the training estimate)."""
    return min(limit, int(round(n * fraction))) if n >= MIN_HOLDOUT_IMAGES else 0


@dataclass(frozen=True)
class Prediction:
    """Raw output for one image: the image score and the anomaly map at the ORIGINAL image size ``[H, W]``."""

    score: float
    anomaly_map: np.ndarray
    latency_ms: float


@dataclass(frozen=True)
class TrainControl:
    """Progress reporting and cancellation for a training run (all optional). ``state_dir``: a folder where a
    detector that can resume (EfficientAD) keeps its training state when stopped, to continue from there."""

    progress: ProgressFn | None = None
    cancel: threading.Event | None = None
    state_dir: Path | None = None

    def check(self, message: str) -> None:
        """Raise :class:`TrainingCancelled` (naming ``message``, the stage reached) if cancellation was asked."""
        if self.cancel is not None and self.cancel.is_set():
            raise TrainingCancelled(f"cancelled during: {message}")

    def report(self, message: str, fraction: float) -> None:
        self.check(message)
        if self.progress is not None:
            self.progress(message, min(max(fraction, 0.0), 1.0))


@dataclass(frozen=True)
class ResumePoint:
    """Where an interrupted training run stopped, written beside its state (``state_dir/progress.json``) so
    the Models page and the CLI can offer to resume it without loading the state itself."""

    kind: str
    step: int
    steps: int
    settings: dict[str, Any]
    num_images: int
    train_seconds: float
    saved: str  # ISO time

    FILE = "progress.json"

    def write(self, folder: Path) -> Path:
        """Write atomically to ``folder``/progress.json."""
        from core.files import atomic_write_json

        return atomic_write_json(Path(folder) / self.FILE, asdict(self))

    @classmethod
    def read(cls, folder: Path) -> ResumePoint | None:
        """The point saved in ``folder``, or None when there is none or it is unreadable (nothing to resume)."""
        try:
            data = json.loads((Path(folder) / cls.FILE).read_text())
            return cls(kind=str(data["kind"]), step=int(data["step"]), steps=int(data["steps"]),
                       settings=dict(data["settings"]), num_images=int(data["num_images"]),
                       train_seconds=float(data["train_seconds"]), saved=str(data["saved"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


NO_CONTROL = TrainControl()
