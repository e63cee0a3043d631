"""Shared fixtures: small synthetic MVTec-style data generated per session, tiny trained models."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Small, fast settings used by every test that trains a model.
PATCHCORE_TEST_SETTINGS = {"height": 64, "width": 64, "coreset_ratio": 0.1, "batch_size": 8}
EFFICIENTAD_TEST_SETTINGS = {"height": 256, "width": 256, "steps": 3, "batch_size": 8}


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MVTec-style category ``demo_metal`` with painted scratches and spots, 64x64 px."""
    from core.data.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("data")
    make_demo_dataset(root, n_train=16, n_test_good=6, n_per_defect=5, size=64, seed=3)
    return root


@pytest.fixture(scope="session")
def trained_store(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store with a PatchCore and an EfficientAD model for ``demo_metal``, both evaluated."""
    from core.data.dataset import load_category
    from core.store import lifecycle as det
    from core.store.model_store import ModelStore

    store = ModelStore(tmp_path_factory.mktemp("models"))
    data = load_category(demo_root, "demo_metal")
    for kind, settings in (("patchcore", PATCHCORE_TEST_SETTINGS), ("efficientad", EFFICIENTAD_TEST_SETTINGS)):
        det.train(data, kind, settings, store)
        det.run_evaluation(det.load(store.current("demo_metal", kind)), data)
    return store.root


def rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
