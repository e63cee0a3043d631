"""The selection every page works on (data root, category, model, inference path), drawn in the sidebar once
per run by the frame (ui/frame.py); pages read it with ``ui.frame.selection()``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from core.data.dataset import DatasetError, list_categories
from core.data.demo import DEMO_CATEGORY, make_demo_dataset
from core.models.registry import INFERENCE_PATHS, KINDS, label
from core.store.lifecycle import LoadedModel
from core.store.model_store import ModelRef, ModelStore, ModelStoreError
from ui import cache
from ui.settings import AppSettings, load_settings

INFERENCE_LABELS = {"fast": "Fast", "stock": "Stock anomalib"}


@dataclass(frozen=True)
class Selection:
    """What the sidebar selected. ``refs``: the current version of each trained kind of the category."""

    settings: AppSettings
    data_root: Path
    category: str | None
    kind: str
    refs: tuple[ModelRef, ...]
    inference: str = "fast"

    @property
    def store(self) -> ModelStore:
        return ModelStore(self.settings.model_store)

    @property
    def trained_kinds(self) -> tuple[str, ...]:
        return tuple(r.kind for r in self.refs)

    def ref_for(self, kind: str) -> ModelRef | None:
        return next((r for r in self.refs if r.kind == kind), None)

    @property
    def ref(self) -> ModelRef | None:
        """The selected model's current version (None when not trained)."""
        return self.ref_for(self.kind)


def ensure_demo_data(root: Path) -> None:
    """Generate the built-in demo category the first time the app runs on the default data root."""
    if not (root / DEMO_CATEGORY).exists() and root.name == "demo_data":
        make_demo_dataset(root)


def draw() -> Selection:
    """Draw the sidebar and return what it selects (the frame calls this once per run)."""
    settings = load_settings()
    for root in settings.data_roots:
        ensure_demo_data(root)
    with st.sidebar:
        st.markdown("### :material/visibility: Inspector")
        root = st.selectbox("Data root", settings.data_roots, key="data_root", format_func=str,
                            help="Folders this server offers (INSPECT_DATA_ROOT or INSPECT_DATA_ROOTS): one "
                                 "sub-folder per product category (MVTec AD layout) or plain folders of good images.")
        try:
            categories = list_categories(root)
        except DatasetError as exc:
            st.error(str(exc))
            categories = []
        if not categories:
            st.warning("No categories found under this folder.")
            category = None
        else:
            category = st.selectbox("Category", categories, key="category")
        refs = _current_refs(settings, category)
        trained = {r.kind for r in refs}
        kind = st.radio("Model", KINDS, key="kind", horizontal=True,
                        format_func=lambda k: label(k) + ("" if k in trained else " (not trained)"))
        inference = st.radio("Inference", INFERENCE_PATHS, key="inference", horizontal=True,
                             format_func=INFERENCE_LABELS.get,
                             help="Fast: networks in ONNX Runtime, blocked exact (or HNSW) patch search, cheap map "
                                  "smoothing. Stock: anomalib's own PyTorch forward pass. Same scores up to float "
                                  "rounding; see benchmarks/RESULTS.md for the speed difference.")
        current = next((r for r in refs if r.kind == kind), None)
        st.caption(f"Model in use: **{current.label}**" if current else "Model in use: none")
        st.caption(f"Models: `{settings.model_store}`")
    return Selection(settings, Path(root), category, kind, refs, inference)


def _current_refs(settings: AppSettings, category: str | None) -> tuple[ModelRef, ...]:
    if category is None:
        return ()
    return tuple(r.ref for r in ModelStore(settings.model_store).list_models(category) if r.ok and r.ref)


def require_model(sel: Selection) -> LoadedModel:
    """The selected category's current model of the selected kind, or a friendly message and ``st.stop()``."""
    if sel.category is None or sel.ref is None:
        st.info(f"Train a {label(sel.kind)} model for this category on the **Models** page first.")
        st.stop()
    try:
        return cache.load_model(sel.ref, sel.inference)
    except ModelStoreError as exc:
        st.error(f"Cannot load the model: {exc}")
        st.stop()
