"""Which page the browser session is on, so a page can tell a fresh visit from a rerun within it.

Streamlit forgets a widget's value when its page is left, but not the page's own session keys; a page that
must start every visit from saved data (Thresholds) asks :func:`is_new_visit` instead of guessing.
"""

from __future__ import annotations

import streamlit as st

_CURRENT = "_visit_page"
_NEW = "_visit_new"


def track(page_id: str) -> None:
    """Called by the frame (app.py) once per run, before the page runs."""
    st.session_state[_NEW] = st.session_state.get(_CURRENT) != page_id
    st.session_state[_CURRENT] = page_id


def is_new_visit() -> bool:
    """True on the first run of a page after arriving from another page (or on the session's first run)."""
    return bool(st.session_state.get(_NEW, True))
