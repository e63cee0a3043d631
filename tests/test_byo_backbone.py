"""Bring your own backbone: any timm model from a local weights file (or the local cache), never downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from core.cli import main
from core.data.dataset import load_category
from core.data.imageio import load_image
from core.models.backbone import BackboneError, cached_weights, default_layers, feature_layers
from core.store import lifecycle as det
from core.store.model_store import ModelStore

SETTINGS = {"height": 64, "width": 64, "coreset_ratio": 0.1, "batch_size": 8}


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised resnet18 saved as a plain state dict (what a user's download looks like)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18_random.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    return path


def test_layers_offered_per_backbone() -> None:
    assert feature_layers("resnet18") == ("act1", "layer1", "layer2", "layer3", "layer4")
    assert default_layers("resnet18") == ("layer2", "layer3")
    assert default_layers("tf_efficientnet_lite0") == ("blocks.2", "blocks.4")
    with pytest.raises(BackboneError, match="expected a timm backbone with feature maps, found 'no_such_net'"):
        feature_layers("no_such_net")


def test_train_and_score_with_a_local_file_offline(demo_root: Path, tmp_path: Path, resnet18_file: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = load_category(demo_root, "demo_metal")
    store = ModelStore(tmp_path / "models")
    settings = {**SETTINGS, "backbone": "resnet18", "layers": ["layer2", "layer3"], "weights": str(resnet18_file)}
    result = det.train(data, "patchcore", settings, store)
    manifest = store.read_manifest(result.ref)
    assert manifest["backbone"] == "resnet18"
    assert manifest["train"]["backbone_weights"]["file"] == "resnet18_random.pth"
    assert len(manifest["train"]["backbone_weights"]["sha256"]) == 64
    images = [load_image(s.path) for s in data.test[:3]]
    first = det.load(result.ref)
    assert first.detector.embedding_dim == 128 + 256  # layer2 + layer3 of resnet18
    scores = [p.score for p in first.detector.predict(images)]
    moved = resnet18_file.with_suffix(".moved")
    resnet18_file.rename(moved)  # the saved model carries its backbone: the file is not needed any more
    try:
        again = [p.score for p in det.load(result.ref).detector.predict(images)]
    finally:
        moved.rename(resnet18_file)
    assert np.allclose(scores, again, rtol=1e-5)


def test_safetensors_and_the_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    snapshot = tmp_path / "hub" / "models--timm--resnet18.a1_in1k" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert cached_weights("resnet18") == snapshot / "model.safetensors"
    assert cached_weights("resnet50") is None


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: d / "missing.pth", "expected a weights file at .*missing.pth, found nothing there"),
    (lambda d: (d / "notes.txt").write_text("hi") and d / "notes.txt", r"ending in .safetensors, .pth, .pt, .bin"),
    (lambda d: (d / "bad.pth").write_bytes(b"\x00garbage") and d / "bad.pth", "found damaged data"),
    (lambda d: torch.save(timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict(), d / "lite.pth")
     or d / "lite.pth", r"expected weights for resnet18's feature layers, missing \d+ of \d+ keys: \['conv1.weight'"),
    (lambda d: torch.save({k: v[..., :1] if v.ndim == 4 else v for k, v in
                           timm.create_model("resnet18", pretrained=False).state_dict().items()}, d / "cut.pth")
     or d / "cut.pth", r"expected conv1.weight of shape \(64, 3, 7, 7\) for resnet18, found \(64, 3, 7, 1\)"),
])
def test_wrong_files_get_clear_errors(demo_root: Path, tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path)
    data = load_category(demo_root, "demo_metal")
    settings = {**SETTINGS, "backbone": "resnet18", "layers": ["layer2", "layer3"], "weights": str(path)}
    with pytest.raises(BackboneError, match=message):
        det.train(data, "patchcore", settings, ModelStore(tmp_path / "models"))
    assert not (tmp_path / "models" / "demo_metal").exists() or not ModelStore(tmp_path / "models").has_model(
        "demo_metal", "patchcore")


def test_no_file_and_no_cache_says_what_to_do(demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    data = load_category(demo_root, "demo_metal")
    with pytest.raises(BackboneError, match="no offline weights for resnet18: pass a local .safetensors/.pth file"):
        det.train(data, "patchcore", {**SETTINGS, "backbone": "resnet18", "layers": ["layer2"]},
                  ModelStore(tmp_path / "models"))


def test_cli_backbone_and_weights(demo_root: Path, tmp_path: Path, resnet18_file: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "models"
    code = main(["train", "--data", str(demo_root), "--category", "demo_metal", "--store", str(store),
                 "--image-size", "64", "64", "--coreset-ratio", "0.1", "--backbone", "resnet18",
                 "--weights", str(resnet18_file)])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["train"]["backbone_weights"]["file"] == "resnet18_random.pth"
    ref = ModelStore(store).current("demo_metal", "patchcore")
    assert ModelStore(store).read_manifest(ref)["layers"] == ["layer2", "layer3"]
    assert main(["train", "--data", str(demo_root), "--category", "demo_metal", "--store", str(store),
                 "--backbone", "resnet18", "--weights", str(tmp_path / "nope.pth")]) == 2
    assert "expected a weights file at" in capsys.readouterr().err
