"""The model cache (issue 22, row 8): an LRU of loaded networks keyed by weights identity, one lock per key, the
calibration re-read without reloading; the dashboard's ``ui.cache`` uses the same cache.

Networks are not loaded here: a counting (and, where needed, deliberately slow) loader is injected, so the
tests are about the policy, not about torch.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.files import atomic_write_bytes
from core.scores.calibration import Calibration
from core.settings import model_cache_size
from core.store import lifecycle as det
from core.store import model_cache
from core.store.model_cache import ModelCache
from core.store.model_store import ModelRef, ModelStore
from core.types import Prediction


def _calibration(threshold: float = 2.0) -> dict[str, Any]:
    return Calibration(image_threshold=threshold, pixel_threshold=3.0, good_score_mean=1.0, good_score_std=0.2,
                       good_score_max=1.5, good_map_max_mean=1.2, good_map_max_std=0.3, num_images=8,
                       source="test", review_below=0.0, review_above=0.0).to_dict()  # two verdicts


def _manifest(category: str) -> dict[str, Any]:
    return {"category": category, "kind": "patchcore", "backbone": "b", "settings": {}, "versions": {}}


def _version(store: ModelStore, category: str, seed: int, parent: ModelRef | None = None) -> ModelRef:
    """A new version with its own weights (``seed``), or sharing ``parent``'s when ``seed`` < 0."""
    weights = None if seed < 0 else {"x": seed}
    return store.create_version(category, "patchcore", _manifest(category), _calibration(2.0 + max(seed, 0)),
                                reason="test", weights=weights, parent=parent)


class CountingLoader:
    """Stands in for ``det.load``: counts loads per ref, optionally sleeping (a slow network) for some."""

    def __init__(self, slow: dict[str, threading.Event] | None = None) -> None:
        self.loads: list[ModelRef] = []
        self.slow = slow or {}
        self.started: dict[str, threading.Event] = {c: threading.Event() for c in self.slow}
        self._lock = threading.Lock()

    def __call__(self, ref: ModelRef, inference: str) -> det.LoadedModel:
        with self._lock:
            self.loads.append(ref)
        if ref.category in self.slow:
            self.started[ref.category].set()
            assert self.slow[ref.category].wait(20), "the slow load was never released"
        store = ModelStore(ref.store)
        return det.LoadedModel(ref, object(), store.read_manifest(ref), det.read_calibration(ref))  # type: ignore[arg-type]


def test_alternating_versions_load_each_once(tmp_path: Path) -> None:
    """`?version=3` and `?version=4` alternating: two loads in all (the old one-slot cache reloaded each time)."""
    store = ModelStore(tmp_path)
    v1, v2 = _version(store, "cat", 1), _version(store, "cat", 2)
    loader = CountingLoader()
    cache = ModelCache(store, size=4, loader=loader)
    for _ in range(5):
        assert cache.get(v1).ref == v1
        assert cache.get(v2).ref == v2
    assert loader.loads == [v1, v2]
    assert cache.get(v1).calibration.image_threshold == 3.0 and cache.get(v2).calibration.image_threshold == 4.0
    stats = cache.stats()
    assert (stats.loads, stats.held, stats.evictions) == (2, 2, 0)


def test_versions_sharing_weights_share_one_network(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    v1 = _version(store, "cat", 1)
    v2 = _version(store, "cat", -1, parent=v1)  # thresholds saved: weights hard-linked
    loader = CountingLoader()
    cache = ModelCache(store, loader=loader)
    a, b = cache.get(v1), cache.get(v2)
    assert loader.loads == [v1]
    assert a.detector is b.detector and b.ref == v2 and b.manifest["version"] == 2
    assert cache.current("cat", "patchcore").ref == v2


def test_a_slow_load_of_one_category_does_not_block_another(tmp_path: Path) -> None:
    """One lock per key: while ``slow`` is loading, ``fast`` loads and is served; a second request for
    ``slow`` waits for the first load and does not load again."""
    store = ModelStore(tmp_path)
    slow, fast = _version(store, "slow", 1), _version(store, "fast", 2)
    release = threading.Event()
    loader = CountingLoader(slow={"slow": release})
    cache = ModelCache(store, loader=loader)
    got: dict[str, det.LoadedModel] = {}
    first = threading.Thread(target=lambda: got.setdefault("slow1", cache.get(slow)))
    second = threading.Thread(target=lambda: got.setdefault("slow2", cache.get(slow)))
    first.start()
    assert loader.started["slow"].wait(10)
    second.start()
    t0 = time.perf_counter()
    assert cache.get(fast).ref == fast  # not blocked by the slow load in progress
    assert time.perf_counter() - t0 < 5
    assert first.is_alive() and second.is_alive()
    release.set()
    first.join(10)
    second.join(10)
    assert got["slow1"].detector is got["slow2"].detector
    assert [r.category for r in loader.loads].count("slow") == 1


def test_a_changed_calibration_is_reread_without_reloading(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    v1 = _version(store, "cat", 1)
    loader = CountingLoader()
    cache = ModelCache(store, loader=loader)
    before = cache.get(v1)
    assert before.calibration.image_threshold == 3.0
    store.write_calibration(v1, _calibration(7.5))
    after = cache.get(v1)
    assert after.calibration.image_threshold == 7.5 and after.detector is before.detector
    assert cache.get(v1) is after  # read once per change, not per request
    assert loader.loads == [v1]


def test_a_changed_weights_file_reloads(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    v1 = _version(store, "cat", 1)
    loader = CountingLoader()
    cache = ModelCache(store, loader=loader)
    first = cache.get(v1)
    weights = store.path(v1) / "weights.pt"
    data = weights.read_bytes()
    weights.unlink()
    weights.write_bytes(data + b"\0")  # rewritten by hand: another inode, size and mtime
    second = cache.get(v1)
    assert loader.loads == [v1, v1] and second.detector is not first.detector


def test_the_least_recently_used_network_is_dropped(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    refs = [_version(store, "cat", i) for i in range(1, 4)]
    loader = CountingLoader()
    cache = ModelCache(store, size=2, loader=loader)
    cache.get(refs[0])
    cache.get(refs[1])
    cache.get(refs[0])  # refs[1] is now the least recently used
    cache.get(refs[2])  # drops refs[1]
    assert cache.is_loaded(refs[0]) and cache.is_loaded(refs[2]) and not cache.is_loaded(refs[1])
    cache.get(refs[0])
    assert loader.loads == [refs[0], refs[1], refs[2]]
    cache.get(refs[1])
    assert loader.loads[-1] == refs[1] and cache.stats().evictions == 2 and cache.stats().held == 2


def test_inference_paths_are_separate_networks(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    v1 = _version(store, "cat", 1)
    loader = CountingLoader()
    cache = ModelCache(store, loader=loader)
    assert cache.get(v1, "fast").detector is not cache.get(v1, "stock").detector
    assert len(loader.loads) == 2


def test_the_cache_size_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INSPECT_MODEL_CACHE_SIZE", raising=False)
    assert model_cache_size() == 4 and ModelCache().size == 4
    monkeypatch.setenv("INSPECT_MODEL_CACHE_SIZE", "9")
    assert ModelCache().size == 9
    for bad in ("0", "two"):
        monkeypatch.setenv("INSPECT_MODEL_CACHE_SIZE", bad)
        with pytest.raises(ValueError, match=rf"INSPECT_MODEL_CACHE_SIZE: expected a whole number of at least 1, found '{bad}'"):
            ModelCache()


def test_the_dashboard_uses_the_same_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ui.cache.load_model delegates to one process-wide core ModelCache: the rule lives once."""
    from ui import cache as ui_cache

    store = ModelStore(tmp_path)
    v1 = _version(store, "cat", 1)
    v2 = _version(store, "cat", 2)
    loader = CountingLoader()
    held = ModelCache(loader=loader)
    monkeypatch.setattr(ui_cache, "models", lambda: held)
    for _ in range(3):
        assert ui_cache.load_model(v1).ref == v1 and ui_cache.load_model(v2).ref == v2
    assert loader.loads == [v1, v2]
    store.write_calibration(v2, _calibration(9.0))
    assert ui_cache.load_model(v2).calibration.image_threshold == 9.0 and len(loader.loads) == 2
    assert ui_cache.calibration_key(v2) == model_cache.calibration_key(v2)
    assert not hasattr(ui_cache, "_load_network")  # no second cache of networks beside the core one


class WeighingDetector:
    """Scores every image with the size of the weights file it was loaded from (so a reload shows)."""

    def __init__(self, weights: Path) -> None:
        self.score = float(weights.stat().st_size)
        self.calls = 0

    def predict(self, images: list[np.ndarray]) -> list[Prediction]:
        self.calls += len(images)
        return [Prediction(self.score, np.full(image.shape[:2], 0.5, np.float32), 1.0) for image in images]


def test_the_dashboard_sees_a_new_calibration_without_reloading_and_new_weights_by_reloading(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the dashboard's own calls (ui.cache.load_model, ui.inspect_view.score_image): calibration.json
    rewritten -> the next call judges with the new threshold, no network loaded and no image scored again;
    weights rewritten -> the network is loaded again and the image scored again. Fails if ui.cache kept an
    identity rule of its own (keyed on the version, or on a stamp the core cache does not use)."""
    from ui import cache as ui_cache
    from ui.inspect_view import score_image

    store = ModelStore(tmp_path)
    v1 = _version(store, "cat", 1)
    detectors: list[WeighingDetector] = []

    def loader(ref: ModelRef, inference: str) -> det.LoadedModel:
        detectors.append(WeighingDetector(store.path(ref) / "weights.pt"))
        return det.LoadedModel(ref, detectors[-1], store.read_manifest(ref), det.read_calibration(ref))  # type: ignore[arg-type]

    held = ModelCache(loader=loader)
    monkeypatch.setattr(ui_cache, "models", lambda: held)
    ui_cache.clear_model_caches()
    image = np.zeros((32, 32, 3), np.uint8)

    def shown() -> tuple[str, float | None]:
        found = score_image("fast", ui_cache.load_model(v1), "part.png", image).inspection
        return found.verdict, found.score

    size = (store.path(v1) / "weights.pt").stat().st_size
    try:
        store.write_calibration(v1, _calibration(size + 1.0))
        assert shown() == ("OK", size) and shown() == ("OK", size)
        assert len(detectors) == 1 and detectors[0].calls == 1  # loaded once, scored once
        store.write_calibration(v1, _calibration(size - 1.0))  # a hand edit, the CLI, another tab
        assert shown() == ("DEFECT", size)
        assert len(detectors) == 1 and detectors[0].calls == 1  # judged again, not loaded or scored again
        atomic_write_bytes(store.path(v1) / "weights.pt", b"new weights, another size" * 7)
        bigger = (store.path(v1) / "weights.pt").stat().st_size
        assert bigger != size and shown() == ("DEFECT" if bigger >= size - 1.0 else "OK", bigger)
        assert len(detectors) == 2 and detectors[1].calls == 1  # the new weights loaded and used
    finally:
        ui_cache.clear_model_caches()
