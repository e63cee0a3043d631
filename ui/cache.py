"""All Streamlit caching in one place: models with ``cache_resource``, results with ``cache_data``.

Models are keyed on a :class:`ModelRef` and the identity of the files behind it (weights, calibration,
evaluation), so a change made anywhere (another tab, the CLI, a hand edit) is seen at the next rerun, and
versions that share their weights (thresholds saved) share one loaded network.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from core import detector as det
from core.calibration import Calibration
from core.dataset import CategoryData, legacy_key, load_category
from core.imageio import load_image
from core.metrics import PixelHistogram
from core.patchcore import PatchCore, PatchCoreConfig
from core.similarity import SimilarityIndex, open_client
from core.store import ModelRef, ModelStore
from ui.display import display_map


def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else 0.0


def weights_key(ref: ModelRef) -> str:
    """Changes whenever the weights behind ``ref`` change; equal for versions sharing their weights."""
    return f"{ref.store}|{ref.category}|{ref.kind}|{ModelStore(ref.store).weights_stamp(ref)}"


def calibration_key(ref: ModelRef) -> str:
    """Changes with any edit of the version's calibration, wherever it was made."""
    return ModelStore(ref.store).calibration_stamp(ref)


@st.cache_resource(show_spinner="Loading model and warming it up… (a memory bank of more than 16k patches also "
                                "builds its search index here: about a minute per 800k patches)", max_entries=8)
def _load_network(key: str, inference: str, _ref: ModelRef) -> det.LoadedModel:
    return det.load(_ref, inference)


@st.cache_data(show_spinner=False, max_entries=64)
def _calibration(ref: ModelRef, key: str) -> Calibration:
    return det.read_calibration(ref)


def load_model(ref: ModelRef, inference: str = "fast") -> det.LoadedModel:
    """The model version ``ref``: the network cached on its weights, with the manifest and calibration as
    they are on disk NOW (a change made in the CLI, another tab or by hand is used at the next rerun)."""
    model = _load_network(weights_key(ref), inference, ref)
    calibration = _calibration(ref, calibration_key(ref))
    manifest = ModelStore(ref.store).read_manifest(ref) if model.ref != ref else model.manifest
    if model.ref == ref and calibration == model.calibration:
        return model
    return replace(model, ref=ref, manifest=manifest, calibration=calibration)


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


def category(root: Path, name: str) -> CategoryData:
    """The category's images as they are now (re-read when a folder of it changed)."""
    return category_data(str(root), name, data_version(str(root), name))


@st.cache_data(show_spinner=False, max_entries=256)
def image_from_path(path: str) -> np.ndarray:
    return load_image(path)


@st.cache_data(show_spinner=False, max_entries=512)
def _predict_one(key: str, inference: str, digest: str, _ref: ModelRef,
                 _image: np.ndarray) -> tuple[float, np.ndarray, float]:
    model = _load_network(key, inference, _ref)
    pred = model.detector.predict([_image])[0]
    return pred.score, display_map(pred.anomaly_map), pred.latency_ms


def predict_one(ref: ModelRef, inference: str, image: np.ndarray) -> tuple[float, np.ndarray, float]:
    """(raw score, map at display size, latency ms), cached per weights and image digest (not pixels).

    The map is the model's map at the original image size, downscaled only if the image is larger than
    the display limit (so huge uploads do not fill the cache).
    """
    return _predict_one(weights_key(ref), inference, digest(image), ref, image)


def digest(data: bytes | np.ndarray) -> str:
    raw = data if isinstance(data, bytes) else np.ascontiguousarray(data).tobytes()
    return hashlib.sha1(raw).hexdigest()


@st.cache_data(show_spinner=False)
def _eval_images(ref: ModelRef, stamp: str) -> pd.DataFrame | None:
    raw = ModelStore(ref.store).read_eval_images(ref)
    if raw is None:
        return None
    frame = pd.read_csv(io.BytesIO(raw))
    if "key" not in frame:  # evaluated before images had keys
        frame["key"] = frame["path"].map(legacy_key)
    return frame


@st.cache_data(show_spinner=False)
def _eval_pixels(ref: ModelRef, stamp: str) -> PixelHistogram | None:
    raw = ModelStore(ref.store).read_eval_pixels(ref)
    if raw is None:
        return None
    with np.load(io.BytesIO(raw)) as data:
        if "edges" not in data:
            return None
        return PixelHistogram(data["edges"], data["good"], data["defect"])


def eval_images(ref: ModelRef) -> pd.DataFrame | None:
    """The version's per-image evaluation (raw scores; one row per image, identified by ``key``), or None when
    it was not evaluated."""
    return _eval_images(ref, ModelStore(ref.store).evaluation_stamp(ref))


def eval_pixels(ref: ModelRef) -> PixelHistogram | None:
    """The version's pixel-score histograms, or None (not evaluated, or no masks)."""
    return _eval_pixels(ref, ModelStore(ref.store).evaluation_stamp(ref))


def clear_model_caches() -> None:
    _load_network.clear()
    _calibration.clear()
    _predict_one.clear()
    _eval_images.clear()
    _eval_pixels.clear()
