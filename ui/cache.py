"""All Streamlit caching in one place: models with ``cache_resource``, results with ``cache_data``.

Models come from one process-wide :class:`core.store.model_cache.ModelCache` (held by ``cache_resource``), the same
policy the service and the watch folder use: networks in an LRU keyed on the identity of their weights
(``INSPECT_MODEL_CACHE_SIZE``, default 4), each loaded under its own lock, the calibration and manifest re-read
when their files change. So a change made anywhere (another tab, the CLI, a hand edit) is seen at the next
rerun, and versions that share their weights (thresholds saved) share one loaded network. Results are keyed on
the same weights identity and the files behind a version (evaluation).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from core.data.dataset import CategoryData, legacy_key, load_category
from core.data.imageio import header_shape, load_image
from core.models.patchcore import PatchCore, PatchCoreConfig
from core.models.similarity import SimilarityIndex, open_client
from core.scores.metrics import PixelHistogram
from core.store import lifecycle as det
from core.store import model_cache
from core.store.history import History
from core.store.model_store import ModelRef, ModelStore
from core.types import Prediction
from core.verdict.inspection import Measurement, Measurer
from ui.display import display_map


def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else 0.0


def calibration_key(ref: ModelRef) -> str:
    """Changes with any edit of the version's calibration, wherever it was made
    (:func:`core.store.model_cache.calibration_key`: the rule lives there)."""
    return model_cache.calibration_key(ref)


LOADING = ("Loading model and warming it up… (a memory bank of more than 16k patches also builds its search "
           "index here: about a minute per 800k patches)")


@st.cache_resource(show_spinner=False)
def models() -> model_cache.ModelCache:
    """The process's loaded models (one for every session and page; sized by ``INSPECT_MODEL_CACHE_SIZE``)."""
    return model_cache.ModelCache()


def load_model(ref: ModelRef, inference: str = "fast") -> det.LoadedModel:
    """The model version ``ref``: the network cached on its weights, with the manifest and calibration as
    they are on disk NOW (a change made in the CLI, another tab or by hand is used at the next rerun)."""
    held = models()
    if held.is_loaded(ref, inference):
        return held.get(ref, inference)
    with st.spinner(LOADING):
        return held.get(ref, inference)


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


@st.cache_data(show_spinner=False, max_entries=4096)
def _image_shape(path: str, stamp: float) -> tuple[int, int] | None:
    return header_shape(path)


def image_shape(path: str) -> tuple[int, int] | None:
    """(H, W) of the image at ``path`` as it is decoded (EXIF orientation applied), read from its header and
    cached per file change; None when it cannot be read now."""
    return _image_shape(path, _mtime(Path(path)))


@st.cache_data(show_spinner=False, max_entries=512)
def _measure_one(key: str, inference: str, digest: str, _ref: ModelRef, _image: np.ndarray) -> Measurement:
    found = Measurement.of(models().get(_ref, inference).detector.predict([_image])[0])
    return replace(found, anomaly_map=display_map(found.anomaly_map))  # the guard's statistic stays full-size


def measurer(ref: ModelRef, inference: str) -> Measurer:
    """The dashboard's measurer for :func:`core.verdict.inspection.inspect`: one measurement per weights and
    image digest (not pixels), the map kept at display size (downscaled only above the display limit, so huge
    uploads do not fill the cache) and the guard's statistic taken from the full-size map, as the service does."""
    return lambda images: [_measure_one(model_cache.weights_key(ref), inference, digest(image), ref, image) for image in images]


def predict_one(ref: ModelRef, inference: str, image: np.ndarray) -> tuple[float, np.ndarray, float]:
    """(raw score, map at display size, latency ms) of one image, through the same cache as :func:`measurer`."""
    found = measurer(ref, inference)([image])[0]
    return found.score, found.anomaly_map, found.latency_ms


def predictions(ref: ModelRef, inference: str, images: list[np.ndarray]) -> list[Prediction]:
    """Raw predictions (maps at full size, not cached) of ``images`` by the cached model ``ref``: what a
    calibration is fitted from (a display-size map would lower its maxima)."""
    return load_model(ref, inference).detector.predict(images)


@st.cache_resource(show_spinner=False)
def _history(store_root: str, line_log: str) -> History:
    return History.open(Path(store_root), line_log=Path(line_log))


def line_history(store_root: Path, line_log: Path) -> History:
    """The results database of the store (one per process), with what is new in the JSONL line log imported
    (nothing when the service and the watch folder wrote their rows there directly)."""
    history = _history(str(Path(store_root).resolve()), str(Path(line_log).resolve()))
    history.import_logs(Path(store_root), Path(line_log))
    return history


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
    models().clear()
    _measure_one.clear()
    _eval_images.clear()
    _eval_pixels.clear()
