"""Offline ImageNet weights: strict load, sensible prediction, correct key mapping."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.models.backbone import (
    BackboneError,
    convert_lukemelas_state_dict,
    create_classifier,
    load_into_feature_extractor,
    weights_path,
)

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_strict_load_and_cat_prediction(backbone: str) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    model, report = create_classifier(backbone)
    assert report.missing_keys == () and report.unexpected_keys == ()
    assert report.num_tensors == len(model.state_dict())
    image = torch.from_numpy(skimage_data.chelsea()).permute(2, 0, 1).float()[None] / 255.0
    x = (F.interpolate(image, size=(224, 224), mode="bilinear", antialias=True) - 0.5) / 0.5
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    assert int(probs.argmax()) in CAT_CLASSES
    assert float(probs[list(CAT_CLASSES)].sum()) > 0.5


def test_feature_extractor_gets_every_tensor() -> None:
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True, out_indices=(2, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_into_feature_extractor(model, "tf_efficientnet_lite0")
    assert report.missing_keys == ()
    assert "classifier.weight" in report.unexpected_keys
    changed = sum(not torch.equal(before[k], v) for k, v in model.state_dict().items() if k.endswith("weight"))
    assert changed > 0.9 * sum(k.endswith("weight") for k in before)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("_conv_stem.weight", "conv_stem.weight"),
        ("_bn0.running_mean", "bn1.running_mean"),
        ("_blocks.0._depthwise_conv.weight", "blocks.0.0.conv_dw.weight"),
        ("_blocks.0._project_conv.weight", "blocks.0.0.conv_pw.weight"),
        ("_blocks.0._bn2.bias", "blocks.0.0.bn2.bias"),
        ("_blocks.1._expand_conv.weight", "blocks.1.0.conv_pw.weight"),
        ("_blocks.1._bn0.weight", "blocks.1.0.bn1.weight"),
        ("_blocks.2._depthwise_conv.weight", "blocks.1.1.conv_dw.weight"),
        ("_blocks.2._bn1.weight", "blocks.1.1.bn2.weight"),
        ("_blocks.3._project_conv.weight", "blocks.2.0.conv_pwl.weight"),
        ("_blocks.3._bn2.weight", "blocks.2.0.bn3.weight"),
        ("_conv_head.weight", "conv_head.weight"),
        ("_bn1.weight", "bn2.weight"),
        ("_fc.bias", "classifier.bias"),
    ],
)
def test_key_mapping(key: str, expected: str) -> None:
    state = {k: torch.zeros(1) for k in ["_blocks.1._expand_conv.weight", "_blocks.2._expand_conv.weight",
                                        "_blocks.3._expand_conv.weight", key]}
    out = convert_lukemelas_state_dict(state, [1, 2, 2])
    assert expected in out


def test_unknown_backbone_is_refused() -> None:
    with pytest.raises(BackboneError, match="expected one of"):
        weights_path("wide_resnet50_2")


def test_unknown_key_is_refused() -> None:
    with pytest.raises(BackboneError, match="unknown"):
        convert_lukemelas_state_dict({"_mystery.weight": torch.zeros(1)}, [1])
