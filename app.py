"""Inspection dashboard: ``streamlit run app.py``."""

import streamlit as st

st.set_page_config(page_title="Inspector · visual anomaly detection", page_icon="🔎", layout="wide")

pages = [
    st.Page("pages/models.py", title="Models", icon=":material/model_training:", default=True),
    st.Page("pages/inspect.py", title="Inspect", icon=":material/search:"),
    st.Page("pages/thresholds.py", title="Thresholds", icon=":material/tune:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare:"),
    st.Page("pages/similar.py", title="Similar", icon=":material/image_search:"),
    st.Page("pages/annotate.py", title="Annotate", icon=":material/draw:"),
]
st.navigation(pages).run()
