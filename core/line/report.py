"""The shift report: what the line judged for one category in a time range, as one printable HTML file or a PDF.

:func:`shift_report` reads the line's history (core/store/history.py) and the calibrations of the model versions
that judged (core/store/lifecycle.py) into a :class:`ShiftReport`:

- **counts per verdict** (OK, REVIEW, DEFECT, NO VERDICT, REJECTED, ...) and a **trend** per local hour (ranges up
  to :data:`HOURLY_UP_TO`) or per shift (longer ranges);
- **the promise against the reviews**, per model version that judged in the range (:class:`PromiseCheck`): the
  calibration promises that at most ``bound`` of new good parts score at or above the image threshold (its
  ``false_alarm_target``, from n good images). The reviews show, among the parts that version judged:
  ``false_alarms`` (scored at or above the threshold and confirmed OK by a person) over ``goods_seen`` (parts not
  confirmed DEFECT), a lower bound on the rate that held, and, counting every flagged part nobody reviewed as a
  false alarm, an upper bound. ``status`` compares the two with the promised bound;
- **drift alarms** raised in the range;
- **review outcomes** per model verdict (:class:`ReviewOutcome`): how many of the parts judged OK / REVIEW / DEFECT
  a person confirmed OK or DEFECT (the latest decision on a part counts), and the defect types;
- **the worst images** (highest raw score) with heatmap thumbnails when the image file is still there
  (:class:`Thumbnail`; :func:`model_thumbnailer` scores it again with the version that judged it).

:func:`render_html` writes one self-contained page (inline CSS with ``@media print``, images as base64 PNG, no
external asset); :func:`render_pdf` the same content as a PDF (reportlab, pure Python; nothing is downloaded).

Times are seconds since the epoch; they are shown in local time (``tz`` None: this machine's zone), like the
history's trend buckets. Ranges are ``since <= time < until``.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from PIL import Image

from core.data.imageio import ImageLoadError, load_image
from core.store.history import (  # shift_bucket: the history's own shift rule (one definition)
    DEFAULT_SHIFT_STARTS,
    AlarmRow,
    History,
    ResultRow,
    ReviewRow,
    Time,
    TrendBucket,
    shift_bucket,
)
from core.store.model_store import ModelStore, ModelStoreError
from core.verdict.overlay import png_bytes

logger = logging.getLogger(__name__)

__all__ = ["EMPTY", "PromiseCheck", "ReviewOutcome", "ShiftReport", "Thumbnail", "Thumbnailer", "WorstImage",
           "current_shift", "model_thumbnailer", "parse_time", "plain_thumbnailer", "render_html", "render_pdf",
           "report_range", "shift_report"]

EMPTY = "Nothing judged in this range."
JUDGED: tuple[str, ...] = ("OK", "REVIEW", "DEFECT")  # the verdicts a part gets; others are refusals
VERDICT_ORDER: tuple[str, ...] = (*JUDGED, "NO VERDICT", "REJECTED")
WORST = 8  # worst images shown
THUMB_SIDE = 256  # px: long side of a thumbnail
HOURLY_UP_TO = 36 * 3600.0  # s: ranges up to this long are drawn per hour, longer ones per shift
Bucket = Literal["hour", "shift"]

# -- what the report holds ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Thumbnail:
    """A small PNG of a judged image (long side at most the thumbnailer's side): ``heatmap`` when the model's
    overlay is drawn on it; ``note`` says whose heatmap, or why there is none."""

    png: bytes | None
    heatmap: bool
    note: str


Thumbnailer = Callable[[ResultRow], Thumbnail]
"""``row -> Thumbnail`` of the image at ``row.path`` (called only when that file exists)."""


@dataclass(frozen=True)
class PromiseCheck:
    """One model version's promise (from its calibration) against what the reviews showed for the parts it judged
    in the range. ``promised`` (the requested false-alarm rate), ``n`` and ``bound`` are None when the calibration
    states no promise (saved before promises were kept, or unreadable: ``statement`` says which).

    Counts over the parts this version judged (OK / REVIEW / DEFECT): ``flagged`` scored at or above the threshold
    they were judged with (what the promise is about; REVIEW parts below it are not flagged), ``reviewed_flagged``
    of them a person decided, ``false_alarms`` of those confirmed OK, ``goods_seen`` parts not confirmed DEFECT,
    ``unreviewed_flagged`` flagged parts nobody decided."""

    kind: str
    version: int
    promised: float | None
    n: int | None
    bound: float | None
    statement: str
    threshold: float | None
    judged: int
    flagged: int
    reviewed_flagged: int
    false_alarms: int
    goods_seen: int
    unreviewed_flagged: int

    @property
    def good_share_of_flagged(self) -> float | None:
        """Share of the reviewed flagged parts a person confirmed good (None: none reviewed)."""
        return self.false_alarms / self.reviewed_flagged if self.reviewed_flagged else None

    @property
    def false_alarm_low(self) -> float | None:
        """False alarms found / goods seen: the rate that at least held (None: no good part seen)."""
        return self.false_alarms / self.goods_seen if self.goods_seen else None

    @property
    def false_alarm_high(self) -> float | None:
        """The rate if every flagged part nobody reviewed were good (None: no good part seen)."""
        return (self.false_alarms + self.unreviewed_flagged) / self.goods_seen if self.goods_seen else None

    @property
    def status(self) -> str:
        """``within the promise`` (even the upper rate is at or below the bound), ``above the promise`` (the
        lower rate is above it), ``undecided: ...`` (between), or why there is nothing to compare."""
        limit = self.bound if self.bound is not None else self.promised
        low, high = self.false_alarm_low, self.false_alarm_high
        if limit is None:
            return "no promise to compare"
        if low is None or high is None:
            return "no good part seen"
        if low > limit + 1e-12:
            return "above the promise"
        if high <= limit + 1e-12:
            return "within the promise"
        return f"undecided: {self.unreviewed_flagged} flagged part(s) not reviewed"


@dataclass(frozen=True)
class ReviewOutcome:
    """What people decided about the parts the model judged ``model_verdict`` in the range (``judged`` of them):
    ``confirmed_ok`` / ``confirmed_defect`` parts (the latest decision per part), the defect types named."""

    model_verdict: str
    judged: int
    confirmed_ok: int
    confirmed_defect: int
    defects: dict[str, int] = field(default_factory=dict)

    @property
    def reviewed(self) -> int:
        return self.confirmed_ok + self.confirmed_defect


@dataclass(frozen=True)
class WorstImage:
    """One of the highest-scoring parts: its line result, its thumbnail (None: no file), and a note."""

    result: ResultRow
    thumbnail: Thumbnail | None
    note: str


@dataclass(frozen=True)
class ShiftReport:
    """What the line judged for ``category`` (``kind``: one model kind, None: all) with ``since <= time < until``
    (epoch s), made at ``generated`` from the history ``source``. ``counts``: rows per verdict, refusals too
    (:data:`VERDICT_ORDER` first); ``trend``: per ``bucket`` (hour or shift), oldest first; ``promises`` per model
    version, ``alarms`` oldest first, ``outcomes`` per model verdict (OK, REVIEW, DEFECT), ``worst`` highest score
    first. ``zone``: the UTC offset the times are shown in."""

    category: str
    kind: str | None
    since: float
    until: float
    generated: float
    zone: str
    source: str
    counts: dict[str, int]
    trend: tuple[TrendBucket, ...]
    bucket: Bucket
    promises: tuple[PromiseCheck, ...]
    alarms: tuple[AlarmRow, ...]
    outcomes: tuple[ReviewOutcome, ...]
    worst: tuple[WorstImage, ...]
    tz: dt.tzinfo | None = None

    @property
    def total(self) -> int:
        """Rows in the range, refusals included."""
        return sum(self.counts.values())

    @property
    def judged(self) -> int:
        """Parts that got OK, REVIEW or DEFECT."""
        return sum(self.counts.get(v, 0) for v in JUDGED)

    @property
    def empty(self) -> bool:
        """Nothing judged in the range (refusals and alarms may still be there)."""
        return self.judged == 0

    def when(self, epoch: float, seconds: bool = False) -> str:
        """``epoch`` in the report's local time."""
        return dt.datetime.fromtimestamp(epoch, self.tz).strftime("%Y-%m-%d %H:%M" + (":%S" if seconds else ""))

    @property
    def title(self) -> str:
        return (f"Shift report · {self.category}{' · ' + self.kind if self.kind else ''} · "
                f"{self.when(self.since)} to {self.when(self.until)}")


# -- ranges --------------------------------------------------------------------------------------------------------


def _epoch(value: Time) -> float:
    return value.timestamp() if isinstance(value, dt.datetime) else float(value)


def current_shift(now: Time | None = None, tz: dt.tzinfo | None = None,
                  starts: Sequence[int] = DEFAULT_SHIFT_STARTS) -> tuple[float, float]:
    """``(start, end)`` (epoch s) of the shift holding ``now`` (default: now); shifts begin at the local hours
    ``starts`` (the history's trend rule)."""
    when = dt.datetime.now(dt.UTC).timestamp() if now is None else _epoch(now)
    start, end, _ = shift_bucket(when, tz, sorted({int(h) for h in starts}))
    return start, end


def parse_time(text: str) -> float:
    """An ISO 8601 date or date and time (``2026-03-02``, ``2026-03-02T14:00``, ``...+01:00``) as epoch s; one
    without an offset is local time.

    Raises:
        ValueError: not such a date (names the text).
    """
    try:
        return dt.datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise ValueError(f"expected an ISO date or date and time such as 2026-03-02T14:00, found {text!r}") from None


def report_range(since: Time | None, until: Time | None, now: Time | None = None,
                 tz: dt.tzinfo | None = None) -> tuple[float, float]:
    """The range a report covers: both ends given as they are; neither: the current shift; only ``since``: up to
    ``now``; only ``until``: from the start of the shift it ends in.

    Raises:
        ValueError: the end is not after the start.
    """
    moment = dt.datetime.now(dt.UTC).timestamp() if now is None else _epoch(now)
    if until is not None:
        end = _epoch(until)
        start = current_shift(end - 1e-3, tz)[0] if since is None else _epoch(since)
    elif since is not None:
        start, end = _epoch(since), moment
    else:
        start, end = current_shift(moment, tz)
    _check_range(start, end)
    return start, end


def _check_range(since: float, until: float) -> None:
    if not (math.isfinite(since) and math.isfinite(until)) or until <= since:
        raise ValueError(f"expected the range's end after its start, found {dt.datetime.fromtimestamp(since)} to "
                         f"{dt.datetime.fromtimestamp(until)}")


# -- thumbnails ----------------------------------------------------------------------------------------------------


def _scaled_png(image: np.ndarray, side: int) -> bytes:
    """``image`` (uint8 RGB ``[H, W, 3]``) scaled down to a long side of at most ``side`` px, as PNG."""
    picture = Image.fromarray(image)
    picture.thumbnail((side, side), Image.Resampling.BILINEAR)
    return png_bytes(np.asarray(picture))


def plain_thumbnailer(side: int = THUMB_SIDE) -> Thumbnailer:
    """Thumbnails of the images themselves, no model (fast; ``python -m core report --no-heatmaps``)."""
    def make(row: ResultRow) -> Thumbnail:
        try:
            return Thumbnail(_scaled_png(load_image(str(row.path)), side), False, "image only (no heatmap asked)")
        except ImageLoadError as exc:
            return Thumbnail(None, False, f"image unreadable: {exc}")

    return make


def model_thumbnailer(store: ModelStore, side: int = THUMB_SIDE) -> Thumbnailer:
    """Thumbnails with the heatmap overlay of the version that judged each image (scored again; models loaded
    once, through a small :class:`~core.store.model_cache.ModelCache`). When that version cannot be loaded or
    cannot score the image, the image alone, with the reason."""
    from core.store.model_cache import ModelCache
    from core.verdict import inspection
    from core.verdict.overlay import overlay_png

    models = ModelCache(store, size=2)

    def make(row: ResultRow) -> Thumbnail:
        try:
            image = load_image(str(row.path))
        except ImageLoadError as exc:
            return Thumbnail(None, False, f"image unreadable: {exc}")
        if row.kind is None or row.version is None:
            return Thumbnail(_scaled_png(image, side), False, "no heatmap: the result names no model version")
        try:
            model = models.get(store.ref(row.category, row.kind, row.version))
            measured = inspection.score(model, [image])[0]
        except (ModelStoreError, ValueError, KeyError) as exc:
            logger.warning("no heatmap for %s (%s v%s): %s", row.path, row.kind, row.version, exc)
            return Thumbnail(_scaled_png(image, side), False, f"no heatmap: {exc}")
        if measured is None:
            return Thumbnail(_scaled_png(image, side), False, "no heatmap: the image is below the model's size")
        png = overlay_png(image, measured.anomaly_map, model.calibration, max_side=side)
        return Thumbnail(png, True, f"heatmap of {model.ref.label}")

    return make


# -- building the report -------------------------------------------------------------------------------------------


def _latest_reviews(history: History, category: str, kind: str | None, since: float,
                    ids: set[int]) -> dict[int, ReviewRow]:
    """The latest decision on each of the results ``ids`` (reviews are made after judging: from ``since`` on)."""
    latest: dict[int, ReviewRow] = {}
    for review in history.reviews(category=category, kind=kind, since=since, limit=None, newest_first=False):
        if review.result_id in ids:
            latest[review.result_id] = review
    return latest


def _flagged(row: ResultRow) -> bool:
    """Scored at or above the threshold it was judged with (the promise's event); without both numbers, DEFECT."""
    if row.score is not None and row.threshold is not None:
        return row.score >= row.threshold
    return row.verdict == "DEFECT"


def _promise_of(store: ModelStore, category: str, kind: str,
                version: int) -> tuple[float | None, int | None, float | None, str, float | None]:
    """(promised rate, n, bound, statement, image threshold) of a version's calibration now."""
    from core.store.lifecycle import read_calibration

    try:
        calibration = read_calibration(store.ref(category, kind, version))
    except (ModelStoreError, ValueError, KeyError) as exc:
        return None, None, None, f"calibration not readable: {exc}", None
    promise = calibration.promise_at_threshold()  # the threshold the version judged with, not only the default
    if promise is None:
        target = calibration.false_alarm_target
        said = (f"calibrated for {target:.0%} from n={calibration.num_images} images; no bound stated (saved before "
                "promises were kept)" if target is not None else
                f"calibrated from n={calibration.num_images} images before false-alarm targets; no promise stated")
        return target, calibration.num_images, None, said, calibration.image_threshold
    return promise.requested, promise.n, promise.bound, promise.statement, calibration.image_threshold


def _promise_checks(store: ModelStore, category: str, judged: Sequence[ResultRow],
                    latest: dict[int, ReviewRow]) -> tuple[PromiseCheck, ...]:
    versions = sorted({(r.kind, r.version) for r in judged if r.kind is not None and r.version is not None})
    checks = []
    for kind, version in versions:
        rows = [r for r in judged if (r.kind, r.version) == (kind, version)]
        flagged = [r for r in rows if _flagged(r)]
        decided = [latest[r.id] for r in flagged if r.id in latest]
        confirmed_defect = sum(1 for r in rows if r.id in latest and latest[r.id].decision == "DEFECT")
        promised, n, bound, statement, threshold = _promise_of(store, category, kind, version)
        checks.append(PromiseCheck(
            kind=kind, version=version, promised=promised, n=n, bound=bound, statement=statement,
            threshold=threshold, judged=len(rows), flagged=len(flagged), reviewed_flagged=len(decided),
            false_alarms=sum(1 for d in decided if d.decision == "OK"), goods_seen=len(rows) - confirmed_defect,
            unreviewed_flagged=len(flagged) - len(decided)))
    return tuple(checks)


def _outcomes(judged: Sequence[ResultRow], latest: dict[int, ReviewRow]) -> tuple[ReviewOutcome, ...]:
    out = []
    for verdict in JUDGED:
        rows = [r for r in judged if r.verdict == verdict]
        decided = [latest[r.id] for r in rows if r.id in latest]
        defects = Counter(d.defect or "unnamed" for d in decided if d.decision == "DEFECT")
        out.append(ReviewOutcome(verdict, len(rows), sum(1 for d in decided if d.decision == "OK"),
                                 sum(1 for d in decided if d.decision == "DEFECT"), dict(defects)))
    return tuple(out)


def _worst(judged: Sequence[ResultRow], count: int, thumbnailer: Thumbnailer) -> tuple[WorstImage, ...]:
    from pathlib import Path

    scored = sorted((r for r in judged if r.score is not None), key=lambda r: (-float(r.score or 0.0), r.time))
    out = []
    for row in scored[:count]:
        if not row.path:
            out.append(WorstImage(row, None, "the image was not kept (the service keeps no upload)"))
        elif not Path(row.path).is_file():
            out.append(WorstImage(row, None, f"the image is no longer there ({row.path})"))
        else:
            thumb = thumbnailer(row)
            out.append(WorstImage(row, thumb if thumb.png is not None else None, thumb.note))
    return tuple(out)


def _zone(when: float, tz: dt.tzinfo | None) -> str:
    offset = dt.datetime.fromtimestamp(when, tz).astimezone(tz).strftime("%z")
    return f"UTC{offset[:3]}:{offset[3:]}" if offset else "UTC"


def shift_report(history: History, store: ModelStore, category: str, since: Time, until: Time,
                 kind: str | None = None, *, worst: int = WORST, thumbnailer: Thumbnailer | None = None,
                 bucket: Bucket | None = None, tz: dt.tzinfo | None = None,
                 shift_starts: Sequence[int] = DEFAULT_SHIFT_STARTS, now: Time | None = None) -> ShiftReport:
    """The report of ``category`` (``kind``: one model kind; None: all) for ``since <= time < until``.

    ``worst`` images with the highest raw scores get thumbnails from ``thumbnailer`` when their file exists
    (default: :func:`model_thumbnailer`, heatmaps of the version that judged them). ``bucket``: the trend per
    ``"hour"`` or ``"shift"`` (None: per hour up to :data:`HOURLY_UP_TO`, else per shift; shifts begin at
    ``shift_starts``). ``now``: the report's time stamp (default: now).

    Raises:
        ValueError: ``until`` is not after ``since``.
    """
    start, end = _epoch(since), _epoch(until)
    _check_range(start, end)
    rows = history.results(category=category, kind=kind, since=start, until=end, limit=None, newest_first=False)
    counts = Counter(r.verdict for r in rows)
    ordered = {v: counts[v] for v in VERDICT_ORDER if counts.get(v)}
    ordered.update({v: n for v, n in sorted(counts.items()) if v not in ordered})
    judged = [r for r in rows if r.verdict in JUDGED]
    latest = _latest_reviews(history, category, kind, start, {r.id for r in judged})
    chosen: Bucket = bucket or ("hour" if end - start <= HOURLY_UP_TO else "shift")
    trend = history.trends(chosen, category=category, kind=kind, since=start, until=end, tz=tz,
                           shift_starts=shift_starts)
    alarms = history.alarms(category=category, kind=kind, since=start, until=end, limit=None)
    made = dt.datetime.now(dt.UTC).timestamp() if now is None else _epoch(now)
    report = ShiftReport(
        category=category, kind=kind, since=start, until=end, generated=made, zone=_zone(start, tz),
        source=history.label, counts=ordered, trend=tuple(trend), bucket=chosen,
        promises=_promise_checks(store, category, judged, latest), alarms=tuple(reversed(alarms)),
        outcomes=_outcomes(judged, latest) if judged else (),
        worst=_worst(judged, worst, thumbnailer or model_thumbnailer(store)), tz=tz)
    logger.info("shift report %s: %d rows, %d judged, %d alarms", report.title, report.total, report.judged,
                len(report.alarms))
    return report


# -- rendering: shared words -----------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _defects(defects: dict[str, int]) -> str:
    return " · ".join(f"{name} {n}" for name, n in sorted(defects.items(), key=lambda kv: (-kv[1], kv[0]))) or "–"


def _meta(report: ShiftReport) -> str:
    return (f"{report.category} · model {report.kind or 'all kinds'} · {report.when(report.since)} to "
            f"{report.when(report.until)} ({report.zone}) · made {report.when(report.generated)} from "
            f"{report.source}")


def _trend_rows(report: ShiftReport) -> list[list[str]]:
    rows = []
    for b in report.trend:
        other = b.total - sum(b.counts.get(v, 0) for v in JUDGED)
        rows.append([b.label, str(b.total), *(str(b.counts.get(v, 0)) for v in JUDGED), str(other),
                     _pct(b.rate("DEFECT")), _pct(b.rate("REVIEW")), _num(b.score_median)])
    return rows


TREND_HEAD = ["from", "parts", "OK", "REVIEW", "DEFECT", "other", "DEFECT rate", "REVIEW rate", "median score"]
PROMISE_HEAD = ["model", "promised", "n", "bound", "parts", "flagged", "reviewed", "good among reviewed",
                "false alarms / goods seen", "at most", "status"]
OUTCOME_HEAD = ["model said", "parts", "reviewed", "confirmed OK", "confirmed DEFECT", "defect types"]
ALARM_HEAD = ["time", "model", "rule", "statistic", "limit", "message", "resolved"]
PROMISE_NOTE = ("Flagged: scored at or above the threshold the part was judged with (what the promise is about). "
                "False alarms: flagged parts a person confirmed OK; goods seen: parts not confirmed DEFECT. "
                "At most: the rate if every flagged part nobody reviewed were good.")


def _promise_rows(report: ShiftReport) -> list[list[str]]:
    return [[f"{c.kind} v{c.version}", _pct(c.promised), "–" if c.n is None else str(c.n), _pct(c.bound),
             str(c.judged), str(c.flagged), str(c.reviewed_flagged), _pct(c.good_share_of_flagged),
             f"{c.false_alarms} / {c.goods_seen} = {_pct(c.false_alarm_low)}", _pct(c.false_alarm_high), c.status]
            for c in report.promises]


def _outcome_rows(report: ShiftReport) -> list[list[str]]:
    return [[o.model_verdict, str(o.judged), str(o.reviewed), str(o.confirmed_ok), str(o.confirmed_defect),
             _defects(o.defects)] for o in report.outcomes]


def _alarm_rows(report: ShiftReport) -> list[list[str]]:
    return [[report.when(a.time), f"{a.kind}{'' if a.version is None else f' v{a.version}'}", a.rule,
             _num(a.statistic), _num(a.limit), a.message,
             "open" if a.resolved_time is None else f"{report.when(a.resolved_time)} by {a.resolved_by or '?'}"]
            for a in report.alarms]


def _caption(report: ShiftReport, item: WorstImage) -> list[str]:
    r = item.result
    model = f"{r.kind} v{r.version}" if r.kind else "–"
    return [r.name or r.ref, f"{r.verdict} · score {_num(r.score)} / threshold {_num(r.threshold)}",
            f"{report.when(r.time, seconds=True)} · {model} · {r.source}", item.note]


# -- HTML ------------------------------------------------------------------------------------------------------------

CSS = """
:root { --ok: #1b7f3b; --review: #c77700; --defect: #b3261e; --line: #d0d0d0; --muted: #5f6368; }
* { box-sizing: border-box; }
body { font: 13px/1.4 -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; color: #202124;
       margin: 24px auto; max-width: 1100px; padding: 0 16px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 22px 0 8px; border-bottom: 2px solid #202124; padding-bottom: 2px; }
.meta, .note { color: var(--muted); }
.empty { font-size: 16px; font-weight: 600; padding: 12px; border: 1px dashed var(--muted); }
.tiles { display: flex; flex-wrap: wrap; gap: 8px; }
.tile { border: 1px solid var(--line); border-left: 6px solid var(--muted); padding: 6px 12px; min-width: 120px; }
.tile .label { font-weight: 600; } .tile .n { font-size: 20px; font-weight: 700; } .tile .share { color: var(--muted); }
.tile.v-OK { border-left-color: var(--ok); } .tile.v-REVIEW { border-left-color: var(--review); }
.tile.v-DEFECT { border-left-color: var(--defect); }
table { border-collapse: collapse; width: 100%; margin: 4px 0; }
th, td { border: 1px solid var(--line); padding: 3px 6px; text-align: right; vertical-align: top; }
th { background: #f1f3f4; } td.text, th.text { text-align: left; }
.bar { display: flex; height: 10px; min-width: 120px; background: #eee; }
.bar span { display: block; height: 100%; } .bar .OK { background: var(--ok); }
.bar .REVIEW { background: var(--review); } .bar .DEFECT { background: var(--defect); }
.statement { margin: 2px 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: 10px; }
figure { margin: 0; border: 1px solid var(--line); padding: 6px; }
figure img { width: 100%; height: auto; display: block; image-rendering: auto; }
figure .missing { height: 90px; display: flex; align-items: center; justify-content: center; color: var(--muted);
                  background: #f6f6f6; text-align: center; padding: 6px; }
figcaption { font-size: 12px; } figcaption b { word-break: break-all; }
@page { size: A4; margin: 12mm; }
@media print {
  body { margin: 0; max-width: none; padding: 0; font-size: 10.5px; }
  h2 { break-after: avoid; page-break-after: avoid; }
  table, figure, .tile, section.keep { break-inside: avoid; page-break-inside: avoid; }
  .grid { grid-template-columns: repeat(4, 1fr); }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], text_columns: Sequence[int] = (0,),
           extra: Sequence[str] | None = None) -> str:
    def cell(tag: str, i: int, value: str) -> str:
        kind = ' class="text"' if i in text_columns else ""
        return f"<{tag}{kind}>{_e(value)}</{tag}>"

    header = "".join(cell("th", i, h) for i, h in enumerate(head)) + ("<th></th>" if extra is not None else "")
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row))
                   + (f"<td>{extra[n]}</td>" if extra is not None else "") + "</tr>" for n, row in enumerate(rows))
    return f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


def _bar(bucket: TrendBucket) -> str:
    if not bucket.total:
        return ""
    parts = "".join(f'<span class="{v}" style="width:{100 * bucket.rate(v):.2f}%"></span>' for v in JUDGED)
    return f'<div class="bar" title="OK / REVIEW / DEFECT">{parts}</div>'


def render_html(report: ShiftReport) -> str:
    """The report as one self-contained, printable HTML page (inline CSS, ``@media print``, images as base64
    PNG; no script, link or external asset)."""
    out = [f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(report.title)}</title>'
           f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body>',
           f'<header><h1>Shift report</h1><p class="meta">{_e(_meta(report))}</p></header>']
    out.append("<section><h2>Verdicts</h2>")
    if report.empty:
        out.append(f'<p class="empty">{_e(EMPTY)}</p>')
    if report.counts:
        tiles = "".join(f'<div class="tile v-{_e(v)}"><span class="label">{_e(v)}</span> <span class="n">{n}</span> '
                        f'<span class="share">{_pct(n / report.total)}</span></div>'
                        for v, n in report.counts.items())
        out.append(f'<div class="tiles">{tiles}</div><p class="note">{report.judged} part(s) judged, '
                   f'{report.total} row(s) in all (refused requests and images included).</p>')
    out.append("</section>")
    if not report.empty:
        out.append(f"<section><h2>Per {report.bucket}</h2>"
                   + _table(TREND_HEAD, _trend_rows(report), extra=[_bar(b) for b in report.trend]) + "</section>")
        out.append("<section><h2>The promise and what the reviews showed</h2>"
                   + _table(PROMISE_HEAD, _promise_rows(report), text_columns=(0, 10)))
        out.extend(f'<p class="statement"><b>{_e(c.kind)} v{c.version}:</b> {_e(c.statement)}</p>'
                   for c in report.promises)
        out.append(f'<p class="note">{_e(PROMISE_NOTE)}</p></section>')
    out.append("<section><h2>Drift alarms</h2>")
    out.append(_table(ALARM_HEAD, _alarm_rows(report), text_columns=(0, 1, 2, 5, 6)) if report.alarms
               else '<p class="note">No drift alarm in this range.</p>')
    out.append("</section>")
    if not report.empty:
        out.append("<section><h2>Review outcomes</h2>"
                   + _table(OUTCOME_HEAD, _outcome_rows(report), text_columns=(0, 5))
                   + '<p class="note">The latest decision on each part counts.</p></section>')
        figures = []
        for item in report.worst:
            if item.thumbnail is not None and item.thumbnail.png is not None:
                data = base64.b64encode(item.thumbnail.png).decode("ascii")
                picture = f'<img alt="{_e(item.result.name or item.result.ref)}" src="data:image/png;base64,{data}">'
            else:
                picture = '<div class="missing">no image</div>'
            name, verdict, when, note = _caption(report, item)
            figures.append(f"<figure>{picture}<figcaption><b>{_e(name)}</b><br>{_e(verdict)}<br>{_e(when)}<br>"
                           f'<span class="note">{_e(note)}</span></figcaption></figure>')
        out.append(f"<section><h2>Worst images (highest score)</h2><div class=\"grid\">{''.join(figures)}</div>"
                   "</section>")
    out.append("</body></html>\n")
    return "".join(out)


# -- PDF -------------------------------------------------------------------------------------------------------------


def render_pdf(report: ShiftReport) -> bytes:
    """The report as a PDF (A4, reportlab's built-in Helvetica: nothing is read or downloaded at run time)."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import Image as PdfImage
    from reportlab.platypus import KeepTogether, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    styles = getSampleStyleSheet()
    small = ParagraphStyle("small", parent=styles["BodyText"], fontSize=7.5, leading=9)
    note = ParagraphStyle("note", parent=small, textColor=colors.HexColor("#5f6368"))
    body = ParagraphStyle("body", parent=styles["BodyText"], fontSize=9, leading=11)
    buffer = io.BytesIO()
    margin = 12 * mm
    doc = SimpleDocTemplate(buffer, pagesize=A4, leftMargin=margin, rightMargin=margin, topMargin=margin,
                            bottomMargin=margin + 4 * mm, title=report.title, author="Inspector",
                            subject=f"shift report of {report.category}")
    width = A4[0] - 2 * margin

    def p(text: str, style: ParagraphStyle = small) -> Paragraph:
        return Paragraph(html.escape(text, quote=False), style)

    def table(head: Sequence[str], rows: Sequence[Sequence[str]], widths: Sequence[float] | None = None) -> Table:
        grid = Table([[p(h) for h in head], *[[p(v) for v in row] for row in rows]], repeatRows=1,
                     colWidths=None if widths is None else [w * width for w in widths])
        grid.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.4, colors.HexColor("#bdbdbd")),
                                  ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#f1f3f4")),
                                  ("VALIGN", (0, 0), (-1, -1), "TOP"),
                                  ("TOPPADDING", (0, 0), (-1, -1), 1.5), ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5)]))
        return grid

    story: list[Any] = [Paragraph("Shift report", styles["Title"]), p(_meta(report), note), Spacer(0, 4 * mm),
                   Paragraph("Verdicts", styles["Heading2"])]
    if report.empty:
        story.append(p(EMPTY, styles["Heading3"]))
    if report.counts:
        story.append(table(list(report.counts), [[f"{n} ({_pct(n / report.total)})" for n in report.counts.values()]]))
        story.append(p(f"{report.judged} part(s) judged, {report.total} row(s) in all (refused requests and images "
                       "included).", note))
    if not report.empty:
        story += [Paragraph(f"Per {report.bucket}", styles["Heading2"]), table(TREND_HEAD, _trend_rows(report))]
        story += [Paragraph("The promise and what the reviews showed", styles["Heading2"]),
                  table(PROMISE_HEAD, _promise_rows(report),
                        [0.1, 0.08, 0.05, 0.07, 0.06, 0.07, 0.08, 0.09, 0.15, 0.07, 0.18])]
        story += [p(f"{c.kind} v{c.version}: {c.statement}", body) for c in report.promises]
        story.append(p(PROMISE_NOTE, note))
    story.append(Paragraph("Drift alarms", styles["Heading2"]))
    story.append(table(ALARM_HEAD, _alarm_rows(report), [0.13, 0.1, 0.07, 0.08, 0.07, 0.37, 0.18]) if report.alarms
                 else p("No drift alarm in this range.", note))
    if not report.empty:
        story += [Paragraph("Review outcomes", styles["Heading2"]),
                  table(OUTCOME_HEAD, _outcome_rows(report), [0.14, 0.1, 0.1, 0.13, 0.15, 0.38]),
                  p("The latest decision on each part counts.", note)]
        per_row, cell = 4, width / 4
        cells = []
        for item in report.worst:
            side = cell - 4 * mm
            parts: list[Any] = []
            if item.thumbnail is not None and item.thumbnail.png is not None:
                w, h = Image.open(io.BytesIO(item.thumbnail.png)).size
                scale = side / max(w, h)
                parts.append(PdfImage(io.BytesIO(item.thumbnail.png), width=w * scale, height=h * scale))
            else:
                parts.append(p("no image", note))
            name, verdict, when, remark = _caption(report, item)
            parts += [p(name, body), p(verdict), p(when), p(remark, note)]
            cells.append(parts)
        if cells:
            rows = [cells[i:i + per_row] + [[]] * (per_row - len(cells[i:i + per_row]))
                    for i in range(0, len(cells), per_row)]
            grid = Table(rows, colWidths=[cell] * per_row)
            grid.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP")]))
            story.append(KeepTogether([Paragraph("Worst images (highest score)", styles["Heading2"]), grid]))

    def footer(canvas: Any, document: Any) -> None:
        canvas.saveState()
        canvas.setFont("Helvetica", 7.5)
        canvas.setFillColor(colors.HexColor("#5f6368"))
        canvas.drawString(margin, 8 * mm, f"{report.title} · page {document.page}")
        canvas.restoreState()

    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return buffer.getvalue()
