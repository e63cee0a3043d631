"""Review: the line's REVIEW and DEFECT images (service and watch folder) of the selected category, newest first;
a person answers OK, DEFECT (with the defect type) or Skip, one key each, and the next image shows at once.

The answers are Streamlit 1.67 ``st.button(shortcut=...)`` keys: O = OK, D = DEFECT, S = Skip (C and R are
reserved by Streamlit); they are also the first controls of the page. A click only asks: the answer is taken at
the top of the next run, where the role is checked (``auth.require``), so the queue drawn after it already
lacks the answered item. The item shown stays the same until it is answered or skipped, even when newer results
arrive, so an answer always concerns the image on the screen.
"""

import datetime as dt
import time
from pathlib import Path

import pandas as pd
import streamlit as st

from core.access import Permission
from core.data.imageio import ImageLoadError
from core.line import results_log as line_log
from core.models.registry import KINDS
from core.portable import DEFECT, OK, REVIEW
from core.store.history import History, ResultRow
from core.store.model_store import ModelNotFound, ModelRef, ModelStore, ModelStoreError
from core.verdict import review
from core.verdict.overlay import overlay
from ui import auth, cache
from ui.display import display_image
from ui.frame import selection

ALL = "all"
SOURCES = (ALL, "service", "watch")
WINDOWS: dict[str, float | None] = {"Any time": None, "Last hour": 3600.0, "Last 8 hours": 8 * 3600.0,
                                    "Last 24 hours": 86400.0, "Last 7 days": 7 * 86400.0}
BADGES = {OK: ":green[OK]", REVIEW: ":orange[REVIEW]", DEFECT: ":red[DEFECT]"}
SPOT = ":blue[OK · spot check]"  # an OK verdict sent to the queue too (1 in INSPECT_SPOT_CHECK, by image hash)
KEYS = {"OK": "O", "DEFECT": "D", "Skip": "S"}
TABLE_ROWS = 200
ANSWER, CURRENT, SKIPPED, CONFIRM, MESSAGE = ("review_answer", "review_current", "review_skipped", "review_confirm",
                                              "review_message")

sel = selection()
st.title("Review")
if sel.category is None:
    st.info("No category selected: choose a data root with a category in the sidebar.")
    st.stop()
category = sel.category
store_root = sel.settings.model_store
history = cache.line_history(store_root, line_log.default_path(store_root))
state = st.session_state
state.setdefault(SKIPPED, [])


def ask(result_id: int, decision: str, force: bool = False) -> None:
    """A button's callback: note the answer; it is taken at the top of the run that follows (role checked)."""
    state[ANSWER] = (result_id, decision, state.get("review_defect") if decision == DEFECT else None, force)


def skip(result_id: int) -> None:
    state[SKIPPED] = [*state[SKIPPED], result_id]
    state.pop(CURRENT, None)
    state.pop(CONFIRM, None)


def take(chosen: History, store: ModelStore, asked: tuple[int, str, str | None, bool]) -> None:
    """Take one answer: the reviewer is the signed-in user, whose role must allow marking."""
    result_id, decision, defect, force = asked
    user = auth.require(Permission.MARK)
    row = chosen.result(result_id)
    if row is None:
        state[MESSAGE] = ("error", f"expected line result {result_id} in the results database, found none")
        return
    try:
        with st.spinner("Taking the answer…" if decision == DEFECT else "Teaching the model…"):
            outcome = review.decide(chosen, store, sel.data_root, row, decision, user.name, defect=defect,
                                    force=force, load=cache.load_model)
    except review.ReviewError as exc:
        state[MESSAGE] = ("error", str(exc))
        return
    if outcome.needs_confirmation is not None:
        state[CONFIRM] = (result_id, outcome.message)
        return
    state.pop(CONFIRM, None)
    state.pop(CURRENT, None)  # the next item at once
    state[MESSAGE] = ("success", outcome.message)


asked = state.pop(ANSWER, None)
if asked is not None:
    take(history, sel.store, asked)

top = st.container()  # the answers and the current item, drawn once the filters below are read

# -- filters and the queue -----------------------------------------------------------------------------------------
st.divider()
f1, f2, f3, f4, f5 = st.columns([2, 3, 2, 2, 2], vertical_alignment="bottom")
kind = f1.selectbox("Model", [ALL, *KINDS], key="review_kind")
verdicts = f2.multiselect("Verdict", [REVIEW, DEFECT], default=[REVIEW, DEFECT], key="review_verdicts")
source = f3.selectbox("Source", SOURCES, key="review_source")
window = WINDOWS[f4.selectbox("Time", list(WINDOWS), key="review_window")]
spot_checks = f5.checkbox("Spot checks", value=True, key="review_spot",
                          help="1 in INSPECT_SPOT_CHECK OK verdicts (chosen by image hash) is shown too: the goods "
                               "you confirm there are the unbiased sample Recalibrate from the line fits from")
queue = review.pending(history, category, kind=kind if kind != ALL else None, verdicts=verdicts or (REVIEW, DEFECT),
                       since=None if window is None else time.time() - window, limit=review.QUEUE_LIMIT,
                       source=None if source == ALL else source, skip=state[SKIPPED], store=sel.store,
                       spot_checks=spot_checks)
shown = state.get(CURRENT)
item = next((r for r in queue if r.id == shown), queue[0] if queue else None)
st.caption(f"{len(queue)}{'+' if len(queue) >= review.QUEUE_LIMIT else ''} waiting in {category}, newest first"
           + (f"; {len(state[SKIPPED])} skipped in this session" if state[SKIPPED] else "")
           + f". Results database: `{history.label}`.")
if queue:
    st.dataframe(pd.DataFrame([{"id": r.id, "time": dt.datetime.fromtimestamp(r.time), "name": r.name,
                                "verdict": r.verdict + (" (spot check)" if r.spot_check else ""),
                                "score": r.score, "threshold": r.threshold, "model": r.kind,
                                "version": r.version, "source": r.source} for r in queue[:TABLE_ROWS]]),
                 hide_index=True, width="stretch",
                 column_config={"score": st.column_config.NumberColumn(format="%.4f"),
                                "threshold": st.column_config.NumberColumn(format="%.4f")})
if state[SKIPPED] and st.button("Show the skipped ones again", key="review_unskip"):
    state[SKIPPED] = []
    st.rerun()


def defect_types(root: Path) -> list[str]:
    """The defect folders of the category's test images (the answer may name a new one)."""
    folder = root / category / "test"
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name != "good") if folder.is_dir() else []


def judging_ref(store: ModelStore, row: ResultRow) -> ModelRef | None:
    """The version that judged ``row`` (its current version when that one no longer exists)."""
    if not row.kind:
        return None
    try:
        return store.ref(row.category, row.kind, row.version)
    except ModelNotFound:
        try:
            return store.current(row.category, row.kind)
        except ModelStoreError:
            return None


def picture(row: ResultRow) -> str | None:
    """Draw the stored image with the heatmap of the version that judged it; the problem when there is none."""
    try:
        image = cache.image_from_path(str(row.path)) if row.path else None
    except ImageLoadError as exc:
        return f"The stored image cannot be read: {exc}"
    if image is None:
        return "This result kept no image (the service keeps REVIEW and DEFECT uploads since the review queue exists)."
    ref = judging_ref(sel.store, row)
    try:
        if ref is None:
            raise ModelNotFound(f"no {row.category}/{row.kind} model to draw the heatmap")
        model = cache.load_model(ref)
        _, amap, _ = cache.predict_one(ref, "fast", image)
        st.image(overlay(display_image(image), amap, model.calibration), width="stretch",
                 caption=f"heatmap of {ref.label}")
    except (ModelStoreError, ValueError) as exc:
        st.image(display_image(image), width="stretch", caption=f"no heatmap: {exc}")
    return None


with top:
    message = state.pop(MESSAGE, None)
    if message is not None:
        (st.success if message[0] == "success" else st.error)(message[1])
    allowed = auth.can(Permission.MARK)
    refused = None if allowed else "Your role may not mark images (OK, defect), so it cannot answer here."
    b1, b2, b3, b4 = st.columns([1, 1, 2, 1], vertical_alignment="bottom")
    missing = item is None
    b1.button("OK", key="review_ok", shortcut=KEYS["OK"], type="primary", disabled=missing or not allowed,
              help=refused or "A good part (key O): PatchCore learns it; it joins the recalibration set",
              on_click=ask, args=(-1 if item is None else item.id, OK), width="stretch")
    b2.button("DEFECT", key="review_defect_answer", shortcut=KEYS["DEFECT"], disabled=missing or not allowed,
              help=refused or "A defect of the type beside (key D): filed under test/<type>/ for the next "
                                "evaluation", on_click=ask, args=(-1 if item is None else item.id, DEFECT),
              width="stretch")
    types = defect_types(sel.data_root)
    b3.selectbox("Defect type", types, key="review_defect", accept_new_options=True,
                 placeholder="type a new one", disabled=not allowed)
    b4.button("Skip", key="review_skip", shortcut=KEYS["Skip"], disabled=missing,
              help="Not now (key S): the next image; skipped ones come back on request",
              on_click=skip, args=(-1 if item is None else item.id,), width="stretch")
    st.caption("Keys: **O** = OK · **D** = DEFECT (of the type chosen) · **S** = Skip. The answer is recorded with "
               "your name, the version that judged the image and what it said.")
    if item is None:
        st.info(f"Nothing to review in {category} with these filters. The queue fills with the REVIEW and DEFECT "
                "results of the line: the service (`python -m core serve`) and watch folders (`python -m core "
                "watch`); images judged on the Inspect page are marked there directly.")
    else:
        state[CURRENT] = item.id
        confirm = state.get(CONFIRM)
        if confirm is not None and confirm[0] == item.id:
            st.warning(confirm[1])
            st.button("Confirm OK", key="review_force", disabled=not allowed, on_click=ask, args=(item.id, OK, True))
        left, right = st.columns([3, 2])
        with left:
            problem = picture(item)
            if problem is not None:
                st.error(f"{problem} Skip it (key S).")
        with right:
            badge = SPOT if item.spot_check else BADGES.get(item.verdict, item.verdict)
            st.markdown(f"### {badge} · {item.name or 'unnamed'}")
            if item.spot_check:
                st.caption("Spot check: the model judged this part OK; it is shown because 1 in "
                           "INSPECT_SPOT_CHECK OK verdicts is. Your OK makes it part of the unbiased sample of good "
                           "parts that Recalibrate from the line fits thresholds from.")
            score = "–" if item.score is None else f"{item.score:.4g}"
            threshold = "–" if item.threshold is None else f"{item.threshold:.4g}"
            st.markdown(f"Score **{score}** (threshold {threshold}) from **{item.category}/{item.kind} "
                        f"v{item.version}**  \n{dt.datetime.fromtimestamp(item.time):%Y-%m-%d %H:%M:%S} · "
                        f"{item.source} · result {item.id}")
            if item.reason:
                st.caption(item.reason)
            if item.path:
                st.caption(f"Stored image: `{item.path}`")
