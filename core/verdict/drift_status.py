"""Drift status of a model version on the line: the drift watch (:mod:`core.scores.drift`) run over the results
database (:class:`core.store.history.History`), its alarm recorded there once, and the answer to it
(*recalibrate from the line*, :func:`recalibrate_from_history`).

What is watched: the raw scores of the images the version judged (verdicts OK / REVIEW / DEFECT; refused and
NO VERDICT rows are no parts of the product), oldest first, in units of the version's calibration (mean and
standard deviation of its good scores); a DEFECT counts at most at the threshold it was judged against
(:data:`CAPPED`: a burst of defects lifts the windowed median no further than the threshold, while a shift that
makes good parts DEFECT still reads as the threshold, well above the allowance; measured in
benchmarks/bench_line_promise.py, RESULTS.md ``line_promise``). A version starts with an empty run: a new version (thresholds saved,
recalibrated, retrained) has judged nothing yet. A resolved alarm of the version starts its run again at the
resolution time (a person decided the line is fine as it is: the watch then asks whether it drifts from there;
without this the CUSUM, already over its limit, would alarm again at once).

Once per alarm, across processes and hosts: when the rule alarms and the database holds no unresolved alarm for
the category, kind and version, the alarm of the run's *episode* is recorded (rule ``cusum``, statistic: the
CUSUM, limit: the rule's). The episode is the id of the resolved alarm whose resolution began the run (0: the
version's first run); :meth:`History.record_alarm_once` keeps one alarm per category, kind, version and episode
(a unique key in the database), so the service and a watch folder, or two hosts sharing one PostgreSQL, that
alarm at the same instant record one row, and each answers with it.

:class:`DriftWatch` is what the service and the watch folder hold: the status per model version, computed at
most every ``interval_s`` seconds (not per request), the line log imported into the database first so rows only
written to the JSONL log are counted too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa

from core.data.imageio import ImageLoadError, load_image
from core.portable import DEFECT, OK, REVIEW
from core.scores.calibration import Calibration
from core.scores.drift import DriftReport, DriftRule, watch
from core.store.history import AlarmRow, History, TrendBucket
from core.store.lifecycle import LoadedModel, read_calibration
from core.store.model_store import ModelRef
from core.types import Prediction
from core.verdict.recalibrate import MIN_CONFIRMED, recalibrate_from_line
from core.verdict.review import confirmed_good

logger = logging.getLogger(__name__)

JUDGED = (OK, REVIEW, DEFECT)  # the verdicts whose scores the drift watch reads
CAPPED = (DEFECT,)  # ... of which these count at most at their row's threshold
RULE = "cusum"  # the rule name recorded with an alarm
DEFAULT_INTERVAL_S = 5.0  # DriftWatch: seconds a version's status is reused before it is computed again
DEFAULT_RULE = DriftRule()
RECALIBRATE_FROM = 20  # confirmed good images the page's "Recalibrate from the line" takes (newest first)


@dataclass(frozen=True)
class DriftStatus:
    """Where the drift watch of one model version stands.

    ``report``: the rule over the version's run of scores (``report.n`` scores since ``since``, epoch s; None:
    since the version's first row); ``center``/``spread``: the calibration's good-score mean and std the scores
    were standardized with; ``open_alarm``: the unresolved alarm of this version in the database (None: none);
    ``recorded``: this call recorded it."""

    category: str
    kind: str
    version: int
    report: DriftReport
    center: float
    spread: float
    since: float | None
    open_alarm: AlarmRow | None
    recorded: bool

    @property
    def alarm(self) -> bool:
        """The line has drifted: the rule alarms on this run, or an alarm of this version is still open."""
        return self.report.alarm or self.open_alarm is not None

    @property
    def message(self) -> str:
        return self.report.describe()

    def answer(self) -> dict[str, Any]:
        """The JSON the service answers with: ``alarm``, ``median_z`` (None before a window is in), ``cusum``,
        ``limit``, ``n``, ``version``, ``message``."""
        return {"alarm": self.alarm, "median_z": self.report.median_z, "cusum": self.report.cusum,
                "limit": self.report.rule.limit, "n": self.report.n, "version": self.version,
                "message": self.message}


def run_start(history: History, category: str, kind: str, version: int) -> float | None:
    """Where the version's run of scores starts: the latest resolution time of one of its alarms, else None (its
    first row)."""
    return run_episode(history, category, kind, version)[0]


def run_episode(history: History, category: str, kind: str, version: int) -> tuple[float | None, int]:
    """(where the version's run of scores starts, its episode): the latest resolution of one of its alarms (time,
    alarm id), else (None, 0): the version's first run."""
    resolved = [(a.resolved_time, a.id) for a in history.alarms(category=category, kind=kind, version=version,
                                                                 limit=None) if a.resolved_time is not None]
    return max(resolved) if resolved else (None, 0)


def judged_run(history: History, category: str, kind: str, version: int,
               since: float | None = None) -> tuple[list[float], list[float]]:
    """(times, raw scores), both ``[n]``, of the images ``version`` judged OK, REVIEW or DEFECT at or after
    ``since``, oldest first; a DEFECT's score at most its threshold (:data:`CAPPED`)."""
    kept = history.scores_of_version(category, kind, version, JUDGED, since, capped=CAPPED)
    return [when for when, _ in kept], [score for _, score in kept]


def drift_status(history: History, model: LoadedModel, rule: DriftRule = DEFAULT_RULE) -> DriftStatus:
    """The drift watch of ``model``'s version (see the module docstring), recording its alarm once."""
    return drift_status_for(history, model.ref, model.calibration, rule)


def drift_status_for(history: History, ref: ModelRef, calibration: Calibration,
                     rule: DriftRule = DEFAULT_RULE) -> DriftStatus:
    """:func:`drift_status` for version ``ref`` with its ``calibration`` (no network loaded: the dashboard)."""
    return _status(history, ref, calibration, rule)[0]


def _status(history: History, ref: ModelRef, calibration: Calibration,
            rule: DriftRule) -> tuple[DriftStatus, list[float]]:
    """The status and the times ``[n]`` of the scores its report ran over."""
    category, kind, version = ref.category, ref.kind, ref.version
    center, spread = float(calibration.good_score_mean), float(calibration.good_score_std)
    since, episode = run_episode(history, category, kind, version)
    times, scores = judged_run(history, category, kind, version, since)
    report = watch(scores, center, spread, rule)
    open_alarms = history.alarms(category=category, kind=kind, version=version, open_only=True, limit=1)
    open_alarm = open_alarms[0] if open_alarms else None
    recorded = False
    if report.alarm and open_alarm is None:
        found, recorded = history.record_alarm_once(category=category, kind=kind, version=version, episode=episode,
                                                    rule=RULE, statistic=report.cusum, limit=rule.limit,
                                                    message=report.describe())
        open_alarm = None if found.resolved_time is not None else found  # resolved meanwhile: the next check
        if recorded:  # begins the next episode
            logger.warning("%s/%s v%d: %s", category, kind, version, report.describe())
    return DriftStatus(category, kind, version, report, center, spread, since, open_alarm, recorded), times


def drift_trend(history: History, ref: ModelRef, calibration: Calibration, buckets: Sequence[TrendBucket],
                rule: DriftRule = DEFAULT_RULE) -> list[float | None]:
    """The drift CUSUM of version ``ref`` at the end of each of ``buckets`` ``[b]`` (``History.trends``): its value
    after the bucket's last image of the version's run, None for a bucket without one (the CUSUM reads the
    version's run only, whatever rows the buckets count)."""
    status, times = _status(history, ref, calibration, rule)
    trace = status.report.cusum_trace
    out: list[float | None] = []
    for bucket in buckets:
        inside = [i for i, t in enumerate(times) if bucket.start <= t < bucket.end]
        out.append(trace[inside[-1]] if inside else None)
    return out


class DriftWatch:
    """:func:`drift_status` per model version, reused for ``interval_s`` seconds (thread-safe).

    ``open_history`` is called once, at the first check (again after a failure); ``refresh(history)`` before each
    computation (the service and the watch folder import the line log there). A database that cannot be read
    makes :meth:`answer` say so instead of failing the caller. ``background``: once a version has a status, a
    stale one is answered at once while a thread computes the next (the service: a long run of scores costs
    seconds to read, which no request should wait for); else the caller computes it.

    Measured (2 shared CPU cores, SQLite): a version with 20,000 judged rows takes about 0.7 s to compute (0.3 s
    the query, most of the rest the rule's loop, :func:`core.scores.drift.watch`)."""

    def __init__(self, open_history: Callable[[], History], rule: DriftRule = DEFAULT_RULE,
                 interval_s: float = DEFAULT_INTERVAL_S, refresh: Callable[[History], object] | None = None,
                 clock: Callable[[], float] = time.monotonic, background: bool = False) -> None:
        self._open = open_history
        self.rule = rule
        self.interval_s = interval_s
        self._refresh = refresh
        self._clock = clock
        self._history: History | None = None
        self.background = background
        self._lock = threading.Lock()  # the cache
        self._compute_lock = threading.Lock()  # opening the history and computing
        self._computing: set[ModelRef] = set()
        self._cached: dict[ModelRef, tuple[float, DriftStatus]] = {}
        self._failed: dict[ModelRef, tuple[float, dict[str, Any]]] = {}  # an unreadable database: not retried
        # on every request either

    def status(self, model: LoadedModel) -> DriftStatus:
        """The version's status, computed again once ``interval_s`` passed since the last computation.

        Raises:
            sqlalchemy.exc.SQLAlchemyError, OSError: the database (or the line log) could not be read.
        """
        with self._lock:
            held = self._cached.get(model.ref)
            if held is not None and self._clock() - held[0] < self.interval_s:
                return held[1]
            if held is not None and self.background:
                if model.ref not in self._computing:  # one refresh at a time per version, off the caller
                    self._computing.add(model.ref)
                    threading.Thread(target=self._refresh_quietly, args=(model,), daemon=True,
                                     name=f"drift-{model.ref.label}").start()
                return held[1]
        return self._compute(model)

    def _compute(self, model: LoadedModel) -> DriftStatus:
        with self._compute_lock:
            started = self._clock()
            if self._history is None:
                self._history = self._open()
            if self._refresh is not None:
                self._refresh(self._history)
            found = drift_status(self._history, model, self.rule)
        with self._lock:
            self._cached = {ref: v for ref, v in self._cached.items()
                            if (ref.category, ref.kind) != (model.category, model.kind)}  # older versions go
            self._cached[model.ref] = (started, found)
        return found

    def _refresh_quietly(self, model: LoadedModel) -> None:
        try:
            self._compute(model)
        except (sa.exc.SQLAlchemyError, OSError, ValueError) as exc:
            logger.warning("%s: drift watch unavailable: %s", model.ref.label, exc)
        finally:
            with self._lock:
                self._computing.discard(model.ref)

    def check(self, model: LoadedModel) -> DriftStatus | None:
        """:meth:`status`, or None (logged) when the database or the line log cannot be read."""
        try:
            return self.status(model)
        except (sa.exc.SQLAlchemyError, OSError, ValueError) as exc:
            logger.warning("%s: drift watch unavailable: %s", model.ref.label, exc)
            return None

    def answer(self, model: LoadedModel) -> dict[str, Any]:
        """:meth:`DriftStatus.answer`, or when the database cannot be read ``alarm`` False, the readings None and
        the reason in ``message`` (that answer is reused for ``interval_s`` too)."""
        failed = self._failed.get(model.ref)
        if failed is not None and self._clock() - failed[0] < self.interval_s:
            return failed[1]
        try:
            found = self.status(model).answer()
        except (sa.exc.SQLAlchemyError, OSError, ValueError) as exc:
            logger.warning("%s: drift watch unavailable: %s", model.ref.label, exc)
            found = {"alarm": False, "median_z": None, "cusum": None, "limit": self.rule.limit, "n": None,
                     "version": model.version, "message": f"drift watch unavailable: {exc}"}
            self._failed[model.ref] = (self._clock(), found)
            return found
        self._failed.pop(model.ref, None)
        return found

    def latest(self) -> list[DriftStatus]:
        """The last status computed per (category, kind), its newest version, sorted by category and kind."""
        with self._lock:
            found = [status for _, status in self._cached.values()]
        return sorted(found, key=lambda s: (s.category, s.kind))

    def close(self) -> None:
        with self._lock:
            if self._history is not None:
                self._history.close()
                self._history = None


# -- the answer: recalibrate from the line ---------------------------------------------------------------------


@dataclass(frozen=True)
class LineRecalibration:
    """What *Recalibrate from the line* did: ``new`` (now current) made from ``images`` confirmed goods of
    ``old``; the image thresholds before and after; the drift alarms it resolved (ids); ``sample``: which
    confirmed goods it used, in words (spot checks, or the review queue's goods and why)."""

    old: ModelRef
    new: ModelRef
    images: int
    old_threshold: float
    new_threshold: float
    resolved: tuple[int, ...]
    sample: str = ""

    def describe(self) -> str:
        return (f"{self.new.category}/{self.new.kind} v{self.old.version} -> v{self.new.version} from {self.images} "
                f"images confirmed good ({self.sample or 'confirmed goods'}): image threshold "
                f"{self.old_threshold:.4g} -> {self.new_threshold:.4g}"
                + (f"; {len(self.resolved)} drift alarm(s) resolved" if self.resolved else ""))


def recalibrate_from_history(history: History, model: LoadedModel,
                             measure: Callable[[Sequence[np.ndarray]], list[Prediction]], by: str,
                             limit: int = RECALIBRATE_FROM) -> LineRecalibration:
    """*Recalibrate from the line*: the newest ``limit`` images confirmed good (:func:`core.verdict.review.confirmed_good`) scored by
    ``measure`` (``model``'s raw predictions, maps at full size) make a new version
    (:func:`core.verdict.recalibrate.recalibrate_from_line`); the open drift alarms of the category and kind are
    resolved by ``by``. The goods are the confirmed *spot checks* (OK verdicts sent to the queue by image hash:
    an unbiased sample of the line's good parts) when at least :data:`MIN_CONFIRMED` are there; else every
    confirmed good, most of them REVIEW and DEFECT verdicts (the high-scoring goods: thresholds fitted from them
    sit high), and the answer's ``sample`` says so.

    Raises:
        ValueError: fewer than :data:`MIN_CONFIRMED` confirmed images that can be read.
    """
    goods = confirmed_good(history, model.category, model.kind, limit, spot_checked=True)
    sample = f"{len(goods)} spot checks of OK verdicts, an unbiased sample"
    if len(goods) < MIN_CONFIRMED:
        spot = len(goods)
        goods = confirmed_good(history, model.category, model.kind, limit)
        sample = (f"goods confirmed in the review queue, {len(goods) - spot} of them REVIEW/DEFECT verdicts "
                  f"(biased toward high scores: only {spot} spot checks confirmed, {MIN_CONFIRMED} needed)")
    images: list[np.ndarray] = []
    for good in goods:
        try:
            images.append(load_image(str(good.path)))
        except (ImageLoadError, OSError) as exc:
            logger.warning("recalibrate from the line: %s skipped: %s", good.path, exc)
    if len(images) < MIN_CONFIRMED:
        raise ValueError(f"expected at least {MIN_CONFIRMED} line images confirmed good (reviewed OK, image still "
                         f"stored) for {model.category}/{model.kind} to recalibrate from, found {len(images)}")
    new = recalibrate_from_line(model, measure(images))
    resolved = tuple(history.resolve_alarm(a.id, by).id
                     for a in history.alarms(category=model.category, kind=model.kind, open_only=True, limit=None))
    logger.info("recalibrated from the line from %s", sample)
    return LineRecalibration(model.ref, new, len(images), float(model.calibration.image_threshold),
                             float(read_calibration(new).image_threshold), resolved, sample)
