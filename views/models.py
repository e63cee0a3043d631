"""Models: categories, trained models, and training from the browser."""

import pandas as pd
import streamlit as st

from core import detector as det
from core.efficientad import (
    MIN_SIZE,
    EfficientADConfig,
    expected_training_seconds,
    input_size_for,
)
from core.knn import AUTO_EXACT_LIMIT
from ui import cache
from ui.jobs import show_job, start_job
from ui.sidebar import KIND_LABELS, sidebar

sel = sidebar()
st.title("Models")
st.caption("Train a detector per product category from good images only, then inspect, tune and compare.")

if sel.category is None:
    st.info("Point the sidebar's **Data root** at a folder of categories to get started.")
    st.stop()

try:
    data = cache.category_data(str(sel.data_root), sel.category, cache.data_version(str(sel.data_root), sel.category))
except Exception as exc:  # a broken folder must not break the page
    st.error(f"Cannot read category {sel.category!r}: {exc}")
    st.stop()

c1, c2, c3, c4 = st.columns(4)
c1.metric("Good training images", len(data.train))
c2.metric("Test images", len(data.test))
c3.metric("Defect types", len(data.defect_types))
c4.metric("Layout", "MVTec AD" if data.layout == "mvtec" else "plain folder")
for problem in data.problems[:5]:
    st.warning(problem)

st.subheader("Trained models")
records = sel.store.list_models()
rows = []
for rec in records:
    if rec.ok and rec.manifest:
        m = rec.manifest.get("metrics", {})
        rows.append({"category": rec.category, "model": KIND_LABELS.get(rec.kind, rec.kind),
                     "backbone": rec.manifest.get("backbone"), "created": rec.manifest.get("created"),
                     "train s": round(rec.manifest.get("train", {}).get("seconds", float("nan")), 1),
                     "image AUROC": m.get("image_auroc"), "pixel AUROC": m.get("pixel_auroc"),
                     "AUPRO": m.get("aupro"), "F1-max": m.get("f1_max"), "ms/image": m.get("latency_ms_mean")})
    else:
        st.error(f"Broken model folder {rec.path}: {rec.error}")
if rows:
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
else:
    st.info("No models trained yet. Train one below — PatchCore takes well under a minute on the demo data.")

st.subheader(f"Train a model for “{sel.category}”")
job = st.session_state.get("train_job")
with st.form("train"):
    kind = st.selectbox("Model", det.KINDS, index=det.KINDS.index(sel.kind), format_func=KIND_LABELS.get,
                        key="train_kind")
    col1, col2, col3 = st.columns(3)
    size = col1.select_slider("Input size (px)", options=[128, 160, 192, 224, 256, 320, 384], value=256,
                              help=f"EfficientAD uses at least {MIN_SIZE} px.", key="train_size")
    ratio = col2.select_slider("PatchCore coreset ratio", options=[0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 1.0],
                               value=0.01, help="Share of training patches kept in the memory bank (1.0: all of them). "
                                                f"Banks above {AUTO_EXACT_LIMIT:,} patches are searched with HNSW, "
                                                "with each image's top patch re-checked exactly.")
    steps = col3.number_input("EfficientAD steps", min_value=10, max_value=70000, value=EfficientADConfig().steps,
                              step=100)
    ead_size = input_size_for(size, EfficientADConfig().structure)
    estimate = expected_training_seconds(EfficientADConfig(height=ead_size, width=ead_size, steps=int(steps)),
                                         len(data.train))
    st.caption(f"EfficientAD at {ead_size}px for {int(steps)} steps on {len(data.train)} good images: about "
               f"{estimate / 60:.0f} min on a 2-core CPU (measured step time; benchmarks/RESULTS.md). "
               "PatchCore needs one pass over the images plus the coreset.")
    submitted = st.form_submit_button("Train", type="primary", disabled=bool(job and job.running))

if submitted:
    if kind == "patchcore":
        settings = {"height": size, "width": size, "coreset_ratio": ratio}
    else:
        settings = {"height": ead_size, "width": ead_size, "steps": int(steps)}
    store, category = sel.store, sel.category

    def work(control):
        result = det.train(data, kind, settings, store, control)
        if data.test:
            model = det.load(store, category, kind)
            det.run_evaluation(store, model, data, control)
        return result

    st.session_state["train_job"] = start_job(f"{KIND_LABELS[kind]} on {category}", work)
    st.rerun()


@st.fragment(run_every=1.0)
def progress_panel() -> None:
    job = st.session_state.get("train_job")
    if job is None:
        return
    just_finished = show_job(job, "Training failed", cancel_label="Cancel training")
    if job.succeeded:
        st.success(f"{job.name}: saved to {job.result.path}")
    if just_finished:
        cache.clear_model_caches()
        st.rerun(scope="app")


progress_panel()
