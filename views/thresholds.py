"""Thresholds: ROC/PR curves at image and pixel level, live confusion matrix, save operating points."""

import numpy as np
import streamlit as st

from core import detector as det
from core import metrics
from ui import cache, charts
from ui.sidebar import require_model, sidebar

sel = sidebar()
st.title("Thresholds")
model = require_model(sel)


def evaluate_and_rerun() -> None:
    """Score the category's test images with the model, save the results beside it, and redraw."""
    data = cache.category_data(str(sel.data_root), sel.category, cache.data_version(str(sel.data_root), sel.category))
    with st.spinner("Scoring test images…"):
        try:
            det.run_evaluation(sel.store, model, data)
        except ValueError as exc:
            st.error(str(exc))
            st.stop()
    cache.clear_model_caches()
    st.rerun()


ev = cache.eval_version(sel.store_path, sel.category, sel.kind)
frame = cache.eval_images(sel.store_path, sel.category, sel.kind, ev)
if frame is None or frame.empty or frame["label"].nunique() < 2:
    st.info("Thresholds are tuned on evaluation images: good and defective test images of this category.")
    if st.button("Evaluate on the test images now", type="primary"):
        evaluate_and_rerun()
    st.stop()

labels = frame["label"].to_numpy()
scores = frame["score"].to_numpy()
img_curve = metrics.curve(labels, scores)
img_auroc = metrics.roc_auc(labels, scores)
best_f1, best_thr = metrics.f1_max(labels, scores)
hist = cache.eval_pixels(sel.store_path, sel.category, sel.kind, ev)
cal = model.calibration
key = f"{sel.category}/{sel.kind}"
lo, hi = float(scores.min()), float(scores.max())
pad = 0.05 * (hi - lo or 1.0)
if st.session_state.get("thr_model") != key:
    st.session_state["thr_model"] = key
    st.session_state["image_thr"] = float(np.clip(cal.image_threshold, lo - pad, hi + pad))
    if hist is not None:
        st.session_state["pixel_thr"] = float(np.clip(cal.pixel_threshold, hist.edges[0], hist.edges[-1]))


def set_image_threshold(value: float) -> None:
    st.session_state["image_thr"] = float(np.clip(value, lo - pad, hi + pad))


st.subheader("Image level")
c1, c2, c3, c4 = st.columns([3, 1, 1, 1])
with c1:
    thr = st.slider("Image threshold (raw score)", lo - pad, hi + pad, key="image_thr", step=(hi - lo + 2 * pad) / 1000,
                    format="%.4f")
with c2:
    target_fpr = st.number_input("Target FPR", 0.0, 1.0, 0.05, 0.01)
    st.button("Set by FPR", on_click=lambda: set_image_threshold(
        metrics.threshold_at_fpr(scores[labels == 0], target_fpr)))
with c3:
    target_recall = st.number_input("Target recall", 0.0, 1.0, 0.95, 0.01)
    st.button("Set by recall", on_click=lambda: set_image_threshold(metrics.threshold_at_recall(labels, scores, target_recall)))
with c4:
    st.metric("F1-optimal", f"{best_thr:.4f}", help=f"F1 {best_f1:.3f} on these images")
    st.button("Use F1-optimal", on_click=lambda: set_image_threshold(best_thr))

counts = metrics.confusion(labels, scores, thr)
r = metrics.rates(counts)
m1, m2, m3, m4, m5 = st.columns(5)
m1.metric("Precision", f"{r['precision']:.3f}")
m2.metric("Recall", f"{r['recall']:.3f}")
m3.metric("F1", f"{r['f1']:.3f}")
m4.metric("FPR", f"{r['fpr']:.3f}")
m5.metric("Flagged", f"{counts['tp'] + counts['fp']} / {len(scores)}")
g1, g2, g3 = st.columns(3)
g1.plotly_chart(charts.roc_figure(img_curve, (r["fpr"], r["recall"]), "Image ROC", img_auroc), width="stretch")
g2.plotly_chart(charts.pr_figure(img_curve, (r["recall"], r["precision"] if counts["tp"] + counts["fp"] else 1.0),
                                 "Image precision-recall"), width="stretch")
g3.plotly_chart(charts.confusion_figure(counts), width="stretch")
st.plotly_chart(charts.score_histogram(frame, thr), width="stretch")

pixel_thr = cal.pixel_threshold
if hist is not None:
    st.subheader("Pixel level")
    pix_curve = hist.curve()
    edges = hist.edges
    pixel_thr = st.slider("Pixel threshold (map value)", float(edges[0]), float(edges[-1]), key="pixel_thr",
                          step=float(edges[1] - edges[0]), format="%.4f")
    i = int(np.clip(np.searchsorted(pix_curve.thresholds[::-1], pixel_thr), 0, len(pix_curve.thresholds) - 1))
    j = len(pix_curve.thresholds) - 1 - i
    p1, p2 = st.columns(2)
    p1.plotly_chart(charts.roc_figure(pix_curve, (pix_curve.fpr[j], pix_curve.tpr[j]), "Pixel ROC", hist.auroc()),
                    width="stretch")
    p2.plotly_chart(charts.pr_figure(pix_curve, (pix_curve.recall[j], pix_curve.precision[j]), "Pixel precision-recall"),
                    width="stretch")
    st.caption(f"At this pixel threshold: pixel recall {pix_curve.tpr[j]:.3f}, pixel FPR {pix_curve.fpr[j]:.4f}. "
               "Pixel curves use 2048 score bins over all evaluation pixels.")
else:
    st.caption("No ground-truth masks in the evaluation set, so no pixel-level curves.")

s1, s2 = st.columns([1, 3])
if s1.button("Save thresholds with the model", type="primary"):
    det.save_calibration(sel.store, model, cal.with_thresholds(thr, pixel_thr, "user"))
    cache.load_model.clear()
    st.session_state.pop("thr_model", None)
    st.toast("Thresholds saved; Inspect uses them now.")
    st.rerun()
s2.caption(f"Saved now: image {cal.image_threshold:.4f}, pixel {cal.pixel_threshold:.4f} ({cal.chosen_by}; {cal.source}).")
if st.button("Re-evaluate on the current test images", help="After annotating new defects, include them in the curves."):
    evaluate_and_rerun()
