"""The sidebar shared by every page: data root, category and model choice."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from core.dataset import DatasetError, list_categories
from core.demo import DEMO_CATEGORY, make_demo_dataset
from core.detector import INFERENCE_PATHS, KINDS, LoadedModel
from core.store import ModelStore, ModelStoreError
from ui import cache
from ui.settings import AppSettings, load_settings

KIND_LABELS = {"patchcore": "PatchCore", "efficientad": "EfficientAD"}
INFERENCE_LABELS = {"fast": "Fast", "stock": "Stock anomalib"}


@dataclass(frozen=True)
class Selection:
    settings: AppSettings
    data_root: Path
    category: str | None
    kind: str
    trained_kinds: tuple[str, ...]
    inference: str = "fast"

    @property
    def store(self) -> ModelStore:
        return ModelStore(self.settings.model_store)

    @property
    def store_path(self) -> str:
        return str(self.settings.model_store)


def ensure_demo_data(root: Path) -> None:
    """Generate the built-in demo category the first time the app runs on the default data root."""
    if not (root / DEMO_CATEGORY).exists() and root.name == "demo_data":
        make_demo_dataset(root)


def sidebar() -> Selection:
    settings = load_settings()
    ensure_demo_data(settings.data_root)
    with st.sidebar:
        st.markdown("### :material/visibility: Inspector")
        root_text = st.text_input("Data root", value=str(settings.data_root), key="data_root",
                                  help="Folder with one sub-folder per product category (MVTec AD layout) "
                                       "or plain folders of good images.")
        root = Path(root_text).expanduser()
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
        trained = tuple(r.kind for r in ModelStore(settings.model_store).list_models(category) if r.ok) if category else ()
        kind = st.radio("Model", KINDS, key="kind", horizontal=True, format_func=lambda k: KIND_LABELS[k]
                        + ("" if k in trained else " (not trained)"))
        inference = st.radio("Inference", INFERENCE_PATHS, key="inference", horizontal=True,
                             format_func=INFERENCE_LABELS.get,
                             help="Fast: networks in ONNX Runtime, blocked exact (or HNSW) patch search, cheap map "
                                  "smoothing. Stock: anomalib's own PyTorch forward pass. Same scores up to float "
                                  "rounding; see benchmarks/RESULTS.md for the speed difference.")
        st.caption(f"Models: `{settings.model_store}`")
    return Selection(settings, root, category, kind, trained, inference)


def require_model(sel: Selection) -> LoadedModel:
    """The selected category's model of the selected kind, or a friendly message and ``st.stop()``."""
    if sel.category is None or sel.kind not in sel.trained_kinds:
        st.info(f"Train a {KIND_LABELS[sel.kind]} model for this category on the **Models** page first.")
        st.stop()
    try:
        return cache.load_model(sel.store_path, sel.category, sel.kind, sel.inference)
    except ModelStoreError as exc:
        st.error(f"Cannot load the model: {exc}")
        st.stop()
