"""Inspect: upload images or pick test images; heatmaps, scores and verdicts."""

from pathlib import Path

import pandas as pd
import streamlit as st

from core.imageio import SUPPORTED_SUFFIXES
from core.overlay import COLORMAPS, png_bytes
from ui import cache
from ui.inspect_view import ImageLoadError, decode_upload, display_image, render_overlay, score_image
from ui.sidebar import require_model, sidebar

sel = sidebar()
st.title("Inspect")
model = require_model(sel)
cal = model.calibration

left, right = st.columns([2, 1])
with left:
    uploads = st.file_uploader("Drop images here (PNG, JPEG, BMP, TIFF)", accept_multiple_files=True,
                               type=[s.lstrip(".") for s in SUPPORTED_SUFFIXES])
    data = cache.category_data(str(sel.data_root), sel.category, cache.data_version(str(sel.data_root), sel.category))
    choices = {f"{s.defect}/{s.path.name}": str(s.path) for s in data.test}
    picked = st.multiselect("…or pick test images of this category", list(choices), max_selections=24)
with right:
    opacity = st.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05)
    cmap = st.selectbox("Colormap", COLORMAPS)
    show_contour = st.toggle("Outline predicted defect", value=True)
    st.caption(f"Image threshold **{cal.image_threshold:.4g}** · pixel threshold **{cal.pixel_threshold:.4g}** "
               f"({'set on Thresholds page' if cal.chosen_by == 'user' else 'default from held-out good images'})")

items = []
for up in uploads or []:
    try:
        items.append((up.name, decode_upload(up.name, up.getvalue())))
    except ImageLoadError as exc:
        st.error(f"Skipped {exc.source}: {exc.reason}")
for label in picked:
    try:
        items.append((label, cache.image_from_path(choices[label])))
    except ImageLoadError as exc:
        st.error(f"Skipped {exc.source}: {exc.reason}")

if not items:
    st.info("Upload or pick images to see heatmaps, scores and verdicts.")
    st.stop()

results = []
progress = st.progress(0.0, text="Scoring…") if len(items) > 3 else None
for i, (name, image) in enumerate(items):
    results.append(score_image(sel, name, image, cal))
    if progress:
        progress.progress((i + 1) / len(items), text=f"Scoring {i + 1}/{len(items)}")
if progress:
    progress.empty()

table = pd.DataFrame([{"image": r.name, "score": r.score, "verdict": r.verdict,
                       "score / threshold": r.score / cal.image_threshold if cal.image_threshold else float("nan"),
                       "height": r.image.shape[0], "width": r.image.shape[1], "latency ms": round(r.latency_ms, 1)}
                      for r in results])
n_defect = int((table["verdict"] == "DEFECT").sum())
m1, m2, m3 = st.columns(3)
m1.metric("Images", len(results))
m2.metric("Flagged DEFECT", n_defect)
m3.metric("Median latency", f"{table['latency ms'].median():.0f} ms")
st.dataframe(table, hide_index=True, width="stretch",
             column_config={"score": st.column_config.NumberColumn(format="%.4f"),
                            "score / threshold": st.column_config.ProgressColumn(min_value=0.0, max_value=2.0,
                                                                                 format="%.2f")})
st.download_button("Download results (CSV)", table.to_csv(index=False).encode(),
                   file_name=f"{sel.category}_{sel.kind}_results.csv", mime="text/csv")

for r in results:
    st.divider()
    badge = ":red[**DEFECT**]" if r.verdict == "DEFECT" else ":green[**OK**]"
    st.markdown(f"#### {r.name} — {badge} · score {r.score:.4f} (threshold {cal.image_threshold:.4f})")
    shown = render_overlay(r, cal, opacity, cmap, show_contour)
    c1, c2 = st.columns(2)
    c1.image(display_image(r.image), caption="image", width="stretch")
    c2.image(shown, caption="heatmap overlay", width="stretch")
    st.download_button("Download overlay PNG", png_bytes(shown), file_name=f"{Path(r.name).stem}_overlay.png",
                       mime="image/png", key=f"dl-{r.name}")
