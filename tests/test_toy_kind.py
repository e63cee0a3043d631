"""docs/ARCHITECTURE.md's "how to add a kind", walked through: a toy kind (a detector over mean pixel values) added
through the registry's public API only -- no product file changed -- trains, saves, loads, inspects and gets its CLI
flags like the product's own kinds."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from core.models.registry import (
    IMAGE_SIZE,
    Detector,
    DetectorConfig,
    FeedbackLearner,
    KindSpec,
    Option,
    kinds,
    register,
    spec,
    unregister,
)
from core.types import NO_CONTROL, Prediction, TrainControl

TOY = "toy_mean"


@dataclass(frozen=True)
class MeanPixelConfig:
    """The toy's settings: input size and ``gain``, the factor on the map (its own CLI flag ``--gain``)."""

    height: int = 32
    width: int = 32
    gain: float = 1.0

    @property
    def backbone(self) -> str:
        return "none (mean pixel value)"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> MeanPixelConfig:
        known: dict[str, Any] = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class MeanPixel:
    """Anomaly map ``[H, W]`` = gain x |grey value - the good images' mean grey value| / their std; score = the
    map's maximum."""

    def __init__(self, config: MeanPixelConfig) -> None:
        self.config = config
        self.mean = torch.zeros(())
        self.std = torch.ones(())

    def fit_good(self, images: Sequence[np.ndarray], holdout: Sequence[np.ndarray],
                 control: TrainControl = NO_CONTROL) -> dict[str, Any]:
        grey = np.stack([im.astype(np.float32).mean() for im in images])
        self.mean, self.std = torch.tensor(float(grey.mean())), torch.tensor(float(grey.std()) + 1.0)
        control.report("done", 1.0)
        return {"num_images": len(images)}

    def predict(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        out = []
        for im in images:
            amap = self.config.gain * np.abs(im.astype(np.float32).mean(axis=2) - float(self.mean)) / float(self.std)
            out.append(Prediction(float(amap.max()), amap, 0.1))
        return out

    def state(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean.clone(), "std": self.std.clone()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.mean, self.std = state["mean"], state["std"]

    def prepare(self) -> None:
        """Nothing to build."""

    def export_parts(self) -> tuple[dict[str, bytes], dict[str, Any]]:
        raise ValueError("expected a kind with an export bundle, found the toy kind (none)")


class LearningMeanPixel(MeanPixel):
    """The toy, able to learn from feedback: a marked image moves the mean."""

    def add_to_bank(self, images: Sequence[np.ndarray]) -> int:
        self.mean = (self.mean + float(np.mean([im.mean() for im in images]))) / 2
        return len(images)


GAIN = Option("gain", float, "toy: factor on the anomaly map", fields=("gain",))


def toy_spec(name: str = TOY, detector: type[MeanPixel] = MeanPixel) -> KindSpec:
    return KindSpec(name=name, label="Mean pixel", summary="Distance of each pixel's grey value from the good mean.",
                    config=MeanPixelConfig, detector=detector, inference_settings=lambda s, path: dict(s),
                    input_size=lambda side: side, estimate_seconds=lambda s, n, shape: None, min_side=8, sizes=(32,),
                    tunables=(), options=(IMAGE_SIZE, GAIN), positive_scores=True)


@pytest.fixture
def toy_kind() -> Iterator[str]:
    register(TOY, toy_spec)
    try:
        yield TOY
    finally:
        unregister(TOY)


def test_toy_follows_the_protocols() -> None:
    config: DetectorConfig = MeanPixelConfig()
    detector: Detector = MeanPixel(MeanPixelConfig())
    assert MeanPixelConfig.from_dict(config.to_dict()) == config and detector.config == config
    assert not toy_spec().learns_from_feedback and toy_spec(detector=LearningMeanPixel).learns_from_feedback
    assert isinstance(LearningMeanPixel(MeanPixelConfig()), FeedbackLearner)
    assert not isinstance(MeanPixel(MeanPixelConfig()), FeedbackLearner)


def test_register_adds_a_kind_and_unregister_removes_it(toy_kind: str) -> None:
    assert kinds() == ("patchcore", "efficientad", TOY) and spec(toy_kind).label == "Mean pixel"
    with pytest.raises(ValueError, match=r"expected a new model kind name, found 'toy_mean', already one of"):
        register(TOY, toy_spec)
    with pytest.raises(ValueError, match=r"expected a kind added by register\(\) in \('toy_mean',\), found 'patchcore'"):
        unregister("patchcore")


def test_toy_kind_walks_train_save_load_inspect_cli(toy_kind: str, demo_root: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from core.cli import build_parser, main
    from core.data.dataset import load_category
    from core.data.imageio import load_image
    from core.store import lifecycle as det
    from core.store.model_store import ModelStore
    from core.verdict import feedback, inspection

    # train -> save
    store = ModelStore(tmp_path / "models")
    data = load_category(demo_root, "demo_metal")
    result = det.train(data, toy_kind, {"gain": 3.0}, store)
    assert result.ref.kind == toy_kind and result.manifest["settings"] == {"height": 32, "width": 32, "gain": 3.0}
    assert result.manifest["backbone"] == "none (mean pixel value)"
    # load -> inspect: the one verdict pipeline judges it like any kind
    model = det.load(store.current("demo_metal", toy_kind))
    assert isinstance(model.detector, MeanPixel) and model.detector.config.gain == 3.0
    good, tiny = load_image(data.test[0].path), np.zeros((4, 4, 3), np.uint8)
    found = inspection.inspect(model, [good, tiny])
    assert found[0].verdict in ("OK", "REVIEW", "DEFECT") and found[0].score is not None
    assert found[0].score == pytest.approx(model.detector.predict([good])[0].score)
    assert found[1].verdict == inspection.NO_VERDICT and "too small" in found[1].note
    # evaluation runs on the toy's raw scores and is saved beside it
    assert "image_auroc" in det.run_evaluation(model, data).overall
    # it does not learn from feedback: marking refuses, saying so
    with pytest.raises(feedback.FeedbackError, match="Mean pixel cannot learn from a single marked image"):
        feedback.mark_ok(model, good, "good.png")
    # CLI: --model choices and its own flag, whose value reaches its config; another kind's flag is refused
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    help_text = capsys.readouterr().out
    assert "--gain GAIN" in help_text and f"[{toy_kind}]" in help_text and toy_kind in help_text
    assert main(["train", "--data", str(demo_root), "--category", "demo_metal", "--model", toy_kind,
                 "--store", str(store.root), "--gain", "0.5", "--image-size", "40", "48"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == f"demo_metal/{toy_kind} v2"
    loaded = det.load(store.current("demo_metal", toy_kind)).detector.config
    assert loaded == MeanPixelConfig(height=40, width=48, gain=0.5)
    assert main(["train", "--data", str(demo_root), "--category", "demo_metal", "--model", toy_kind,
                 "--store", str(store.root), "--coreset-ratio", "0.1"]) == 2
    assert "expected Mean pixel training flags (--image-size, --gain), found --coreset-ratio (of other kinds)" in \
        capsys.readouterr().err
