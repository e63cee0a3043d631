"""Streamlit glue: settings, caching, the shared sidebar, background jobs and plotly figures."""
