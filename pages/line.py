"""Line: what the line sees — the live results of the inspection service and the watch folder."""

import time
from pathlib import Path

import pandas as pd
import streamlit as st

from core.data.imageio import ImageLoadError
from core.line import results_log as line_log
from core.store.model_store import ModelStoreError
from core.verdict.overlay import overlay
from ui import cache, charts
from ui.display import display_image
from ui.frame import selection

sel = selection()
st.title("Line")
path = line_log.default_path(sel.settings.model_store)
st.caption(f"Results of `python -m core serve` and `python -m core watch` as they arrive (log: `{path}`). "
           "The page refreshes every few seconds.")


def thumbnails(frame: pd.DataFrame, count: int = 6) -> None:
    """The last images the watch folder kept on disk, with the heatmap of the model version that judged them
    (the service does not keep uploads: its images are in the table only)."""
    if "path" not in frame:
        return
    judged = frame[frame["verdict"].isin(["OK", "REVIEW", "DEFECT"])]
    kept = judged[judged["path"].map(lambda p: isinstance(p, str) and Path(p).is_file())].tail(count).iloc[::-1]
    if kept.empty:
        return
    columns = st.columns(len(kept))
    for col, (_, row) in zip(columns, kept.iterrows(), strict=True):
        badge = {"OK": ":green[OK]", "REVIEW": ":orange[REVIEW]", "DEFECT": ":red[DEFECT]"}.get(row["verdict"],
                                                                                              str(row["verdict"]))
        try:
            ref = sel.store.ref(row["category"], row["model"], int(row["version"]))
            model = cache.load_model(ref)
            image = cache.image_from_path(str(row["path"]))
            _, amap, _ = cache.predict_one(ref, "fast", image)
            col.image(overlay(display_image(image), amap, model.calibration), width="stretch")
        except (ModelStoreError, ImageLoadError, ValueError) as exc:
            col.caption(f"(no preview: {exc})")
        col.markdown(f"**{badge}** · {row['name']}  \n{row['score']:.4g} / {row['threshold']:.4g}")


@st.fragment(run_every=3.0)
def live() -> None:
    records = line_log.tail(path, 5000)
    if not records:
        st.info("Nothing judged yet. Start the service (`python -m core serve --store models`) or a watch folder "
                "(`python -m core watch --category C --in DIR --ok DIR --defect DIR`) and send images.")
        return
    everything = pd.DataFrame(records)
    everything["time"] = pd.to_datetime(everything["time"], unit="s")
    refused = everything["verdict"] == "REJECTED" if "verdict" in everything else everything["time"].isna()
    frame = everything[~refused]
    categories = sorted(frame["category"].dropna().unique()) if "category" in frame else []
    shown = frame[frame["category"] == sel.category] if sel.category in categories else frame
    recent = shown.tail(500)
    judged = recent[recent["verdict"].isin(["OK", "REVIEW", "DEFECT"])]
    lat = judged["latency_ms"].dropna() if "latency_ms" in judged else pd.Series(dtype=float)
    c1, c2, c3, c4, c5, c6 = st.columns(6)
    c1.metric("Images (last 500)", len(recent))
    c2.metric("DEFECT / REVIEW rate", f"{(judged['verdict'] == 'DEFECT').mean():.1%} / "
              f"{(judged['verdict'] == 'REVIEW').mean():.1%}" if len(judged) else "–")
    c3.metric("Latency p50", f"{lat.quantile(0.5):.0f} ms" if len(lat) else "–")
    c4.metric("Latency p95", f"{lat.quantile(0.95):.0f} ms" if len(lat) else "–")
    age = time.time() - everything["time"].iloc[-1].timestamp()
    c5.metric("Last image", f"{age:.0f} s ago")
    c6.metric("Rejected (last 500)", int(refused.tail(500).sum()))
    per_hour = (shown.assign(hour=shown["time"].dt.floor("h")).groupby(["hour", "verdict"]).size()
                .rename("images").reset_index())
    if len(shown):
        st.plotly_chart(charts.counts_per_hour(per_hour), width="stretch")
        thumbnails(shown)
        st.subheader("Last images")
        columns = [c for c in ("time", "source", "category", "name", "verdict", "score", "threshold", "model",
                               "version", "latency_ms", "reason", "path") if c in shown]
        st.dataframe(shown[columns].iloc[::-1].head(50), hide_index=True, width="stretch",
                     column_config={"score": st.column_config.NumberColumn(format="%.4f"),
                                    "latency_ms": st.column_config.NumberColumn("latency ms", format="%.0f")})
    rejected(everything[refused])


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
    st.dataframe(out.iloc[::-1].head(50), hide_index=True, width="stretch",
                 column_config={"status": st.column_config.TextColumn("HTTP status"),
                                "reason": st.column_config.TextColumn(width="large")})


live()

from ui import report_view  # noqa: E402  (the shift report keeps to this one block at the end of the page)

report_view.shift_report_section(sel.store, sel.category, sel.trained_kinds)
