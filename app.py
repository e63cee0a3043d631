"""Inspection dashboard: ``streamlit run app.py``.

This script is the frame every page runs in (``ui/frame.py``): page config, navigation with the titles, icons
and order listed there (the page scripts live in ``pages/``; ``st.navigation`` replaces Streamlit's folder
discovery), the sidebar selection drawn once per run, then the page. Pages read the selection with
``ui.frame.selection()``.
"""

from ui import frame

frame.run()
