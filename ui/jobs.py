"""Background jobs (training, evaluation, indexing) that report progress and can be cancelled.

A job runs in a thread; the page polls its :class:`JobState` from a fragment that re-runs every second.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.types import TrainControl, TrainingCancelled


@dataclass
class JobState:
    name: str
    message: str = "starting"
    fraction: float = 0.0
    done: bool = False
    error: str | None = None
    cancelled: bool = False
    result: Any = None
    handled: bool = False  # set by the page once it has reacted to the job's end (e.g. refreshed caches)
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return not self.done


def start_job(name: str, work: Callable[[TrainControl], Any]) -> JobState:
    """Run ``work(control)`` in a daemon thread and return its live state."""
    state = JobState(name)

    def progress(message: str, fraction: float) -> None:
        state.message, state.fraction = message, fraction

    def run() -> None:
        try:
            state.result = work(TrainControl(progress=progress, cancel=state.cancel))
        except TrainingCancelled:
            state.cancelled = True
        except Exception as exc:  # shown to the user; the app stays usable
            state.error = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        finally:
            state.done = True

    state.thread = threading.Thread(target=run, name=f"job-{name}", daemon=True)
    state.thread.start()
    return state
