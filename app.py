"""Inspection dashboard: ``streamlit run app.py``.

The page scripts live in ``views/``, not ``pages/``: Streamlit treats a ``pages/`` folder beside the main
script as a legacy (v1) multipage app and then bypasses ``st.navigation``, losing our titles, icons and order.
"""

import streamlit as st

from ui import visits

st.set_page_config(page_title="Inspector · visual anomaly detection", page_icon="🔎", layout="wide")

pages = [
    st.Page("views/models.py", title="Models", icon=":material/model_training:", default=True),
    st.Page("views/inspect.py", title="Inspect", icon=":material/search:"),
    st.Page("views/thresholds.py", title="Thresholds", icon=":material/tune:"),
    st.Page("views/compare.py", title="Compare", icon=":material/compare:"),
    st.Page("views/similar.py", title="Similar", icon=":material/image_search:"),
    st.Page("views/annotate.py", title="Annotate", icon=":material/draw:"),
]
page = st.navigation(pages)
visits.track(page.url_path)
page.run()
