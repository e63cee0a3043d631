"""Line: what the line sees — the results of the inspection service and the watch folder from the results database
(core.store.history), filtered; trends per hour and shift; the drift watch and its answer, *Recalibrate from the
line*; what was refused."""

import time
from pathlib import Path
from typing import Literal

import pandas as pd
import streamlit as st

from core.access import Permission
from core.data.imageio import ImageLoadError
from core.line import results_log as line_log
from core.models.registry import label
from core.portable import DEFECT, NO_VERDICT, OK, REVIEW
from core.store import lifecycle
from core.store.history import History, ResultRow
from core.store.model_store import ModelNotFound, ModelRef, ModelStoreError
from core.verdict import drift_status as drift
from core.verdict.overlay import overlay
from core.verdict.review import confirmed_good
from ui import auth, cache, charts
from ui.display import display_image
from ui.frame import selection

REJECTED = "REJECTED"
VERDICTS = (OK, REVIEW, DEFECT, NO_VERDICT, REJECTED)
BADGES = {OK: ":green[OK]", REVIEW: ":orange[REVIEW]", DEFECT: ":red[DEFECT]"}
ALL = "all"
RANGES = {"Last hour": 3600.0, "Last 8 hours": 8 * 3600.0, "Last 24 hours": 86400.0, "Last 7 days": 7 * 86400.0,
          "Everything": None}
TABLE_ROWS = 500

sel = selection()
st.title("Line")
log_path = line_log.default_path(sel.settings.model_store)
history = cache.line_history(sel.settings.model_store, log_path)
st.caption(f"Results of `python -m core serve` and `python -m core watch` from the results database "
           f"(`{history.label}`; JSONL line log `{log_path}` imported). The page refreshes every few seconds.")

# -- filters -------------------------------------------------------------------------------------------------------
categories = sorted(set(sel.store.trained_names()) | ({sel.category} if sel.category else set()))
f1, f2, f3, f4, f5 = st.columns([2, 2, 1, 3, 2])
category = f1.selectbox("Category", [ALL, *categories], key="line_category",
                        index=1 + categories.index(sel.category) if sel.category in categories else 0)
kinds = sorted({sel.kind, *sel.trained_kinds})
kind = f2.selectbox("Model", [ALL, *kinds], key="line_kind", index=1 + kinds.index(sel.kind),
                    format_func=lambda k: k if k == ALL else label(k))
numbers = (sel.store.version_numbers(category, kind) if ALL not in (category, kind)
           and sel.store.has_model(category, kind) else [])
version = f3.selectbox("Version", [ALL, *map(str, numbers)], key="line_version")
verdicts = f4.multiselect("Verdict", [v for v in VERDICTS if v != REJECTED], default=[OK, REVIEW, DEFECT],
                          key="line_verdicts")
span = f5.selectbox("Time", list(RANGES), index=2, key="line_range")
flt_category = None if category == ALL else str(category)
flt_kind = str(kind) if kind != ALL else None
flt_version = None if version == ALL else int(version)


def since() -> float | None:
    window = RANGES[span]
    return None if window is None else time.time() - window


def current_ref() -> ModelRef | None:
    """The current version of the chosen category and model (the one the drift watch and recalibration act on)."""
    if flt_category is None or flt_kind is None:
        return None
    try:
        return sel.store.current(flt_category, flt_kind)
    except ModelNotFound:
        return None


def frame_of(rows: list[ResultRow]) -> pd.DataFrame:
    frame = pd.DataFrame([{"time": r.time, "source": r.source, "category": r.category, "name": r.name,
                           "verdict": r.verdict, "score": r.score, "threshold": r.threshold, "model": r.kind,
                           "version": r.version, "latency_ms": r.latency_ms, "reason": r.reason,
                           "status": r.status, "path": r.path} for r in rows])
    if not frame.empty:
        frame["time"] = pd.to_datetime(frame["time"], unit="s")
    return frame


def thumbnails(frame: pd.DataFrame, count: int = 6) -> None:
    """The last judged images kept on disk (the watch folder's, the service's REVIEW and DEFECT uploads), with the
    heatmap of the model version that judged them."""
    judged = frame[frame["verdict"].isin([OK, REVIEW, DEFECT])]
    kept = judged[judged["path"].map(lambda p: isinstance(p, str) and Path(p).is_file())].head(count)
    if kept.empty:
        return
    columns = st.columns(len(kept))
    for col, (_, row) in zip(columns, kept.iterrows(), strict=True):
        badge = BADGES.get(row["verdict"], str(row["verdict"]))
        try:
            ref = sel.store.ref(row["category"], row["model"], int(row["version"]))
            model = cache.load_model(ref)
            image = cache.image_from_path(str(row["path"]))
            _, amap, _ = cache.predict_one(ref, "fast", image)
            col.image(overlay(display_image(image), amap, model.calibration), width="stretch")
        except (ModelStoreError, ImageLoadError, ValueError) as exc:
            col.caption(f"(no preview: {exc})")
        col.markdown(f"**{badge}** · {row['name']}  \n{row['score']:.4g} / {row['threshold']:.4g}")


# -- drift watch ---------------------------------------------------------------------------------------------------


@st.fragment(run_every=3.0)
def drift_banner() -> None:
    """The drift watch of the chosen model's current version: the alarm banner with the reading."""
    ref = current_ref()
    if ref is None:
        st.caption("Drift watch: choose one category and one model.")
        return
    status = drift.drift_status_for(history, ref, lifecycle.read_calibration(ref))
    if status.alarm:
        since_text = ("" if status.open_alarm is None else
                      f" (alarm raised {time.strftime('%Y-%m-%d %H:%M', time.localtime(status.open_alarm.time))})")
        st.error(f"**Drift alarm** on {ref.label}{since_text}: {status.message}. If the parts are still good, "
                 "confirm some in the review queue and recalibrate from the line.", icon=":material/warning:")
    else:
        st.caption(f"Drift watch of {ref.label}: {status.message}.")


def recalibrate_section() -> None:
    """*Recalibrate from the line*: thresholds fitted again from the last images confirmed good."""
    done = st.session_state.pop("line_recalibrated", None)
    if done:
        st.success(done, icon=":material/check:")
    ref = current_ref()
    if ref is None:
        return
    confirmed = len(confirmed_good(history, ref.category, ref.kind, drift.RECALIBRATE_FROM))
    enough = confirmed >= drift.MIN_CONFIRMED
    label = (f"Recalibrate from the line (the last {drift.RECALIBRATE_FROM} images confirmed good on the Review page)"
             if enough else f"Recalibrate from the line: {confirmed} of {drift.MIN_CONFIRMED} images confirmed good "
             "so far (confirm OK parts on the Review page)")
    if st.button(label, key="line_recalibrate", disabled=not enough or not auth.can(Permission.THRESHOLDS),
                 help=auth.only_for(Permission.THRESHOLDS) or
                 "A new version whose thresholds come from line images a person confirmed OK; the drift alarm is "
                 "resolved. Undo: make the previous version current on the Models page."):
        user = auth.require(Permission.THRESHOLDS)
        model = cache.load_model(ref)
        try:
            outcome = drift.recalibrate_from_history(history, model,
                                                     lambda images: cache.predictions(ref, "fast", list(images)),
                                                     by=user.name)
        except ValueError as exc:
            st.error(f"Not recalibrated: {exc}.", icon=":material/block:")
            return
        st.session_state["line_recalibrated"] = f"Recalibrated from the line: {outcome.describe()}."
        st.rerun()


# -- results, trends, refused --------------------------------------------------------------------------------------


def trends(chosen: History) -> None:
    """Verdict rates (REVIEW included), score median and the drift CUSUM per hour and per shift."""
    hour_tab, shift_tab = st.tabs(["Per hour", "Per shift"])
    with hour_tab:
        trend_table(chosen, "hour")
    with shift_tab:
        trend_table(chosen, "shift")


def trend_table(chosen: History, bucket: Literal["hour", "shift"]) -> None:
    found = chosen.trends(bucket, category=flt_category, kind=flt_kind, version=flt_version, since=since())
    if not found:
        st.caption("Nothing judged in this time range.")
        return
    ref = current_ref()
    cusum = (drift.drift_trend(chosen, ref, lifecycle.read_calibration(ref), found) if ref is not None
             else [None] * len(found))
    table = pd.DataFrame({"bucket": [b.label for b in found], "images": [b.total for b in found],
                          **{f"{v} rate": [b.rate(v) for b in found] for v in (OK, REVIEW, DEFECT)},
                          "score median": [b.score_median for b in found], "drift CUSUM": cusum})
    if bucket == "hour":
        per_hour = pd.DataFrame([{"hour": pd.to_datetime(b.label), "verdict": v, "images": n}
                                 for b in found for v, n in b.counts.items()])
        st.plotly_chart(charts.counts_per_hour(per_hour), width="stretch", key="line_per_hour")
    st.caption("Drift CUSUM: the drift watch of the current version at the end of each "
               f"{bucket} (empty where it judged nothing), in calibration spreads.")
    st.dataframe(table, hide_index=True, width="stretch", key=f"line_trend_{bucket}",
                 column_config={f"{v} rate": st.column_config.NumberColumn(format="percent")
                                for v in (OK, REVIEW, DEFECT)})


@st.fragment(run_every=3.0)
def live() -> None:
    chosen = cache.line_history(sel.settings.model_store, log_path)
    rows = chosen.results(category=flt_category, kind=flt_kind, version=flt_version,
                          verdict=verdicts or list(VERDICTS[:-1]), since=since(), limit=TABLE_ROWS)
    refused = chosen.results(verdict=REJECTED, since=since(), limit=TABLE_ROWS)
    if not rows and not refused:
        st.info(f"Nothing judged in this range. Start the service (`python -m core serve --store {sel.store.root}`) "
                f"or a watch folder (`python -m core watch --store {sel.store.root} --category C --in DIR --ok DIR "
                "--defect DIR`) and send images.")
        return
    shown = frame_of(rows)
    judged = shown[shown["verdict"].isin([OK, REVIEW, DEFECT])] if len(shown) else shown
    lat = judged["latency_ms"].dropna() if len(judged) else pd.Series(dtype=float)
    c1, c2, c3, c4, c5, c6 = st.columns(6)
    c1.metric(f"Images (last {TABLE_ROWS})", len(shown))
    c2.metric("DEFECT / REVIEW rate", f"{(judged['verdict'] == DEFECT).mean():.1%} / "
              f"{(judged['verdict'] == REVIEW).mean():.1%}" if len(judged) else "–")
    c3.metric("Latency p50", f"{lat.quantile(0.5):.0f} ms" if len(lat) else "–")
    c4.metric("Latency p95", f"{lat.quantile(0.95):.0f} ms" if len(lat) else "–")
    newest = max([r.time for r in rows[:1] + refused[:1]])
    c5.metric("Last image", f"{time.time() - newest:.0f} s ago")
    c6.metric(f"Rejected (last {TABLE_ROWS})", len(refused))
    if len(shown):
        trends(chosen)
        thumbnails(shown)
        st.subheader("Results")
        columns = ["time", "source", "category", "name", "verdict", "score", "threshold", "model", "version",
                   "latency_ms", "reason", "path"]
        st.dataframe(shown[columns], hide_index=True, width="stretch", key="line_results",
                     column_config={"score": st.column_config.NumberColumn(format="%.4f"),
                                    "latency_ms": st.column_config.NumberColumn("latency ms", format="%.0f")})
    rejected(frame_of(refused))


def rejected(frame: pd.DataFrame) -> None:
    """What the service refused (requests: not an image, too large, unknown category or model...) and the files
    the watch folder rejected, with the reason; every category, since a request can name one that does not
    exist."""
    st.subheader("Rejected")
    if frame.empty:
        st.caption("Nothing rejected.")
        return
    st.caption("Requests and images the service or a watch folder refused, newest first, all categories. "
               "The service keeps no image; the watch folder keeps the file in its rejected folder (path).")
    out = frame.reindex(columns=["time", "source", "category", "name", "status", "reason", "path"])
    out["status"] = out["status"].map(lambda v: "" if pd.isna(v) else str(int(v)))
    st.dataframe(out, hide_index=True, width="stretch", key="line_rejected",
                 column_config={"status": st.column_config.TextColumn("HTTP status"),
                                "reason": st.column_config.TextColumn(width="large")})


st.subheader("Drift watch")
drift_banner()
recalibrate_section()
live()

# -- final section: the shift report ---------------------------------------------------------------------------
from ui import report_view  # noqa: E402  (the shift report keeps to this one block at the end of the page)

report_view.shift_report_section(sel.store, sel.category, sel.trained_kinds)
