"""Compare: PatchCore and EfficientAD side by side on the same images."""

import numpy as np
import pandas as pd
import streamlit as st

from core.models.registry import label
from core.store.model_store import ModelStoreError
from core.verdict.inspection import NO_VERDICT, verdict_of
from ui import cache, charts
from ui.display import display_image
from ui.frame import selection
from ui.inspect_view import render_overlay, score_image

sel = selection()
st.title("Compare PatchCore and EfficientAD")
kinds = ("patchcore", "efficientad")
refs = {k: sel.ref_for(k) for k in kinds}
missing = [label(k) for k, ref in refs.items() if ref is None]
if sel.category is None or missing:
    st.info(f"Comparison needs both models for this category; train {', '.join(missing)} on the **Models** page.")
    st.stop()
try:
    models = {k: cache.load_model(ref, sel.inference) for k, ref in refs.items() if ref is not None}
except ModelStoreError as exc:
    st.error(f"Cannot load a model: {exc}")
    st.stop()

rows = []
for k, m in models.items():
    met = m.manifest.get("metrics", {})
    size_mb = sel.store.weights_bytes(m.ref) / 1e6
    rows.append({"model": f"{label(k)} v{m.version}", "image AUROC": met.get("image_auroc"), "pixel AUROC": met.get("pixel_auroc"),
                 "AUPRO": met.get("aupro"), "F1-max": met.get("f1_max"), "ms/image": met.get("latency_ms_mean"),
                 "model size MB": round(size_mb, 2), "train s": round(m.manifest.get("train", {}).get("seconds", 0), 1)})
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
             column_config={**{c: st.column_config.NumberColumn(format="%.3f")
                               for c in ("image AUROC", "pixel AUROC", "AUPRO", "F1-max")},
                            "ms/image": st.column_config.NumberColumn(format="%.1f"),
                            "model size MB": st.column_config.NumberColumn(format="%.2f"),
                            "train s": st.column_config.NumberColumn(format="%.1f")})

data = cache.category(sel.data_root, sel.category)
files = {s.key: str(s.path) for s in data.test}  # the image behind each key, on this server
a, b = (cache.eval_images(models[k].ref) for k in kinds)
if a is not None and b is not None:
    joined = a.merge(b[["key", "score"]], on="key", suffixes=("_a", "_b"))
    joined = joined[joined["key"].isin(files)]  # images still in the category
    joined["name"] = joined["key"].map(lambda k: "/".join(k.split("/")[-2:]))
    # rank disagreement: where one model ranks an image as far more anomalous than the other
    joined["rank_a"] = joined["score_a"].rank(pct=True)
    joined["rank_b"] = joined["score_b"].rank(pct=True)
    joined["disagreement"] = (joined["rank_a"] - joined["rank_b"]).abs()
    only = {k: len(set(f["key"]) - set(joined["key"])) for k, f in zip(kinds, (a, b), strict=True)}
    if len(joined) < 2:
        st.warning(f"The two evaluations share {len(joined)} images of this category's {len(files)} test images: "
                   "evaluate both models on the same data (Thresholds page, or `python -m core evaluate`).")
        st.stop()
    st.plotly_chart(charts.compare_scatter(joined, "PatchCore raw score", "EfficientAD raw score"), width="stretch")
    shapes = [cache.image_shape(files[key]) for key in joined["key"]]
    verdicts = {k: pd.Series([NO_VERDICT if shape is None else verdict_of(models[k], shape, float(score))
                              for shape, score in zip(shapes, joined[f"score_{side}"], strict=True)], index=joined.index)
                for k, side in (("patchcore", "a"), ("efficientad", "b"))}  # the pipeline's size rule and threshold
    verdict_a, verdict_b = verdicts["patchcore"], verdicts["efficientad"]
    unjudged = int(((verdict_a == NO_VERDICT) | (verdict_b == NO_VERDICT)).sum())
    unmatched = "" if not any(only.values()) else (
        " Left out (evaluated by one model only, or no longer in the category): "
        + ", ".join(f"{n} of {label(k)}'s" for k, n in only.items() if n) + ".")
    st.caption(f"Verdicts differ on {int((verdict_a != verdict_b).sum())} of {len(joined)} evaluation images at the "
               "saved thresholds"
               + (f" ({unjudged} got {NO_VERDICT} from a model: too small, or unreadable now)" if unjudged else "")
               + ". Spearman rank correlation "
               f"{np.corrcoef(joined['rank_a'], joined['rank_b'])[0, 1]:.3f}.{unmatched}")
    joined["verdict_a"], joined["verdict_b"] = verdict_a, verdict_b
    joined["differs"] = verdict_a != verdict_b
    agree = not bool(joined["differs"].any())
    st.subheader("Where their rankings differ most" if agree else "Where they disagree most")
    st.caption(("The two models agree on every verdict; below, the images they rank furthest apart. " if agree else
                "The images the two models judge differently come first, then the largest rank gaps. ")
               + "Rank: where an image falls among all evaluation images by that model's score (100% = the most "
               "anomalous). Rank gap: how far apart the two models place it; raw scores are not comparable between "
               "models, ranks are.")
    top = joined.sort_values(["differs", "disagreement"], ascending=False).head(10)
    shown = top[["name", "defect", "verdict_a", "verdict_b", "score_a", "score_b", "rank_a", "rank_b",
                 "disagreement"]].rename(columns={
                     "verdict_a": "PatchCore verdict", "verdict_b": "EfficientAD verdict", "score_a": "PatchCore score",
                     "score_b": "EfficientAD score", "rank_a": "PatchCore rank", "rank_b": "EfficientAD rank",
                     "disagreement": "rank gap"})
    ranks = ["PatchCore rank", "EfficientAD rank", "rank gap"]
    shown[ranks] = 100 * shown[ranks]  # in percent, shown whole: 35%, not 34.62% beside 50%
    st.dataframe(shown, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.0f%%") for c in ranks})
    default_pick = list(top["name"].head(3))
    paths = {name: files[key] for name, key in zip(joined["name"], joined["key"], strict=True)}
else:
    st.info("Evaluate both models (Thresholds page) to see the score scatter and disagreements.")
    paths = {f"{s.defect}/{s.path.name}": str(s.path) for s in data.test}
    default_pick = list(paths)[:2]

st.subheader("Side by side")
picked = st.multiselect("Images", list(paths), default=default_pick, max_selections=8)
opacity = st.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05)
for name in picked:
    image = cache.image_from_path(paths[name])
    cols = st.columns(3)
    small = display_image(image)
    cols[0].image(small, caption=name, width="stretch")
    for col, k in zip(cols[1:], kinds, strict=True):
        m = models[k]
        scored = score_image(sel.inference, m, name, image)  # the one verdict pipeline (size rule, guard) Inspect uses
        if scored.inspection.score is None:
            col.warning(f"{label(k)}: {scored.verdict} ({scored.inspection.note})")
            continue
        col.image(render_overlay(scored, m.calibration, opacity, "jet", True), width="stretch",
                  caption=f"{label(k)}: {scored.inspection.score:.4f} → {scored.verdict}"
                          + ("" if scored.inspection.familiar is not False else " (unfamiliar image)"))
