"""All Streamlit caching in one place: models with ``cache_resource``, results with ``cache_data``.

Cached functions take plain, hashable arguments (paths as strings, a file's mtime to invalidate).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from core import detector as det
from core.calibration import Calibration
from core.dataset import CategoryData, load_category
from core.imageio import load_image
from core.metrics import PixelHistogram
from core.patchcore import PatchCore, PatchCoreConfig
from core.similarity import SimilarityIndex, open_client
from core.store import EVAL_IMAGES, EVAL_PIXELS, ModelStore
from ui.display import display_map


def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else 0.0


def model_version(store: str, category: str, kind: str) -> str:
    """Changes whenever the model's weights are rewritten (used as a cache key)."""
    return ModelStore(store).weights_stamp(category, kind)


def calibration_version(store: str, category: str, kind: str) -> str:
    """Changes with any edit of the model's calibration, wherever it was made."""
    return ModelStore(store).calibration_stamp(category, kind)


@st.cache_resource(show_spinner="Loading model and warming it up… (a memory bank of more than 16k patches also "
                                "builds its search index here: about a minute per 800k patches)", max_entries=8)
def _load_network(store: str, category: str, kind: str, version: str, inference: str) -> det.LoadedModel:
    return det.load(ModelStore(store), category, kind, inference)


@st.cache_data(show_spinner=False, max_entries=64)
def _calibration(store: str, category: str, kind: str, version: str) -> Calibration:
    return det.read_calibration(ModelStore(store), category, kind)


def load_model(store: str, category: str, kind: str, inference: str = "fast") -> det.LoadedModel:
    """The model, cached on its weights, with the calibration saved beside it NOW (cached on the file's
    digest, so a change made in the CLI, another tab or by hand is used at the next rerun)."""
    model = _load_network(store, category, kind, model_version(store, category, kind), inference)
    calibration = _calibration(store, category, kind, calibration_version(store, category, kind))
    return model if calibration == model.calibration else replace(model, calibration=calibration)


@st.cache_resource(show_spinner="Loading feature extractor…")
def feature_extractor(backbone: str) -> PatchCore:
    return PatchCore(PatchCoreConfig(backbone=backbone))


@st.cache_resource
def similarity_index(local_path: str, url: str | None) -> SimilarityIndex:
    return SimilarityIndex(open_client(local_path, url))


@st.cache_data(show_spinner=False, max_entries=64)
def category_data(root: str, category: str, version: float) -> CategoryData:
    return load_category(root, category)


def data_version(root: str, category: str) -> float:
    base = Path(root) / category
    return max((_mtime(p) for p in (base / "test", base / "ground_truth", base / "train" / "good")), default=0.0)


@st.cache_data(show_spinner=False, max_entries=256)
def image_from_path(path: str) -> np.ndarray:
    return load_image(path)


@st.cache_data(show_spinner=False, max_entries=512)
def predict_one(store: str, category: str, kind: str, version: str, inference: str, digest: str,
                _image: np.ndarray) -> tuple[float, np.ndarray, float]:
    """(raw score, map at display size, latency ms); keyed by the image's digest, not its pixels.

    The map is the model's map at the original image size, downscaled only if the image is larger than
    the display limit (so huge uploads do not fill the cache).
    """
    model = _load_network(store, category, kind, version, inference)
    pred = model.detector.predict([_image])[0]
    return pred.score, display_map(pred.anomaly_map), pred.latency_ms


def digest(data: bytes | np.ndarray) -> str:
    raw = data if isinstance(data, bytes) else np.ascontiguousarray(data).tobytes()
    return hashlib.sha1(raw).hexdigest()


@st.cache_data(show_spinner=False)
def eval_images(store: str, category: str, kind: str, version: float) -> pd.DataFrame | None:
    path = Path(store) / category / kind / EVAL_IMAGES
    if not path.is_file():
        return None
    return pd.read_csv(path)


@st.cache_data(show_spinner=False)
def eval_pixels(store: str, category: str, kind: str, version: float) -> PixelHistogram | None:
    path = Path(store) / category / kind / EVAL_PIXELS
    if not path.is_file():
        return None
    with np.load(path) as data:
        if "edges" not in data:
            return None
        return PixelHistogram(data["edges"], data["good"], data["defect"])


def eval_version(store: str, category: str, kind: str) -> float:
    return _mtime(Path(store) / category / kind / EVAL_IMAGES)


def clear_model_caches() -> None:
    _load_network.clear()
    _calibration.clear()
    predict_one.clear()
    eval_images.clear()
    eval_pixels.clear()
