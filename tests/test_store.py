"""Model store: atomic folders, clear errors for corrupt or half-written models, others unaffected."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from core import detector as det
from core.store import ModelStore, ModelStoreError, atomic_write_json


@pytest.fixture()
def store_copy(trained_store: Path, tmp_path: Path) -> ModelStore:
    shutil.copytree(trained_store, tmp_path / "models")
    return ModelStore(tmp_path / "models")


def test_listing_trained_models(store_copy: ModelStore) -> None:
    records = store_copy.list_models()
    assert {(r.category, r.kind) for r in records} == {("demo_metal", "patchcore"), ("demo_metal", "efficientad")}
    assert all(r.ok for r in records)
    for r in records:
        files = {p.name for p in r.path.iterdir()}
        assert {"manifest.json", "weights.pt", "calibration.json", "evaluation.json", "eval_images.csv",
                "eval_pixels.npz"} <= files
        assert not any(name.endswith(".tmp") for name in files)
        assert set(r.manifest["metrics"]) >= {"image_auroc", "pixel_auroc", "aupro", "f1_max", "latency_ms_mean"}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: (p / "weights.pt").write_bytes(b"\x00garbage"), "damaged data"),
        (lambda p: (p / "weights.pt").unlink(), "found no file"),
        (lambda p: (p / "manifest.json").write_text("{ half a json"), "valid JSON"),
        (lambda p: (p / "manifest.json").unlink(), "expected a JSON file"),
        (lambda p: (p / "calibration.json").write_text("[]"), "JSON object"),
        (lambda p: atomic_write_json(p / "manifest.json", {"kind": "patchcore"}), "expected keys"),
    ],
)
def test_corrupt_model_gives_clear_error_and_spares_others(store_copy: ModelStore, damage, message: str) -> None:
    damage(store_copy.folder("demo_metal", "patchcore"))
    with pytest.raises(ModelStoreError, match=message) as info:
        det.load(store_copy, "demo_metal", "patchcore")
    assert "patchcore" in str(info.value)
    other = det.load(store_copy, "demo_metal", "efficientad")  # the other model still loads
    assert other.kind == "efficientad"


def test_weights_of_wrong_shape(store_copy: ModelStore) -> None:
    folder = store_copy.folder("demo_metal", "patchcore")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["settings"]["layers"] = ["blocks.4"]  # bank has 152 dims, settings now say 112
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelStoreError, match="expected memory-bank features of 112 dims.*found 152"):
        det.load(store_copy, "demo_metal", "patchcore")


def test_broken_folder_listed_with_error(store_copy: ModelStore) -> None:
    (store_copy.root / "demo_metal" / "halfwritten").mkdir()
    records = {r.kind: r for r in store_copy.list_models("demo_metal")}
    assert not records["halfwritten"].ok and "expected a JSON file" in records["halfwritten"].error
    assert records["patchcore"].ok and records["efficientad"].ok


def test_hidden_temp_folders_ignored(store_copy: ModelStore) -> None:
    (store_copy.root / "demo_metal" / ".patchcore.tmp-123").mkdir()
    assert {r.kind for r in store_copy.list_models()} == {"patchcore", "efficientad"}


def test_rewrite_replaces_atomically(store_copy: ModelStore) -> None:
    folder = store_copy.write_model("cat", "patchcore", {"x": 1}, {"category": "cat", "kind": "patchcore"}, {"a": 1})
    store_copy.write_model("cat", "patchcore", {"x": 2}, {"category": "cat", "kind": "patchcore"}, {"a": 2})
    assert json.loads((folder / "calibration.json").read_text()) == {"a": 2}
    assert sorted(p.name for p in folder.parent.iterdir()) == ["patchcore"]


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden"])
def test_unsafe_names_refused(store_copy: ModelStore, name: str) -> None:
    with pytest.raises(ModelStoreError, match="plain folder name"):
        store_copy.folder(name, "patchcore")


def test_missing_model_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelStoreError, match="found nothing there"):
        det.load(ModelStore(tmp_path), "nope", "patchcore")
