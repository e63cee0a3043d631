"""Durations in words, the elapsed clock and the time-left estimate (hand-computed tables)."""

from __future__ import annotations

import pytest

from core.progress import busy_note, clock, duration_text, remaining_seconds


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "a few seconds"), (9.9, "a few seconds"), (10, "about 10 s"), (26.28, "about 25 s"), (27.6, "about 30 s"),
    (57.4, "about 55 s"), (57.5, "about 1 min"), (89, "about 1 min"), (91, "about 2 min"),
    (251, "about 4 min"), (1501, "about 25 min"), (3569, "about 59 min"), (3570, "about 1 h"),
    (3900, "about 1 h 5 min"), (7200, "about 2 h"),
])
def test_duration_text(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_duration_text_refuses_what_is_no_duration(bad: float) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        duration_text(bad)


@pytest.mark.parametrize(("seconds", "text"), [(0, "0:00"), (7.9, "0:07"), (754, "12:34"), (3723, "1:02:03")])
def test_clock(seconds: float, text: str) -> None:
    assert clock(seconds) == text


@pytest.mark.parametrize(("elapsed", "fraction", "start", "left"), [
    (10.0, 0.5, (0.0, 0.0), 10.0),     # half done in 10 s: 10 s more
    (12.0, 0.6, (2.0, 0.1), 8.0),      # resumed at 10%: 0.5 in 10 s, 0.4 to go
    (100.0, 1.0, (0.0, 0.0), 0.0),
    (10.0, 0.5, None, None),           # no report yet
    (1.5, 0.5, (0.0, 0.0), None),      # under 2 s of pace
    (50.0, 0.105, (0.0, 0.1), None),   # under 1% of the work since the start
])
def test_remaining_seconds(elapsed: float, fraction: float, start: tuple[float, float] | None,
                           left: float | None) -> None:
    got = remaining_seconds(elapsed, fraction, start)
    assert got == (None if left is None else pytest.approx(left))


@pytest.mark.parametrize(("load", "cores", "note"), [
    (0.3, 2, None),  # quiet
    (2.5, 2, None),  # 1.25 per core: still the estimate's machine
    (5.0, 2, "the machine is busy now (load 5.0 on 2 cores): expect about 2.5x as long or more"),
    (17.3, 2, "the machine is busy now (load 17.3 on 2 cores): expect about 8.7x as long or more"),
    (6.0, 8, None),
    (3.0, 0, None),  # cores unknown: nothing said
])
def test_busy_note(load: float, cores: int, note: str | None) -> None:
    assert busy_note(load, cores) == note


def test_no_load_average_means_nothing_said(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from core.models import runtime
    from core.progress import busy_note_now, machine_load

    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert machine_load() == (9.0, 2) and runtime.busy()
    assert busy_note_now() == "the machine is busy now (load 9.0 on 2 cores): expect about 4.5x as long or more"

    def unavailable() -> tuple[float, float, float]:
        raise OSError("no load average on this platform")

    monkeypatch.setattr(os, "getloadavg", unavailable)
    assert machine_load() is None and busy_note_now() is None and not runtime.busy()
