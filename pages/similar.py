"""Similar: the k most similar training/test images by pooled patch features, through Qdrant."""

from pathlib import Path

import pandas as pd
import streamlit as st

from core.access import Permission
from core.data.imageio import SUPPORTED_SUFFIXES
from ui import auth, cache
from ui.frame import selection
from ui.inspect_view import ImageLoadError, decode_upload
from ui.jobs import follow_job, start_job

sel = selection()
st.title("Similar images")
if sel.category is None:
    st.info("Pick a category in the sidebar.")
    st.stop()
settings = sel.settings
where = f"Qdrant server {settings.qdrant_url}" if settings.qdrant_url else f"embedded Qdrant at `{settings.qdrant_path}`"
job = st.session_state.get("index_job")
# While the index is rebuilt, the page does not read it: embedded Qdrant has no lock, and a count between the
# job's delete and create of the collection fails; that used to stop the page before its progress fragment,
# whose timer the browser had dropped, so the page never redrew when the job ended.
if job is not None and job.running:  # nothing of the index is opened: only the job's progress, then the whole page once it ended
    st.caption(f"Building the {job.name} in {where}.")
    follow_job("index_job", "Indexing failed")
    st.stop()
try:
    index = cache.similarity_index(str(settings.qdrant_path), settings.qdrant_url)
    indexed = index.count(sel.category)
except Exception as exc:  # server down, locked folder, ...
    st.error(f"Vector store unavailable ({where}): {exc}")
    st.stop()
data = cache.category(sel.data_root, sel.category)
extractor = cache.feature_extractor("tf_efficientnet_lite0")
features = ("Features: spatial mean of PatchCore's patch features (tf_efficientnet_lite0 blocks 2+4), cosine "
            "similarity.")
st.caption(f"{indexed} images indexed in {where}. {features}")

if st.button("Build / rebuild the index" if indexed else "Build the index", type="primary" if not indexed else "secondary",
             disabled=not auth.can(Permission.INDEX), help=auth.only_for(Permission.INDEX)):
    auth.require(Permission.INDEX)
    st.session_state["index_job"] = start_job(f"similarity index of {sel.category}",
                                              lambda control: index.build(data, extractor.pooled_features, control))
    st.rerun()

follow_job("index_job", "Indexing failed")  # how the last build ended (its error, if any)
if not indexed:
    st.stop()

c1, c2 = st.columns([2, 1])
upload = c1.file_uploader("Query image", type=[s.lstrip(".") for s in SUPPORTED_SUFFIXES])
files = {s.key: str(s.path) for s in [*data.test, *data.train]}  # the image behind each key, on this server
samples = {f"{s.split}/{s.defect}/{s.path.name}": str(s.path) for s in [*data.test, *data.train]}
picked = c1.selectbox("…or an image of the category", ["—"] + list(samples), key="similar_pick")
k = c2.slider("How many", 1, 24, 8)
query = None
try:
    if upload is not None:
        query = (upload.name, decode_upload(upload.name, upload.getvalue()))
    elif picked != "—":
        query = (picked, cache.image_from_path(samples[picked]))
except ImageLoadError as exc:
    st.error(f"Cannot use {exc.source}: {exc.reason}")
if query is None:
    st.stop()

name, image = query
vector = extractor.pooled_features([image])[0]
hits = index.query(sel.category, vector, k)
scores = {}
if sel.ref is not None:
    frame = cache.eval_images(sel.ref)
    if frame is not None:
        scores = dict(zip(frame["key"], frame["score"], strict=True))
st.image(image, caption=f"query: {name}", width=260)
st.dataframe(pd.DataFrame([{"image": f"{h.split}/{h.defect}/{Path(h.path).name}", "similarity": round(h.similarity, 4),
                            "label": "defect" if h.label else "good", "defect type": h.defect,
                            "anomaly score (evaluated test images)": scores.get(h.key)} for h in hits]),
             hide_index=True, width="stretch")
cols = st.columns(4)
for i, h in enumerate(hits):
    try:
        cols[i % 4].image(cache.image_from_path(files.get(h.key, h.path)), width="stretch",
                          caption=f"{h.defect} · {h.similarity:.3f}" + (f" · score {scores[h.key]:.3f}" if h.key in scores else ""))
    except ImageLoadError as exc:
        cols[i % 4].warning(f"{exc.source}: {exc.reason}")
