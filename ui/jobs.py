"""Background jobs (training, evaluation, indexing) that report progress and can be cancelled.

A job runs in a thread; the page polls its :class:`JobState` from a fragment that re-runs every second.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

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

    @property
    def succeeded(self) -> bool:
        return self.done and self.error is None and not self.cancelled


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


def show_job(job: JobState, failed: str, cancel_label: str | None = None) -> bool:
    """Draw a running job's progress (with a cancel button if ``cancel_label``), or how it failed or was cancelled.

    Returns True exactly once: on the first call after the job succeeded, so the page can refresh itself.
    """
    if job.running:
        st.progress(job.fraction, text=f"{job.name}: {job.message}")
        if cancel_label and st.button(cancel_label, type="secondary"):
            job.cancel.set()
    elif job.error:
        st.error(f"{failed} — {job.error}")
    elif job.cancelled:
        st.warning(f"{job.name}: cancelled; nothing was saved.")
    elif not job.handled:
        job.handled = True
        return True
    return False
