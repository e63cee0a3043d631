"""The Line page's "Shift report" section: a date/time range (default: the current shift) and two downloads, HTML
and PDF, of :mod:`core.line.report`. The report is made when a download button is clicked (Streamlit's deferred
download data, on its own thread), so drawing the page costs nothing."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence

import streamlit as st

from core.line import report
from core.line import results_log as line_log
from core.store.history import History
from core.store.model_store import ModelStore

logger = logging.getLogger(__name__)

ALL_KINDS = "all kinds"


def make_report(store: ModelStore, category: str, since: float, until: float,
                kind: str | None) -> report.ShiftReport:
    """The shift report of ``category`` for ``since <= time < until`` (epoch s) from the store's history, with
    heatmap thumbnails of the worst images."""
    with History.open(store.root, line_log=line_log.default_path(store.root)) as history:
        return report.shift_report(history, store, category, since, until, kind=kind,
                                   thumbnailer=report.model_thumbnailer(store))


def report_file(store: ModelStore, category: str, since: float, until: float, kind: str | None,
                fmt: str) -> Callable[[], bytes]:
    """A callable making the report as ``fmt`` (``html`` or ``pdf``) bytes, for ``st.download_button``'s data."""
    render: dict[str, Callable[[report.ShiftReport], bytes]] = {
        "html": lambda made: report.render_html(made).encode("utf-8"),
        "pdf": report.render_pdf,
    }
    if fmt not in render:
        raise ValueError(f"expected a report format of {' or '.join(render)}, found {fmt!r}")

    def make() -> bytes:
        made = make_report(store, category, since, until, kind)
        logger.info("shift report %s downloaded as %s", made.title, fmt)
        return render[fmt](made)

    return make


def _moment(day: object, at: object) -> dt.datetime | None:
    if isinstance(day, dt.date) and isinstance(at, dt.time):
        return dt.datetime.combine(day, at)
    return None


def shift_report_section(store: ModelStore, category: str | None, kinds: Sequence[str]) -> None:
    """Draw the section: range inputs, model kind, and the HTML and PDF download buttons."""
    st.subheader("Shift report")
    if category is None:
        st.info("Choose a category in the sidebar to make its shift report.")
        return
    start, end = (dt.datetime.fromtimestamp(t) for t in report.current_shift())
    st.caption("Counts per verdict, the calibration's promise against what the reviews showed, drift alarms, "
               "review outcomes and the worst images with their heatmaps, for one category and time range "
               f"(the server's local time; default: the current shift). Also: `python -m core report --category "
               f"{category} --out shift.pdf`.")
    c1, c2, c3, c4, c5 = st.columns(5)
    day_from = c1.date_input("From", value=start.date(), key="shift_report_from_day")
    time_from = c2.time_input("at", value=start.time(), key="shift_report_from_time")
    day_to = c3.date_input("To", value=end.date(), key="shift_report_to_day")
    time_to = c4.time_input("at ", value=end.time(), key="shift_report_to_time")
    kind = c5.selectbox("Model", [ALL_KINDS, *kinds], key="shift_report_kind")
    begin, finish = _moment(day_from, time_from), _moment(day_to, time_to)
    if begin is None or finish is None:
        st.warning("Choose a start and an end.")
        return
    if finish <= begin:
        st.error(f"Expected the end after the start, found {begin:%Y-%m-%d %H:%M} to {finish:%Y-%m-%d %H:%M}.")
        return
    since, until = begin.timestamp(), finish.timestamp()
    chosen = str(kind) if kind != ALL_KINDS else None
    name = f"shift-report-{category}-{begin:%Y%m%d-%H%M}"
    b1, b2 = st.columns(2)
    b1.download_button("Download HTML", data=report_file(store, category, since, until, chosen, "html"),
                       file_name=f"{name}.html", mime="text/html", on_click="ignore", key="shift_report_html",
                       icon=":material/download:")
    b2.download_button("Download PDF", data=report_file(store, category, since, until, chosen, "pdf"),
                       file_name=f"{name}.pdf", mime="application/pdf", on_click="ignore", key="shift_report_pdf",
                       icon=":material/picture_as_pdf:")
