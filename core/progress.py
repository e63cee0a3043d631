"""Durations as people read them: training estimates, elapsed time and time left (pure functions; the Models
page and the CLI show them)."""

from __future__ import annotations

import math
import os

MIN_PACE_FRACTION = 0.01  # of the work done since the pace's start before a time left is estimated
MIN_PACE_SECONDS = 2.0


def duration_text(seconds: float) -> str:
    """``seconds`` in words, rounded as an estimate is: "a few seconds" (< 10 s), "about 25 s" (to 5 s),
    "about 4 min", "about 1 h 5 min"."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"expected a duration of 0 seconds or more, found {seconds}")
    if seconds < 10:
        return "a few seconds"
    if seconds < 57.5:
        return f"about {5 * round(seconds / 5)} s"
    minutes = max(1, round(seconds / 60))
    if minutes < 60:
        return f"about {minutes} min"
    hours, rest = divmod(minutes, 60)
    return f"about {hours} h" + (f" {rest} min" if rest else "")


BUSY_LOAD = 1.25  # a 1-minute load average above this many runnable tasks per core: the machine is busy


def machine_load() -> tuple[float, int] | None:
    """This machine's 1-minute load average and its core count (None where the platform has no load average)."""
    try:
        return os.getloadavg()[0], os.cpu_count() or 1
    except OSError:
        return None


def busy_note_now() -> str | None:
    """:func:`busy_note` for this machine now (None where its load cannot be read)."""
    load = machine_load()
    return None if load is None else busy_note(*load)


def busy_note(load: float, cores: int) -> str | None:
    """What a training estimate for a quiet machine means now, on ``cores`` cores with a 1-minute ``load``
    average: None when the machine is quiet enough, else the slowdown to expect (each task gets about
    cores / load of a core)."""
    if cores < 1 or load <= BUSY_LOAD * cores:
        return None
    return (f"the machine is busy now (load {load:.1f} on {cores} cores): expect about {load / cores:.1f}x as long "
            "or more")


def clock(seconds: float) -> str:
    """Elapsed time as a clock: "0:07", "12:34", "1:02:03"."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def remaining_seconds(elapsed: float, fraction: float, pace_start: tuple[float, float] | None) -> float | None:
    """Seconds left at the pace kept since ``pace_start`` = (elapsed, fraction) at the first progress report
    (so a resumed run, which starts part-way, and the set-up before the first report do not skew it). None
    until there is a pace to go by: at least 1% of the work and 2 s since that start."""
    if pace_start is None:
        return None
    t0, f0 = pace_start
    done, spent = fraction - f0, elapsed - t0
    if done < MIN_PACE_FRACTION or spent < MIN_PACE_SECONDS:
        return None
    return spent / done * max(0.0, 1.0 - fraction)
