"""The frame every page runs in: page config, navigation (titles, icons, order, deep links), the sidebar
selection drawn once per run, and visit tracking. The server's script (``ui/main.py``, served by ``app.py``) calls
:func:`run`; pages call :func:`selection` and never draw the sidebar themselves.

The navigation is registered before anything heavy is imported (the sidebar pulls in torch and anomalib, 5-15 s
on a cold process), so the first page of a fresh server shows the real menu at once and a spinner below it.

One Streamlit quirk is still handled here: when the script Streamlit runs has a ``pages/`` folder beside it
(``AppTest.from_file("app.py")``; the server's script sits in ``ui/`` so that it never does), Streamlit runs the
first script run of the process in its legacy multipage mode, which executes the page script directly, without
the frame. :func:`selection` notices that the frame did not run (a thread-local set only while :func:`run` runs
the page), registers the navigation (which ends legacy mode for the process) and reruns at once, so the page is
drawn by the frame like any other run, before any widget of the page exists.
"""

from __future__ import annotations

import importlib
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

if TYPE_CHECKING:
    from ui.sidebar import Selection

PAGES: tuple[tuple[str, str, str], ...] = (
    ("pages/models.py", "Models", ":material/model_training:"),
    ("pages/inspect.py", "Inspect", ":material/search:"),
    ("pages/thresholds.py", "Thresholds", ":material/tune:"),
    ("pages/compare.py", "Compare", ":material/compare:"),
    ("pages/similar.py", "Similar", ":material/image_search:"),
    ("pages/annotate.py", "Annotate", ":material/draw:"),
    ("pages/line.py", "Line", ":material/factory:"),
    ("pages/review.py", "Review", ":material/rule:"),
)
ROOT = Path(__file__).resolve().parents[1]  # page paths are absolute: the frame runs from any entry script
_RUN = threading.local()  # the selection of the run in progress on this script thread


def _navigate(menu: bool = True) -> st.Page:
    st.set_page_config(page_title="Inspector · visual anomaly detection", page_icon="🔎", layout="wide")
    pages = [st.Page(str(ROOT / path), title=title, icon=icon, default=i == 0)
             for i, (path, title, icon) in enumerate(PAGES)]
    return st.navigation(pages, position="sidebar" if menu else "hidden")


_LOGGING: list[bool] = []  # configured in this process (the frame module lives as long as the server)


def _configure_logging() -> None:
    """The dashboard's process logs as the CLI and the service do (INSPECT_LOG_LEVEL, INSPECT_LOG_JSON), once."""
    if not _LOGGING:
        from core import logs, settings

        logs.configure(settings.log_level(), settings.log_json())
        _LOGGING.append(True)


def run() -> None:
    """The whole frame: the login gate, config, navigation, sidebar (once), visit tracking, then the chosen page."""
    from ui import auth

    _configure_logging()

    gate = auth.check()  # nobody signed in: no menu and no page, only the sign-in (or the refusal)
    page = _navigate(menu=gate.user is not None)  # first: the menu reaches the browser before the heavy imports
    if gate.user is None:
        auth.draw_gate(gate)
        return
    if "ui.sidebar" not in sys.modules:  # the first run of this process
        with st.spinner("Starting up: loading the model code…"):
            importlib.import_module("ui.sidebar")
    from ui import sidebar, visits

    _RUN.selection = sidebar.draw()
    auth.draw_account(gate.user)
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
