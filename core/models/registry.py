"""Model kinds as a table: everything the app, the CLI and the store need to know about a kind.

Adding a kind is one :class:`KindSpec` entry here (a factory in ``_FACTORIES``) or, from outside the product,
:func:`register`, plus its module: a config that follows :class:`DetectorConfig` and a class that follows
:class:`Detector` (and :class:`FeedbackLearner` if marking an image OK should teach it). The CLI's ``train`` flags
come from the kinds' :class:`Option` entries.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

from core.progress import duration_text

if TYPE_CHECKING:  # the table itself imports no model code (the CLI's --help stays fast)
    import numpy as np
    import torch

    from core.types import Prediction, TrainControl

INFERENCE_PATHS: tuple[str, ...] = ("fast", "stock")


class DetectorConfig(Protocol):
    """A kind's settings as a frozen dataclass: the manifest's ``settings`` are its :meth:`to_dict`, and
    :meth:`from_dict` reads them back (keys it does not know are ignored). ``height`` x ``width`` is the input
    size the warm-up pass uses; ``backbone`` is what the manifest and the Models page call the network."""

    @property
    def height(self) -> int: ...

    @property
    def width(self) -> int: ...

    @property
    def backbone(self) -> str: ...

    def to_dict(self) -> dict[str, object]: ...

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Self: ...


class Detector(Protocol):
    """What the product needs of a detector; PatchCore and EfficientAD follow it."""

    @property
    def config(self) -> DetectorConfig: ...

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


@runtime_checkable
class FeedbackLearner(Protocol):
    """A detector that learns from feedback: marking a good image OK adds it to what the detector knows
    (PatchCore: its patches join the memory bank). A kind learns from feedback when its detector follows this."""

    def add_to_bank(self, images: Sequence[np.ndarray]) -> int:
        """Learn uint8 RGB images ``[H, W, 3]`` as good; returns how many entries were added."""
        ...


@dataclass(frozen=True)
class Option:
    """One training setting of a kind as the CLI's ``train`` flag ``--<name>``.

    ``type`` parses one command-line word; the value sets the config field ``fields[0]``, or one value per field
    when there are several (``--image-size H W`` sets height and width); ``many``: one or more words, set as a
    list. ``choices``: the values allowed (empty: any). ``default``: the value set when the flag is not given
    (None: the config's own default applies). ``derive(settings)``: when the flag is not given, its value from
    the settings the other flags set (None: not set), e.g. a backbone's default layers.
    """

    name: str
    type: Callable[[str], Any]
    help: str
    fields: tuple[str, ...]
    default: Any = None
    choices: tuple[Any, ...] = ()
    many: bool = False
    metavar: tuple[str, ...] | str | None = None
    derive: Callable[[dict[str, Any]], Any] | None = None

    def __post_init__(self) -> None:
        if not self.fields or (self.many and len(self.fields) > 1):
            raise ValueError(f"expected --{self.name} to set one config field (or several, one value each, not "
                             f"'many'), found fields {self.fields} with many={self.many}")

    @property
    def dest(self) -> str:
        """The attribute an argparse namespace holds the flag's value in."""
        return self.name.replace("-", "_")

    def settings(self, value: Any) -> dict[str, Any]:
        """The config fields ``value`` (as parsed, not None) sets."""
        if len(self.fields) > 1:
            return dict(zip(self.fields, value, strict=True))
        return {self.fields[0]: list(value) if self.many else value}


def absolute_path(text: str) -> str:
    """A command-line path as the absolute path a manifest keeps (``~`` expanded)."""
    return str(Path(text).expanduser().resolve())


IMAGE_SIZE = Option("image-size", int, "model input height and width in pixels", fields=("height", "width"),
                    metavar=("H", "W"))


def _runtime_option() -> Option:
    """``--runtime``, for the kinds whose networks run in ONNX Runtime or PyTorch."""
    from core.models.runtime import RUNTIMES

    return Option("runtime", str, "network runtime (default auto: OpenVINO or ONNX Runtime, measured per machine; openvino; onnx; torch)", fields=("runtime",),
                  choices=RUNTIMES)


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


def _no_plan(settings: dict[str, Any], num_images: int, shape: tuple[int, int] | None) -> str | None:
    """A kind whose fit needs no words beyond its settings."""
    return None


@dataclass(frozen=True)
class KindSpec:
    """One model kind. ``config`` is its settings class and ``detector`` builds a detector from one;
    ``estimate_seconds(settings, num_images, shape)`` is the training wall time the app shows before training, for
    ``num_images`` good images of median size ``shape`` (H, W; None: unknown) (None: no estimate);
    ``plan_text(settings, num_images, shape)`` says in words what that fit will run (e.g. fewer steps than asked;
    None: nothing to say beyond the settings); :meth:`training_forecast` puts both in one sentence;
    ``input_size(requested)`` the nearest side the kind accepts; ``options`` its CLI training flags."""

    name: str
    label: str
    summary: str
    config: type[DetectorConfig]
    detector: Callable[[Any], Detector]
    inference_settings: Callable[[dict[str, Any], str], dict[str, Any]]
    input_size: Callable[[int], int]
    estimate_seconds: Callable[[dict[str, Any], int, tuple[int, int] | None], float | None]
    min_side: int
    sizes: tuple[int, ...]
    tunables: tuple[Tunable, ...]
    options: tuple[Option, ...] = ()
    backbones: tuple[str, ...] = ()  # offline backbones offered; non-empty: the user may also bring a timm backbone
    positive_scores: bool = False  # scores and maps are 0 or more (distances): thresholds must be above 0
    plan_text: Callable[[dict[str, Any], int, tuple[int, int] | None], str | None] = _no_plan

    def default_settings(self) -> dict[str, Any]:
        """Settings a new model of this kind gets unless the user overrides them."""
        return dict(self.config().to_dict())

    def build(self, settings: dict[str, Any]) -> Detector:
        """A fresh (untrained) detector configured by ``settings`` (a manifest's, or defaults plus overrides)."""
        return self.detector(self.config.from_dict(settings))

    def training_forecast(self, settings: dict[str, Any], num_images: int,
                          shape: tuple[int, int] | None) -> str | None:
        """What a fit with ``settings`` (over the defaults) on ``num_images`` good images of median (H, W)
        ``shape`` will run and how long it takes, in one sentence for the Models page and ``train`` (None: no
        estimate for this kind)."""
        full = {**self.default_settings(), **settings}
        seconds = self.estimate_seconds(full, num_images, shape)
        if seconds is None:
            return None
        plan = self.plan_text(full, num_images, shape)
        return (f"{self.label} at {full['height']}px on {num_images} good images: " + (f"{plan}; " if plan else "")
                + f"{duration_text(seconds)} on a quiet 2-core CPU (measured step time; longer while other work runs "
                "on the machine; benchmarks/RESULTS.md)")

    @property
    def learns_from_feedback(self) -> bool:
        """Whether marking an image OK teaches the model: its detector follows :class:`FeedbackLearner`."""
        return isinstance(self.detector, type) and issubclass(self.detector, FeedbackLearner)


def _patchcore() -> KindSpec:
    from core.models import patchcore
    from core.models.backbone import default_layers

    return KindSpec(
        name="patchcore", label="PatchCore",
        summary="Memory bank of pretrained patch features; nearest-neighbour distance is the anomaly score.",
        config=patchcore.PatchCoreConfig, detector=patchcore.PatchCore,
        inference_settings=patchcore.inference_settings,
        input_size=lambda side: side,
        estimate_seconds=lambda s, n, shape: None,
        min_side=32,
        sizes=(128, 160, 192, 224, 256, 320, 384),
        backbones=("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"),
        positive_scores=True,
        tunables=(Tunable("coreset_ratio", "Coreset ratio", "Share of training patches kept in the memory bank (1.0: "
                          "all of them). Large banks are searched with HNSW, each image's top patch re-checked exactly.",
                          options=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 1.0), default=0.01),),
        options=(
            IMAGE_SIZE,
            Option("input-mode", str, "auto (default: chosen per category from the good images, see the Models "
                   "page), squash to --image-size, native aspect ratio, or overlapping native-resolution tiles",
                   fields=("input_mode",), choices=("auto", "squash", "native", "tiles")),
            Option("tile", int, "tiles mode: tile side in pixels (default 256)", fields=("tile",)),
            Option("normalization", str, "PatchCore input statistics: imagenet (default, anomalib's) or the "
                   "backbone's own (EfficientNet-Lite: [-1, 1]; +0.04 image AUROC on magnetic_tile, -0.03 on "
                   "juice_bottle_loco)", fields=("normalization",), choices=patchcore.NORMALIZATIONS),
            Option("scale", float, "native mode: resize factor keeping aspect ratio", fields=("scale",)),
            Option("backbone", str, "PatchCore backbone: tf_efficientnet_lite0/1/2 (offline, default lite0) or any "
                   "timm name with --weights FILE (or weights already in the local HF/torch cache)",
                   fields=("backbone",)),
            Option("weights", absolute_path, "local .safetensors/.pth state dict of --backbone (never downloaded)",
                   fields=("weights",)),
            Option("layers", str, "feature layers (default: the backbone's two middle levels)", fields=("layers",),
                   many=True, derive=lambda s: list(default_layers(s["backbone"])) if "backbone" in s else None),
            Option("coreset-ratio", float, "share of training patches kept in the memory bank (default 0.01)",
                   fields=("coreset_ratio",)),
            Option("coreset", str, "coreset selection: fast (default, bounded) or stock (anomalib's)",
                   fields=("coreset",), choices=("fast", "stock")),
            Option("search", str, "nearest-neighbour search (default auto: exact for small banks, HNSW for large)",
                   fields=("search",), choices=("auto", "exact", "hnsw", "stock")),
            _runtime_option(),
        ),
    )


def _efficientad() -> KindSpec:
    from core.models import efficientad

    return KindSpec(
        name="efficientad", label="EfficientAD",
        summary="Teacher, student and autoencoder; fast inference, learns logical constraints.",
        config=efficientad.EfficientADConfig, detector=efficientad.EfficientAD,
        inference_settings=efficientad.inference_settings,
        input_size=lambda side: efficientad.input_size_for(side, efficientad.EfficientADConfig().structure),
        estimate_seconds=efficientad.estimate_for_settings,
        plan_text=efficientad.plan_for_settings,
        min_side=efficientad.MIN_SIZE,
        sizes=(256, 512),
        tunables=(Tunable("steps", "Training steps", f"At most this many: fewer run when "
                          f"{efficientad.EfficientADConfig().max_epochs:g} passes over the training images take fewer "
                          "(the caption below says how many will run).",
                          default=efficientad.EfficientADConfig().steps, low=10, high=70000, step=100),),
        options=(
            IMAGE_SIZE,
            Option("steps", int, "EfficientAD training steps (cosine: at most, see --max-epochs; the old defaults: "
                   "--schedule step --steps 6000 --student-width 128 --lr 0.001)", fields=("steps",)),
            Option("lr", float, "EfficientAD learning rate (default 0.002, cosine's peak; 0.001 until issue 25)",
                   fields=("lr",)),
            Option("schedule", str, "training recipe: cosine (default: cached teacher targets, batches, warm-up + "
                   "cosine) or step (anomalib's loop, one image per step; the default until issue 25)",
                   fields=("schedule",), choices=("cosine", "step")),
            Option("train-batch", int, "cosine: images per training step (default 2)", fields=("train_batch",)),
            Option("max-epochs", float, "cosine: at most this many passes over the images (default 12; 0: always "
                   "--steps)", fields=("max_epochs",)),
            Option("train-precision", str, "cosine: student and autoencoder training precision (auto: bf16 where a short "
                   "measurement finds it faster)", fields=("precision",), choices=("auto", "fp32", "bf16")),
            Option("student-width", int, "student channels (default 64; 128 until issue 25)",
                   fields=("student_width",)),
            Option("input-mode", str, "auto (default: tiles when the images' short side is at least 2 tiles, "
                   "else resized; core/models/efficientad_tiles.py), squash to --image-size, or overlapping "
                   "native-resolution tiles (native: PatchCore only)", fields=("input_mode",),
                   choices=("auto", "squash", "native", "tiles")),
            Option("tile", int, "tiles mode: tile side in pixels (default 256; lite: multiples of 256)",
                   fields=("tile",)),
            _runtime_option(),
        ),
    )


_BUILT_IN: dict[str, Callable[[], KindSpec]] = {"patchcore": _patchcore, "efficientad": _efficientad}
_FACTORIES: dict[str, Callable[[], KindSpec]] = dict(_BUILT_IN)
KINDS: tuple[str, ...] = tuple(_BUILT_IN)  # the product's kinds; kinds() also names the registered ones
_SPECS: dict[str, KindSpec] = {}


def register(name: str, factory: Callable[[], KindSpec]) -> None:
    """Add the kind ``name``, whose table entry ``factory()`` builds on first use (so registering imports no
    model code). The CLI (``--model``, ``train`` flags), the store and the verdict pipeline then know it.

    Raises:
        ValueError: ``name`` is already a kind.
    """
    if name in _FACTORIES:
        raise ValueError(f"expected a new model kind name, found {name!r}, already one of {kinds()}")
    _FACTORIES[name] = factory


def unregister(name: str) -> None:
    """Remove a kind added by :func:`register` (the product's own kinds stay).

    Raises:
        ValueError: ``name`` is not a registered kind.
    """
    if name in _BUILT_IN or name not in _FACTORIES:
        raise ValueError(f"expected a kind added by register() in {tuple(k for k in _FACTORIES if k not in _BUILT_IN)}"
                         f", found {name!r}")
    del _FACTORIES[name]
    _SPECS.pop(name, None)


def kinds() -> tuple[str, ...]:
    """Every kind now: the product's (:data:`KINDS`) and those added by :func:`register`, in that order."""
    return tuple(_FACTORIES)


def spec(kind: str) -> KindSpec:
    """The table entry of ``kind`` (built on first use, so importing the table imports no model code)."""
    if kind not in _FACTORIES:
        raise ValueError(f"expected model kind in {kinds()}, found {kind!r}")
    if kind not in _SPECS:
        built = _FACTORIES[kind]()
        if built.name != kind:
            raise ValueError(f"expected the table entry of {kind!r} to be named so, found {built.name!r}")
        _SPECS[kind] = built
    return _SPECS[kind]


def label(kind: str) -> str:
    """A kind's name for people (the table's label); an unknown kind is shown as it is."""
    return spec(kind).label if kind in _FACTORIES else kind


def train_options() -> dict[str, tuple[Option, tuple[str, ...]]]:
    """Every kind's training options by flag name, each with the kinds that have it (in :func:`kinds` order).

    Raises:
        ValueError: two kinds describe the same flag differently (fields, type, choices or arity).
    """
    out: dict[str, tuple[Option, tuple[str, ...]]] = {}
    for kind in kinds():
        for option in spec(kind).options:
            if option.name not in out:
                out[option.name] = (option, (kind,))
                continue
            first, owners = out[option.name]
            same = (first.fields, first.type, first.choices, first.many) == \
                (option.fields, option.type, option.choices, option.many)
            if not same:
                raise ValueError(f"expected --{option.name} to mean the same for every kind, found {owners[0]} "
                                 f"setting {first.fields} and {kind} setting {option.fields} (or other types/choices)")
            out[option.name] = (first, (*owners, kind))
    return out


def settings_from_options(kind: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The settings ``kind``'s options set from ``values`` (flag name -> parsed value, None: not given): each
    given value, then the defaults and derived values of the options not given.

    Raises:
        ValueError: a value is given for an option ``kind`` does not have (another kind's flag).
    """
    own = {o.name: o for o in spec(kind).options}
    foreign = [name for name, value in values.items() if value is not None and name not in own]
    if foreign:
        raise ValueError(f"expected {label(kind)} training flags ({', '.join('--' + n for n in own) or 'none'}), "
                         f"found {', '.join('--' + n for n in foreign)} (of other kinds)")
    settings: dict[str, Any] = {}
    missing = []
    for name, option in own.items():
        value = values.get(name)
        if value is None:
            missing.append(option)
        else:
            settings.update(option.settings(value))
    for option in missing:
        value = option.default if option.default is not None else (
            option.derive(settings) if option.derive is not None else None)
        if value is not None:
            settings.update(option.settings(value))
    return settings
