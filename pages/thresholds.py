"""Thresholds: ROC/PR curves at image and pixel level, live confusion matrix, save operating points.

The sliders start from the calibration saved beside the model, or from this model's unsaved draft when the user
moved them earlier in the session (``ui.drafts``: kept per model version across page visits until saved or
discarded; Streamlit itself forgets widget values when a page is left). The unsaved state, what Save would
change, and Save / Discard sit at the top, right above the sliders.
"""

import math
from typing import cast

import numpy as np
import pandas as pd
import streamlit as st

from core.access import Permission
from core.models.registry import spec
from core.scores import metrics
from core.scores import thresholds as th
from core.scores.calibration import DEFAULT_FALSE_ALARM, REVIEW_RATES
from core.store import lifecycle as det
from core.types import TrainControl
from ui import auth, cache, charts, drafts, visits
from ui.drafts import ThresholdDraft
from ui.frame import selection
from ui.sidebar import require_model

sel = selection()
st.title("Thresholds")
model = require_model(sel)
ref = model.ref


def evaluate_and_rerun() -> None:
    """Score the category's test images with the model, save the results beside it, and redraw."""
    auth.require(Permission.EVALUATE)
    data = cache.category(sel.data_root, model.category)
    bar = st.progress(0.0, text="Scoring test images…")

    def progress(msg: str, fraction: float) -> None:
        bar.progress(fraction, text=msg.capitalize())

    try:
        det.run_evaluation(model, data, TrainControl(progress=progress))
    except ValueError as exc:
        st.error(str(exc))
        st.stop()
    cache.clear_model_caches()
    st.rerun()


frame = cache.eval_images(model.ref)
if frame is None or frame.empty or frame["label"].nunique() < 2:
    st.info("Thresholds are tuned on evaluation images: good and defective test images of this category.")
    if st.button("Evaluate on the test images now", type="primary", disabled=not auth.can(Permission.EVALUATE),
                 help=auth.only_for(Permission.EVALUATE)):
        evaluate_and_rerun()
    st.stop()

labels = frame["label"].to_numpy()
scores = frame["score"].to_numpy()
img_curve = metrics.curve(labels, scores)
img_auroc = metrics.roc_auc(labels, scores)
best_f1, best_thr = metrics.f1_max(labels, scores)
cross_f1, cross_thr = metrics.crossfit_f1(labels, scores)
hist = cache.eval_pixels(model.ref)
cal = model.calibration
saved_img, saved_pix = cal.image_threshold, cal.pixel_threshold
saved_band = cal.review
default_img, default_pix = cal.defaults
positive = spec(model.kind).positive_scores  # distances: thresholds stay above 0
img_range = th.slider_range([float(scores.min()), float(scores.max()), saved_img, default_img, cross_thr,
                             *(saved_band or ())], positive, pad_share=0.05)
if hist is not None:
    pix_range = th.slider_range([float(hist.edges[0]), float(hist.edges[-1]), saved_pix, default_pix], positive)

# On every visit, after a change of model, or when the file changed anywhere: start from this model's unsaved
# draft if there is one, else from the saved calibration.
stamp = (ref, cache.calibration_key(ref))
previous = st.session_state.get("thr_stamp")
if (visits.is_new_visit() or previous != stamp or "image_thr" not in st.session_state
        or (hist is not None and "pixel_thr" not in st.session_state)):
    draft = drafts.get(ref)
    st.session_state["thr_stamp"] = stamp
    st.session_state["thr_restored"] = draft is not None and (visits.is_new_visit() or previous is None
                                                              or previous[0] != ref)
    st.session_state["image_thr"] = float(np.clip(draft.image_threshold, *img_range)) if draft else saved_img
    st.session_state["pixel_thr"] = (float(np.clip(draft.pixel_threshold, *pix_range)) if draft and hist is not None
                                     else saved_pix)
    band_start = draft.review if draft and draft.review else saved_band
    if band_start is not None:
        st.session_state["review_band"] = tuple(float(np.clip(v, *img_range)) for v in band_start)


def set_image_threshold(value: float) -> None:
    st.session_state["image_thr"] = float(np.clip(value, *img_range))


def set_pixel_threshold(value: float) -> None:
    st.session_state["pixel_thr"] = float(np.clip(value, *pix_range))


def restore_defaults() -> None:
    set_image_threshold(default_img)
    if hist is not None:
        set_pixel_threshold(default_pix)
    if saved_band is not None:
        band = cal.with_thresholds(default_img, default_pix, "default").default_review()
        st.session_state["review_band"] = tuple(float(np.clip(v, *img_range)) for v in band)


def discard_changes() -> None:
    """Back to the saved thresholds; the draft is forgotten."""
    drafts.discard(ref)
    st.session_state["thr_restored"] = False
    st.session_state["image_thr"] = saved_img
    if hist is not None:
        st.session_state["pixel_thr"] = saved_pix
    if saved_band is not None:
        st.session_state["review_band"] = saved_band


status = st.container(border=True)  # the unsaved state and Save / Discard, filled once the sliders are read
st.subheader("Image level")
c1, c2, c3, c4 = st.columns([3, 1, 1, 1])
with c1:
    thr = st.slider("Image threshold (raw score)", *img_range, key="image_thr",
                    step=(img_range[1] - img_range[0]) / 1000, format="%.4f")
with c2:
    target_fpr = st.number_input("Target FPR", 0.0, 1.0, 0.05, 0.01, key="target_fpr")
    st.button("Set by FPR", on_click=lambda: set_image_threshold(
        metrics.threshold_at_fpr(scores[labels == 0], target_fpr)))
with c3:
    target_recall = st.number_input("Target recall", 0.0, 1.0, 0.95, 0.01, key="target_recall")
    st.button("Set by recall", on_click=lambda: set_image_threshold(metrics.threshold_at_recall(labels, scores, target_recall)))
with c4:
    st.metric("F1-optimal", f"{best_thr:.4f}", help=f"F1 {best_f1:.3f} on these images (optimistic: fitted and "
              "counted on the same images)")
    st.button("Use F1-optimal", on_click=lambda: set_image_threshold(best_thr))
    if np.isfinite(cross_thr):
        st.button("Use cross-fitted", on_click=lambda: set_image_threshold(cross_thr),
                  help=f"{cross_thr:.4f}: the F1-optimal threshold fitted on one half of the labelled images and "
                       f"counted on the other (2-fold): F1 {cross_f1:.3f} on images it was not fitted on. Uses your "
                       "labelled defects; "
                       "the default uses good images only.")

band: tuple[float, float] | None = None
if saved_band is not None:
    b1, b2 = st.columns([3, 3])
    with b1:
        # a two-ended slider: its value (from session state) is a (low, high) pair
        picked = cast(tuple[float, float], st.slider(
            "Review band (raw score): parts inside go to a person (REVIEW)", *img_range, key="review_band",
            step=(img_range[1] - img_range[0]) / 1000, format="%.4f"))
    band = (min(float(picked[0]), thr), max(float(picked[1]), thr))  # the band always holds the threshold
    inside = th.band_counts(labels, scores, thr, band)
    promised_rate = cal.false_alarm_target if cal.false_alarm_target is not None else DEFAULT_FALSE_ALARM  # band's origin
    b2.caption(f"In the band: **{inside.parts} of {len(scores)}** evaluation images ({inside.parts / len(scores):.0%})"
               + (f", holding **{inside.errors_caught} of {inside.errors}** of the threshold's errors." if inside.errors
                  else "; the threshold makes no errors on these images.")
               + " Parts below the band: OK; above it: DEFECT. By default the band reaches below the threshold as far "
               f"as a normal curve fitted to the good scores moves from flagging {promised_rate:.0%} to "
               f"{REVIEW_RATES[0]:.0%} of good parts, and above it as far as from {promised_rate:.0%} to "
               f"{REVIEW_RATES[1]:.0%} (so it is not symmetric)."
               + ("" if band == (float(picked[0]), float(picked[1])) else " (widened to hold the threshold)"))

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
st.plotly_chart(charts.score_histogram(frame, thr, band), width="stretch")

pixel_thr = saved_pix
if hist is not None:
    pixels = hist  # not None in the buttons' callbacks either
    st.subheader("Pixel level")
    pix_curve = hist.curve()
    q1, q2, q3 = st.columns([3, 1, 1])
    with q1:
        pixel_thr = st.slider("Pixel threshold (map value)", *pix_range, key="pixel_thr",
                              step=(pix_range[1] - pix_range[0]) / 2000, format="%.4f")
    with q2:
        target_pfpr = st.number_input("Target pixel FPR", 0.0, 1.0, 0.01, 0.005, format="%.3f", key="target_pfpr")
        st.button("Set by pixel FPR", on_click=lambda: set_pixel_threshold(th.pixel_threshold_at_fpr(pixels, target_pfpr)))
    with q3:
        target_precall = st.number_input("Target pixel recall", 0.0, 1.0, 0.5, 0.05, key="target_precall")
        st.button("Set by pixel recall",
                  on_click=lambda: set_pixel_threshold(th.pixel_threshold_at_recall(pixels, target_precall)))
    pfpr, precall = th.pixel_rates(hist, pixel_thr)
    p1, p2 = st.columns(2)
    p1.plotly_chart(charts.roc_figure(pix_curve, (pfpr, precall), "Pixel ROC", hist.auroc()), width="stretch")
    j = min(int(np.searchsorted(-pix_curve.thresholds, -pixel_thr)), len(pix_curve.thresholds) - 1)
    p2.plotly_chart(charts.pr_figure(pix_curve, (precall, pix_curve.precision[j]), "Pixel precision-recall"),
                    width="stretch")
    st.caption(f"At this pixel threshold: pixel recall {precall:.3f}, pixel FPR {pfpr:.4f}. Pixel curves use "
               f"{len(hist.edges) - 1} shared score bins over all evaluation pixels.")
else:
    st.caption("No ground-truth masks in the evaluation set, so no pixel-level curves.")

changed = not math.isclose(thr, saved_img, rel_tol=1e-9, abs_tol=1e-12) or (
    hist is not None and not math.isclose(pixel_thr, saved_pix, rel_tol=1e-9, abs_tol=1e-12)) or (
    band is not None and saved_band is not None
    and not all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in zip(band, saved_band, strict=True)))
if changed:
    drafts.put(ref, ThresholdDraft(float(thr), float(pixel_thr), band))
else:
    drafts.discard(ref)

with status:
    if changed:
        flips = th.verdict_flips(scores, saved_img, thr)
        kept = " (kept from your last visit)" if st.session_state.get("thr_restored") else ""
        st.warning(f"**Unsaved changes**{kept}. Inspect still uses the saved thresholds (image {saved_img:.4f}, "
                   f"pixel {saved_pix:.4f}). Saving flips the verdict of **{flips} of {len(scores)}** evaluation "
                   "images.", icon=":material/edit_note:")
    else:
        st.success("The thresholds shown are the saved ones.", icon=":material/check_circle:")
    s1, s2, s3, _ = st.columns([1.3, 1, 1, 2])
    if s1.button("Save thresholds with the model", type="primary",
                 disabled=not changed or not auth.can(Permission.THRESHOLDS), help=auth.only_for(Permission.THRESHOLDS)):
        auth.require(Permission.THRESHOLDS)
        is_default = (math.isclose(thr, default_img, rel_tol=1e-9)
                      and math.isclose(pixel_thr, default_pix, rel_tol=1e-9))
        try:
            chosen = cal.with_thresholds(thr, pixel_thr, "default" if is_default else "user")
            if band is not None:
                chosen = chosen.with_review(*band, chosen_by=None)
            saved = det.save_calibration(model, chosen)
        except ValueError as exc:  # the calibration check refused it: nothing was written
            st.error(f"Not saved: {exc}")
            st.stop()
        drafts.discard(ref)
        st.toast(f"Thresholds saved as {saved.label}; Inspect uses them now (the Models page can switch back).")
        st.rerun()
    s2.button("Discard changes", on_click=discard_changes, disabled=not changed,
              help="Back to the saved thresholds.")
    s3.button("Restore defaults", on_click=restore_defaults, help="Back to the thresholds calibrated on held-out "
              "good images when the model was trained (press Save to keep them).")
    if changed:
        before = th.operating_point(labels, scores, hist, saved_img, saved_pix)
        after = th.operating_point(labels, scores, hist, thr, pixel_thr)
        rows = [("image threshold", before.image_threshold, after.image_threshold),
                ("image FPR (good parts flagged)", before.image_fpr, after.image_fpr),
                ("image recall (defects caught)", before.image_recall, after.image_recall),
                ("image F1", before.image_f1, after.image_f1)]
        if hist is not None:
            rows += [("pixel threshold", before.pixel_threshold, after.pixel_threshold),
                     ("pixel FPR", before.pixel_fpr, after.pixel_fpr),
                     ("pixel recall", before.pixel_recall, after.pixel_recall)]
        with st.expander("What Save changes"):
            st.dataframe(pd.DataFrame(rows, columns=["", "saved", "after Save"]), hide_index=True,
                         column_config={"saved": st.column_config.NumberColumn(format="%.4f"),
                                        "after Save": st.column_config.NumberColumn(format="%.4f")})

st.divider()
st.subheader("Saved thresholds")
who = "the calibrated defaults" if cal.chosen_by == "default" else "chosen on this page"
st.caption(f"Saved now ({who}): image **{saved_img:.4f}**, pixel **{saved_pix:.4f}**"
           + (f", review band {saved_band[0]:.4f} – {saved_band[1]:.4f}" if saved_band else "")
           + ("" if cal.chosen_by == "default" else f" · calibrated defaults: image {default_img:.4f}, pixel "
              f"{default_pix:.4f}")
           + ("." if cal.false_alarm_target is not None else f"; the defaults from {cal.source}."))
if cal.false_alarm_target is not None:
    observed = metrics.rates(metrics.confusion(labels, scores, default_img))
    st.caption(f"The default {'promises' if cal.promised else 'aims at'} about **{cal.false_alarm_target:.0%} of "
               f"good parts** flagged{'' if cal.promised else ' (too few images to promise it)'}, set on {cal.source}, no "
               "defects needed." + (f" Evidence: {cal.promise.statement}." if cal.promise is not None else "")
               + f" On these evaluation images it flags **{observed['fpr']:.1%}** of the good ones and catches "
               f"{observed['recall']:.1%} of the defects (F1 {observed['f1']:.3f}; F1-max {best_f1:.3f}).")
if st.button("Re-evaluate on the current test images", disabled=not auth.can(Permission.EVALUATE),
             help=auth.only_for(Permission.EVALUATE) or "After annotating new defects, include them in the curves."):
    evaluate_and_rerun()
