"""Model kinds as a table: everything the app, the CLI and the store need to know about a kind.

Adding a kind is one :class:`KindSpec` entry here plus its module (a config with ``to_dict``/``from_dict`` and
a class that follows :class:`Detector`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # the table itself imports no model code (the CLI's --help stays fast)
    import numpy as np
    import torch

    from core.types import Prediction, TrainControl

INFERENCE_PATHS: tuple[str, ...] = ("fast", "stock")


class Detector(Protocol):
    """What the product needs of a detector; PatchCore and EfficientAD follow it."""

    config: Any

    def fit_good(self, images: Sequence[np.ndarray], holdout: Sequence[np.ndarray],
                 control: TrainControl) -> dict[str, Any]:
        """Learn from good uint8 RGB images ``[H, W, 3]``; ``holdout`` images are good ones kept from fitting
        (EfficientAD normalises its maps on them). Returns training facts for the manifest."""
        ...

    def predict(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """One prediction per image: raw score and anomaly map ``[H, W]`` at the image's own size."""
        ...

    def state(self) -> dict[str, torch.Tensor]: ...

    def load_state(self, state: dict[str, torch.Tensor]) -> None: ...

    def prepare(self) -> None:
        """Make ready to score (e.g. build a search index) so the first prediction is not the slow one."""
        ...

    def export_parts(self) -> tuple[dict[str, bytes], dict[str, Any]]:
        """Files (name -> bytes, ``model.onnx`` among them) and parameters of an export bundle."""
        ...


@dataclass(frozen=True)
class Tunable:
    """One training setting the Models page offers: a choice among ``options`` (a slider), or an integer in
    ``[low, high]`` when ``options`` is empty. ``to_settings`` turns the chosen value into settings."""

    key: str
    label: str
    help: str
    options: tuple[float, ...] = ()
    default: float = 0.0
    low: int = 0
    high: int = 0
    step: int = 1


@dataclass(frozen=True)
class KindSpec:
    """One model kind. ``estimate_seconds(settings, num_images)`` is the training wall time the app shows
    before training (None: no estimate); ``input_size(requested)`` the nearest side the kind accepts."""

    name: str
    label: str
    summary: str
    default_settings: Callable[[], dict[str, Any]]
    build: Callable[[dict[str, Any]], Detector]
    inference_settings: Callable[[dict[str, Any], str], dict[str, Any]]
    input_size: Callable[[int], int]
    estimate_seconds: Callable[[dict[str, Any], int], float | None]
    min_side: int
    learns_from_feedback: bool
    sizes: tuple[int, ...]
    tunables: tuple[Tunable, ...]
    backbones: tuple[str, ...] = ()  # offline backbones offered; non-empty: the user may also bring a timm backbone
    positive_scores: bool = False  # scores and maps are 0 or more (distances): thresholds must be above 0


def _patchcore() -> KindSpec:
    from core.models import patchcore

    return KindSpec(
        name="patchcore", label="PatchCore",
        summary="Memory bank of pretrained patch features; nearest-neighbour distance is the anomaly score.",
        default_settings=lambda: patchcore.PatchCoreConfig().to_dict(),
        build=lambda s: patchcore.PatchCore(patchcore.PatchCoreConfig.from_dict(s)),
        inference_settings=patchcore.inference_settings,
        input_size=lambda side: side,
        estimate_seconds=lambda s, n: None,
        min_side=32,
        learns_from_feedback=True,
        sizes=(128, 160, 192, 224, 256, 320, 384),
        backbones=("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"),
        positive_scores=True,
        tunables=(Tunable("coreset_ratio", "Coreset ratio", "Share of training patches kept in the memory bank (1.0: "
                          "all of them). Large banks are searched with HNSW, each image's top patch re-checked exactly.",
                          options=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 1.0), default=0.01),),
    )


def _efficientad() -> KindSpec:
    from core.models import efficientad

    return KindSpec(
        name="efficientad", label="EfficientAD",
        summary="Teacher, student and autoencoder; fast inference, learns logical constraints.",
        default_settings=lambda: efficientad.EfficientADConfig().to_dict(),
        build=lambda s: efficientad.EfficientAD(efficientad.EfficientADConfig.from_dict(s)),
        inference_settings=efficientad.inference_settings,
        input_size=lambda side: efficientad.input_size_for(side, efficientad.EfficientADConfig().structure),
        estimate_seconds=efficientad.estimate_for_settings,
        min_side=efficientad.MIN_SIZE,
        learns_from_feedback=False,
        sizes=(256, 512),
        tunables=(Tunable("steps", "Training steps", "More steps: better maps, longer training (see the estimate).",
                          default=efficientad.EfficientADConfig().steps, low=10, high=70000, step=100),),
    )


_FACTORIES: dict[str, Callable[[], KindSpec]] = {"patchcore": _patchcore, "efficientad": _efficientad}
KINDS: tuple[str, ...] = tuple(_FACTORIES)
_SPECS: dict[str, KindSpec] = {}


def spec(kind: str) -> KindSpec:
    """The table entry of ``kind`` (built on first use, so importing the table imports no model code)."""
    if kind not in _FACTORIES:
        raise ValueError(f"expected model kind in {KINDS}, found {kind!r}")
    if kind not in _SPECS:
        _SPECS[kind] = _FACTORIES[kind]()
    return _SPECS[kind]


def label(kind: str) -> str:
    """A kind's name for people (the table's label); an unknown kind is shown as it is."""
    return spec(kind).label if kind in _FACTORIES else kind
