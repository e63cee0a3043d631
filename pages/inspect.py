"""Inspect: upload images or pick test images; heatmaps, scores and verdicts."""

from pathlib import Path

import pandas as pd
import streamlit as st

from core.access import Permission
from core.data.imageio import SUPPORTED_SUFFIXES
from core.models.registry import label, spec
from core.portable import NO_VERDICT, OK
from core.store.model_store import ModelStoreError
from core.verdict import feedback
from core.verdict.overlay import COLORMAPS, png_bytes
from ui import auth, cache
from ui.frame import selection
from ui.inspect_view import (
    ImageLoadError,
    decode_upload,
    display_image,
    item_keys,
    render_overlay,
    score_image,
    taught_region,
    unique_names,
)
from ui.sidebar import require_model

sel = selection()
st.title("Inspect")
model = require_model(sel)
cal = model.calibration

left, right = st.columns([2, 1])
with left:
    uploads = st.file_uploader("Drop images here (PNG, JPEG, BMP, TIFF)", accept_multiple_files=True,
                               type=[s.lstrip(".") for s in SUPPORTED_SUFFIXES])
    data = cache.category(sel.data_root, model.category)
    choices = {f"{s.defect}/{s.path.name}": str(s.path) for s in data.test}
    # Streamlit drops a widget's value when its page is left; keep the picks in a plain session key.
    if "inspect_pick" not in st.session_state:
        st.session_state["inspect_pick"] = [p for p in st.session_state.get("_inspect_picks", []) if p in choices]
    picked = st.multiselect("…or pick test images of this category", list(choices), max_selections=24,
                            key="inspect_pick")
    st.session_state["_inspect_picks"] = picked
with right:
    opacity = st.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05)
    cmap = st.selectbox("Colormap", COLORMAPS)
    show_contour = st.toggle("Outline predicted defect", value=True)
    origin = "set on the Thresholds page" if cal.chosen_by == "user" else "default from the good images" + (
        (f", promising about {cal.false_alarm_target:.0%} false alarms on good parts" if cal.promised else
         f", aiming at about {cal.false_alarm_target:.0%} false alarms on good parts (too few good images to promise "
         "it)") if cal.false_alarm_target else "")
    band = "" if cal.review is None else (f" · REVIEW from **{cal.review[0]:.6g}** to **{cal.review[1]:.6g}** "
                                          "(a person decides)")
    st.caption(f"Image threshold **{cal.image_threshold:.6g}**{band} · pixel threshold **{cal.pixel_threshold:.4g}** "
               f"({origin})")
    guard = "on" if cal.familiarity_limit is not None else "off (model trained before the guard existed: retrain)"
    st.caption(f"Model warm-up at load: {model.warmup_ms:.0f} ms (not counted in the latencies below) · "
               f"unfamiliar-image guard {guard}")

CONFIRM = "_inspect_confirm_ok"  # the Mark as OK waiting for a confirmation: item key, model version, reason


def feedback_panel() -> None:
    """Undo and the outcome of the last feedback action (the log lives beside the model)."""
    message = st.session_state.pop("_feedback_message", None)
    if message:
        (st.error if message[0] == "error" else st.success)(message[1])
    try:
        entries = feedback.history(sel.store, model.category, model.kind)
    except ModelStoreError as exc:
        st.error(f"Feedback is paused: {exc}")
        return
    last = feedback.undoable(entries)
    if last is not None:
        entry = entries[last]
        what = "marked OK" if entry["action"] == feedback.MARK_OK else f"filed as '{entry.get('defect')}'"
        if st.button(f"Undo: {entry['image']} {what}", icon=":material/undo:", key="feedback_undo"):
            run_feedback(lambda: feedback.undo(sel.store, model.category, model.kind))


def run_feedback(action, item: str | None = None) -> None:
    """Run one feedback action and rerun with its outcome. A Mark as OK that core refuses for want of a
    confirmation (the image scores far above the threshold) opens the confirmation panel of ``item``."""
    st.session_state.pop(CONFIRM, None)
    auth.require(Permission.MARK)
    try:
        result = action()
        st.session_state["_feedback_message"] = ("ok", result if isinstance(result, str) else result.message)
    except feedback.NeedsConfirmation as exc:
        st.session_state[CONFIRM] = {"item": item, "ref": model.ref, "message": str(exc)}
    except (feedback.FeedbackError, ModelStoreError, OSError) as exc:
        st.session_state["_feedback_message"] = ("error", str(exc))
    cache.category_data.clear()
    st.rerun()


def confirm_panel(r, item: str, message: str) -> None:
    """Mark as OK of an image far above the threshold: what would be taught, and a deliberate yes."""
    with st.container(border=True):
        st.warning(f"**Confirm Mark as OK.** {message}.", icon=":material/warning:")
        shown, share = taught_region(r, cal, cmap)
        region = "" if share is None else f" ({share:.1%} of the image above the pixel threshold)"
        st.image(shown, width=360, caption=f"The outlined region{region} and everything else in this image "
                                           "would be learnt as a normal part.")
        yes, no = st.columns(2)
        if yes.button("Yes, mark it OK anyway", key=f"confirm-ok-{item}", type="primary",
                      icon=":material/thumb_up:"):
            run_feedback(lambda: feedback.mark_ok(model, r.image, r.name, confirm_far_above=True), item)
        if no.button("Cancel", key=f"cancel-ok-{item}"):
            st.session_state.pop(CONFIRM, None)
            st.rerun()


feedback_panel()

items = []
for up in uploads or []:
    try:
        items.append((up.name, decode_upload(up.name, up.getvalue())))
    except ImageLoadError as exc:
        st.error(f"Skipped {exc.source}: {exc.reason}")
for pick in picked:
    try:
        items.append((pick, cache.image_from_path(choices[pick])))
    except ImageLoadError as exc:
        st.error(f"Skipped {exc.source}: {exc.reason}")

if not items:
    st.info("Upload or pick images to see heatmaps, scores and verdicts.")
    st.stop()
items = list(zip(unique_names([name for name, _ in items]), [image for _, image in items], strict=True))
keys = item_keys([image for _, image in items])
pending = st.session_state.get(CONFIRM)
if pending and (pending["ref"] != model.ref or pending["item"] not in keys):
    st.session_state.pop(CONFIRM)  # the model or the images changed since: Mark as OK asks again if needed
    pending = None

results = []
progress = st.progress(0.0, text="Scoring…") if len(items) > 3 else None
for i, (name, image) in enumerate(items):
    results.append(score_image(sel.inference, model, name, image))
    if progress:
        progress.progress((i + 1) / len(items), text=f"Scoring {i + 1}/{len(items)}")
if progress:
    progress.empty()

def _ratio(score: float | None) -> float:
    return score / cal.image_threshold if score is not None and cal.image_threshold else float("nan")


table = pd.DataFrame([{"image": r.name, "score": r.inspection.score, "verdict": r.verdict,
                       "score / threshold": _ratio(r.inspection.score),
                       "familiar": {True: "yes", False: "NO", None: "–"}[r.inspection.familiar],
                       "height": r.image.shape[0], "width": r.image.shape[1],
                       "latency ms": round(r.inspection.latency_ms, 1) if r.inspection.score is not None else None,
                       "note": r.inspection.note}
                      for r in results])
n_defect = int((table["verdict"] == "DEFECT").sum())
n_review = int((table["verdict"] == "REVIEW").sum())
scored_latency = table["latency ms"].dropna()
m1, m2, m3, m4 = st.columns(4)
m1.metric("Images", len(results))
m2.metric("DEFECT / REVIEW", f"{n_defect} / {n_review}",
          help="REVIEW: the score is in the review band around the threshold (Thresholds page): a person decides.")
m3.metric("Unfamiliar / no verdict", f"{int((table['familiar'] == 'NO').sum())} / {int((table['verdict'] == NO_VERDICT).sum())}")
m4.metric("Median latency", f"{scored_latency.median():.0f} ms" if len(scored_latency) else "–",
          help="Steady-state model time per image (the warm-up at load is shown separately above).")
st.dataframe(table, hide_index=True, width="stretch",
             column_config={"score": st.column_config.NumberColumn(format="%.4f"),
                            "score / threshold": st.column_config.ProgressColumn(min_value=0.0, max_value=2.0,
                                                                                 format="%.2f")})
st.download_button("Download results (CSV)", table.to_csv(index=False).encode(),
                   file_name=f"{sel.category}_{sel.kind}_results.csv", mime="text/csv")

BADGES = {"DEFECT": ":red[**DEFECT**]", "REVIEW": ":orange[**REVIEW**]", "OK": ":green[**OK**]",
          NO_VERDICT: ":gray[**NO VERDICT**]"}
# the category's own defect types first (the first is the default); a new name can still be typed
defect_types = list(data.defect_types)
for r, item in zip(results, keys, strict=True):
    st.divider()
    score = "" if r.inspection.score is None else f" · score {r.inspection.score:.4f} (threshold {cal.image_threshold:.4f})"
    st.markdown(f"#### {r.name} — {BADGES[r.verdict]}{score}")
    if r.verdict == NO_VERDICT:
        st.error(f"No verdict: {r.inspection.note}.", icon=":material/block:")
    elif r.verdict == "REVIEW":
        st.info(f"**Review**: {r.inspection.note.split('; ')[0]}. Mark it OK or as a defect below.",
                icon=":material/person_search:")
    if r.verdict != NO_VERDICT and r.inspection.familiar is False:
        st.warning(f"**Unfamiliar image** — {r.inspection.note.partition('unfamiliar image: ')[2]}. It may be "
                   f"another product, a changed camera setup, or a gross defect of a {sel.category} part: the "
                   "verdict is shown, but check the image.", icon=":material/help:")
    shown = render_overlay(r, cal, opacity, cmap, show_contour)
    c1, c2 = st.columns(2)
    c1.image(display_image(r.image), caption="image", width="stretch")
    c2.image(shown, caption="heatmap overlay", width="stretch")
    b1, b2, b3, b4 = st.columns([2, 2, 2, 2], vertical_alignment="bottom")
    b1.download_button("Download overlay PNG", png_bytes(shown), file_name=f"{Path(r.name).stem}_overlay.png",
                       mime="image/png", key=f"dl-{item}")
    if r.verdict == NO_VERDICT:
        continue
    learns = spec(sel.kind).learns_from_feedback
    teach_help = ("Adds this image's patches to the memory bank as a new model version (seconds, no retraining; "
                  "undo below). An image scored far above the threshold asks for a confirmation first." if learns
                  else f"{label(sel.kind)} cannot learn from one image yet: add it to train/good and retrain on the "
                  "Models page.")
    if r.verdict != OK and b2.button("Mark as OK (false alarm)", key=f"ok-{item}", disabled=not learns,
                                     icon=":material/thumb_up:", help=teach_help):
        run_feedback(lambda r=r: feedback.mark_ok(model, r.image, r.name), item)
    defect = b3.selectbox("Defect type", defect_types, index=None, key=f"defect-{item}", accept_new_options=True,
                          placeholder="Choose or type a defect type",
                          help="One of this category's defect types, or type a new name (none is chosen for you: "
                               "Mark as defect waits for it).")
    if b4.button("Mark as defect", key=f"bad-{item}", icon=":material/report:", disabled=not defect,
                 help=f"Files the image under {sel.category}/test/<defect type>/ so the next evaluation counts it "
                      "(draw its mask on the Annotate page)."):
        run_feedback(lambda r=r, d=defect: feedback.mark_defect(model, r.image, r.name, sel.data_root, d))
    if pending and pending["item"] == item:
        confirm_panel(r, item, pending["message"])
