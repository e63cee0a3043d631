"""Background jobs (training, evaluation, indexing) that report progress and can be cancelled.

A job runs in a thread; the page polls its :class:`JobState` from a fragment that re-runs every second.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from core.progress import clock, duration_text, remaining_seconds
from core.types import TrainControl, TrainingCancelled

logger = logging.getLogger(__name__)


@dataclass
class JobState:
    name: str
    message: str = "starting"
    fraction: float = 0.0
    done: bool = False
    error: str | None = None
    cancelled: bool = False
    cancel_note: str = ""  # what the cancelled work said about what it kept
    result: Any = None
    handled: bool = False  # set by the page once it has reacted to the job's end (e.g. refreshed caches)
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    pace_start: tuple[float, float] | None = None  # (elapsed, fraction) at the first report: the pace's origin

    @property
    def running(self) -> bool:
        return not self.done

    @property
    def succeeded(self) -> bool:
        return self.done and self.error is None and not self.cancelled

    @property
    def elapsed(self) -> float:
        return (self.ended if self.ended is not None else time.monotonic()) - self.started

    def progress(self, message: str, fraction: float) -> None:
        """What the work reports (its ``TrainControl.progress``)."""
        if self.pace_start is None:
            self.pace_start = (self.elapsed, fraction)
        self.message, self.fraction = message, fraction

    @property
    def progress_text(self) -> str:
        """The progress bar's text: name, stage, elapsed time and the time left at the pace so far."""
        left = remaining_seconds(self.elapsed, self.fraction, self.pace_start)
        eta = "estimating the time left" if left is None else f"{duration_text(left)} left"
        return f"{self.name}: {self.message} · {clock(self.elapsed)} elapsed · {eta}"


def start_job(name: str, work: Callable[[TrainControl], Any]) -> JobState:
    """Run ``work(control)`` in a daemon thread and return its live state."""
    state = JobState(name)

    def run() -> None:
        logger.info("job %s: started", name)
        try:
            state.result = work(TrainControl(progress=state.progress, cancel=state.cancel))
            logger.info("job %s: done in %.1f s", name, state.elapsed)
        except TrainingCancelled as exc:
            state.cancelled, state.cancel_note = True, str(exc)
            logger.info("job %s: cancelled after %.1f s (%s)", name, state.elapsed, exc)
        except Exception as exc:  # shown to the user; the app stays usable
            state.error = f"{type(exc).__name__}: {exc}"
            logger.exception("job %s: failed after %.1f s", name, state.elapsed)
        finally:
            state.ended = time.monotonic()
            state.done = True

    state.thread = threading.Thread(target=run, name=f"job-{name}", daemon=True)
    state.thread.start()
    return state


def show_job(job: JobState, failed: str, cancel_label: str | None = None) -> bool:
    """Draw a running job's progress (with a cancel button if ``cancel_label``), or how it failed or was cancelled.

    Returns True exactly once: on the first call after the job ended, however it ended (succeeded, failed or
    cancelled), so the page can redraw what depends on it (a Train button disabled while it ran, caches).
    """
    if job.running:
        st.progress(job.fraction, text=job.progress_text)
        if cancel_label and st.button(cancel_label, type="secondary"):
            job.cancel.set()
    elif job.error:
        st.error(f"{failed} — {job.error}")
    elif job.cancelled:
        st.warning(f"{job.name}: {job.cancel_note or 'cancelled'}.")
    if job.done and not job.handled:
        job.handled = True
        return True
    return False


def follow_job(key: str, failed: str, cancel_label: str | None = None,
               ended: Callable[[JobState], None] | None = None) -> JobState | None:
    """Draw the job kept in ``st.session_state[key]`` in a fragment, and redraw the whole page once it has ended.

    Call it in the page body before anything that can stop the page while the job runs: Streamlit's browser
    drops every fragment timer when a full run starts and sets one again only for a fragment that run reaches.
    The fragment re-runs every second while the page on screen may show the job running (it runs, or its end
    has not been drawn yet: it may have ended after the page above was drawn). ``ended(job)`` (e.g. clearing
    caches) is called once, by the first run that sees the end. Every run of the fragment that finds the job
    ended while the page may show it running asks for a full run, until one has drawn the end: the redraw
    does not hang on one request. Returns the job (None: none started).
    """
    job: JobState | None = st.session_state.get(key)
    drawn = f"_{key}_drawn_running"
    st.session_state[drawn] = job is not None and (job.running or not job.handled)

    @st.fragment(run_every=1.0 if st.session_state[drawn] else None)
    def job_panel() -> None:
        current: JobState | None = st.session_state.get(key)
        if current is None:
            return
        if show_job(current, failed, cancel_label) and ended is not None:
            ended(current)
        if current.done and st.session_state.get(drawn):
            st.rerun(scope="app")

    job_panel()
    return job
