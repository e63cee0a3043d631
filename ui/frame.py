"""The frame every page runs in: page config, navigation (titles, icons, order, deep links), the sidebar
selection drawn once per run, and visit tracking. ``app.py`` calls :func:`run`; pages call
:func:`selection` and never draw the sidebar themselves.

One Streamlit quirk is handled here: when a ``pages/`` folder sits beside the entry script, Streamlit runs
the very first script run of a server process (and every AppTest run of app.py in place) in its legacy
multipage mode, which executes the page script directly, without the entry script. :func:`selection` notices
that the frame did not run (a thread-local set only while :func:`run` runs the page), registers the navigation
(which ends legacy mode for the process) and reruns at once, so a cold-start deep link (``/thresholds``) is
drawn by the frame like any other run, before any widget of the page exists.
"""

from __future__ import annotations

import threading
from pathlib import Path

import streamlit as st

from ui import sidebar, visits
from ui.sidebar import Selection

PAGES: tuple[tuple[str, str, str], ...] = (
    ("pages/models.py", "Models", ":material/model_training:"),
    ("pages/inspect.py", "Inspect", ":material/search:"),
    ("pages/thresholds.py", "Thresholds", ":material/tune:"),
    ("pages/compare.py", "Compare", ":material/compare:"),
    ("pages/similar.py", "Similar", ":material/image_search:"),
    ("pages/annotate.py", "Annotate", ":material/draw:"),
    ("pages/line.py", "Line", ":material/factory:"),
)
ROOT = Path(__file__).resolve().parents[1]  # page paths are absolute: the frame runs from any entry script
_RUN = threading.local()  # the selection of the run in progress on this script thread


def _navigate() -> st.Page:
    st.set_page_config(page_title="Inspector · visual anomaly detection", page_icon="🔎", layout="wide")
    pages = [st.Page(str(ROOT / path), title=title, icon=icon, default=i == 0)
             for i, (path, title, icon) in enumerate(PAGES)]
    return st.navigation(pages)


def run() -> None:
    """The whole frame: config, navigation, sidebar (once), visit tracking, then the chosen page."""
    page = _navigate()
    _RUN.selection = sidebar.draw()
    visits.track(page.url_path)
    try:
        page.run()
    finally:
        _RUN.selection = None


def selection() -> Selection:
    """The sidebar selection of this run (drawing the frame here if Streamlit ran the page without it)."""
    sel = getattr(_RUN, "selection", None)
    if sel is None:  # the page runs without the frame (legacy mode, see the module docstring)
        _navigate()
        st.rerun()
    return sel
