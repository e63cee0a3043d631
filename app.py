"""Inspection dashboard: ``streamlit run app.py`` (or any ASGI server: ``uvicorn app:app``).

``streamlit run`` finds the ``app`` below and serves it: a Streamlit app whose script is ``ui/main.py``, the
frame every page runs in (``ui/frame.py``: page config, navigation with the titles, icons and order listed there,
the sidebar selection drawn once per run, then the page).

Why the script is not this file: Streamlit treats a ``pages/`` folder beside the script it runs as a legacy
multipage app and, for the first script run of every server process, showed its auto-discovered menu (lowercase
file names, ``app`` first) until the frame's own navigation replaced it seconds later. ``ui/`` has no ``pages/``
folder, so the first page a browser gets already has the real navigation.

Run as a script itself (``AppTest.from_string`` of this file, as the tests do), it draws the same frame.
"""

from pathlib import Path

from streamlit.runtime.scriptrunner import get_script_run_ctx

if get_script_run_ctx(suppress_warning=True) is None:  # imported by the server (streamlit run / uvicorn): serve the frame's script
    import streamlit as st

    app = st.App(Path(__file__).resolve().parent / "ui" / "main.py")
else:  # a script run of this file
    from ui import frame

    frame.run()
