"""EfficientAD through anomalib, offline: our distilled PDN teacher, penalty images we ship, a CPU step budget.

anomalib's :class:`EfficientAdModel` supplies the networks (teacher, student, autoencoder), the losses and the
map computation. We replace what would otherwise be downloaded -- the pretrained teacher (distilled by
``tools/distill_teacher.py``, weights in ``assets/teacher``) and the Imagenette penalty images (a few photos in
``assets/penalty``) -- and drive the training loop ourselves (core/models/efficientad_training.py) so it can
report progress, be cancelled and resumed, and compute the map-normalisation quantiles on held-out GOOD images
(anomalib uses its validation split).
Inference runs anomalib's eval forward pass exported to a graph runtime (``runtime="auto"``, the default: OpenVINO
or ONNX Runtime, whichever measured faster on this machine; or ``"openvino"``, ``"onnx"``) or in torch
(``runtime="torch"``); all give the same scores up to float rounding (tests/test_runtime.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel

from core.models import efficientad_tiles as tiles
from core.models import efficientad_training as training
from core.models.efficientad_lite import (
    ANOMALIB_HARD_QUANTILE,
    STRIDE,
    LiteAutoEncoder,
    LiteEfficientAdModel,
    LiteStudent,
    LiteTeacher,
    TunedEfficientAdModel,
)
from core.models.efficientad_training import SAVE_EVERY, STATE_FILE, load_penalty_images
from core.models.preprocess import InputSpec, predict_in_batches, resize_map, to_tensor
from core.models.runtime import OnnxGraph, check_runtime, export_onnx, uses_graph
from core.models.tiling import predict_tiled
from core.portable import scale_image, scaled_shape, tile_boxes
from core.types import NO_CONTROL, Prediction, TrainControl, holdout_count

__all__ = ["ASSETS", "BUILDERS", "DEFAULT_PENALTY_DIR", "DEFAULT_TEACHER", "KIND", "MIN_SIZE", "SAVE_EVERY",
           "SECONDS_PER_IMAGE_256", "SECONDS_PER_STEP_256", "STATE_FILE", "STRUCTURES", "EfficientAD",
           "EfficientADConfig", "TrainingPlan", "estimate_for_settings", "expected_training_seconds",
           "inference_settings", "input_size_for", "load_penalty_images", "plan_for_settings", "teacher_channels",
           "training_plan"]  # the training loop's names kept here too

KIND = "efficientad"
ASSETS = Path(__file__).resolve().parents[2] / "assets"
DEFAULT_TEACHER = ASSETS / "teacher" / "teacher_small.pth"
DEFAULT_PENALTY_DIR = ASSETS / "penalty"
MIN_SIZE = 256
# Training-step wall time at 256x256 on the 2-core CPU, per structure (benchmarks/RESULTS.md, EfficientAD: lite's
# median step was 0.239-0.245 s in the four runs measured on an otherwise idle machine, both categories, 0.25 kept;
# pdn_s measured by its median).
SECONDS_PER_STEP_256: dict[str, float] = {"pdn_s": 1.77, "lite": 0.25}
SECONDS_PER_IMAGE_256 = 0.08  # per good training image: teacher statistics, quantiles, calibration, guard
# The cosine recipe (issue 25), per image of a training batch at 256x256, by student width (the default, "auto"
# precision: bf16 on the AMX Xeon it was measured on; batch 2: 0.071 s, batch 8: 0.054 s per image), and per teacher
# pass over one augmented image of the pool (benchmarks/RESULTS.md, cpu_speed_training).
SECONDS_PER_BATCH_IMAGE_256: dict[int, float] = {64: 0.07, 128: 0.12}
SECONDS_PER_TEACHER_IMAGE_256 = 0.045
STRUCTURES: tuple[str, ...] = ("lite", "pdn_s")


@dataclass(frozen=True)
class EfficientADConfig:
    """Settings of an EfficientAD model. ``steps`` is the CPU training budget."""

    height: int = 256
    width: int = 256
    steps: int = 1500  # optimiser steps (schedule "step", the old default: 6,000 of one image each)
    lr: float = 2e-3  # cosine's peak; anomalib's loop was measured at 1e-3 (lite), pdn_s at 1e-4 (anomalib's value)
    weight_decay: float = 1e-5
    teacher_path: str = str(DEFAULT_TEACHER)
    penalty_dir: str = str(DEFAULT_PENALTY_DIR)
    batch_size: int = 8
    seed: int = 0
    runtime: str = "auto"  # "auto": OpenVINO or ONNX Runtime, measured per machine (core/models/runtime.py)
    structure: str = "lite"
    teacher_backbone: str = "tf_efficientnet_lite0"
    student_width: int = 64  # 128 until issue 25 (64: same accuracy, 60% of the time; RESULTS.md)
    context_cells: int = 2  # lite: mirrored image around the input, in stride-8 cells (16 px)
    border_cells: int = 0  # lite: map border left at zero, in stride-8 cells
    hard_quantile: float = 0.99  # the student learns from distances above this quantile (anomalib: 0.999)
    score_border_cells: int = 2  # image score = map maximum without this border, in stride-8 cells (anomalib: 0)
    # training recipe (core/models/efficientad_training.py): "cosine" = cached teacher targets, batches of
    # train_batch, warm-up + cosine; "step" = anomalib's loop, one image per step (the default until issue 25)
    schedule: str = "cosine"
    train_batch: int = 2  # cosine: images per step (2 x 1,500 steps beat 8 x 402 on juice_bottle_loco: 0.981 vs 0.941)
    max_epochs: float = 12.0  # cosine: at most this many passes over the images (0: config.steps always)
    precision: str = "auto"  # cosine: student and autoencoder under bf16 autocast when measured faster ("auto")
    # input (core/models/efficientad_tiles.py): "squash" (resized to height x width), "tiles" (tile x tile tiles of
    # the image resized by scale, trained on and scored by, maps stitched) or "auto" (resolved by fit_good from the
    # images' size; until then the model reads its input as "squash")
    input_mode: str = tiles.AUTO
    tile: int = 256
    tile_overlap: float = 0.25
    scale: float = 1.0

    def __post_init__(self) -> None:
        check_runtime(self.runtime)
        if self.height < MIN_SIZE or self.width < MIN_SIZE:
            raise ValueError(f"expected an EfficientAD input of at least {MIN_SIZE}x{MIN_SIZE} (its autoencoder "
                             f"downsamples 32x before an 8x8 convolution), found {self.height}x{self.width}")
        if self.steps < 1:
            raise ValueError(f"expected at least 1 training step, found {self.steps}")
        if self.structure not in STRUCTURES:
            raise ValueError(f"expected EfficientAD structure in {STRUCTURES}, found {self.structure!r}")
        if not 0.0 <= self.hard_quantile < 1.0:
            raise ValueError(f"expected a hard-feature quantile in [0, 1), found {self.hard_quantile}")
        if self.score_border_cells < 0 or 2 * self.score_border_cells * STRIDE >= min(self.height, self.width):
            raise ValueError(f"expected a score border of 0 to {min(self.height, self.width) // (2 * STRIDE) - 1} "
                             f"cells, found {self.score_border_cells}")
        if self.schedule not in training.SCHEDULES:
            raise ValueError(f"expected an EfficientAD schedule in {tuple(training.SCHEDULES)}, found {self.schedule!r}")
        if self.precision not in training.PRECISIONS:
            raise ValueError(f"expected an EfficientAD training precision in {training.PRECISIONS}, found "
                             f"{self.precision!r}")
        if self.train_batch < 1 or self.max_epochs < 0:
            raise ValueError(f"expected a training batch of at least 1 and max_epochs >= 0, found "
                             f"{self.train_batch} and {self.max_epochs}")
        if self.structure == "lite" and (self.height % 256 or self.width % 256):
            raise ValueError(f"expected an EfficientAD-lite input size in multiples of 256 (its autoencoder "
                             f"code is 256 px wide), found {self.height}x{self.width}")
        if self.input_mode not in tiles.INPUT_MODES:
            raise ValueError(f"expected an EfficientAD input mode in {tiles.INPUT_MODES}, found {self.input_mode!r}")
        if self.tile < MIN_SIZE or (self.structure == "lite" and self.tile % 256):
            raise ValueError(f"expected an EfficientAD tile side of at least {MIN_SIZE} px"
                             + (" in multiples of 256 (lite)" if self.structure == "lite" else "")
                             + f", found {self.tile}")
        if not 0.0 <= self.tile_overlap < 1.0 or self.scale <= 0.0:
            raise ValueError(f"expected a tile overlap in [0, 1) and a scale above 0, found {self.tile_overlap} "
                             f"and {self.scale}")

    @property
    def input_spec(self) -> InputSpec:
        """The network's input: a tile (tiles mode: each tile is already that size) or ``height x width``."""
        if self.input_mode == "tiles":
            return InputSpec(self.tile, self.tile, normalize=False)
        return InputSpec(self.height, self.width, normalize=False)

    @property
    def backbone(self) -> str:
        if self.structure == "lite":
            return f"{self.teacher_backbone} trunk (pretrained teacher, stride {STRIDE})"
        return "pdn_small (distilled from tf_efficientnet_lite0)"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> EfficientADConfig:
        """Settings from a manifest; one saved before structures existed is the PDN-S structure, and settings added
        later take the value that reproduces what was saved (anomalib's hard quantile, the map maximum as score)."""
        known = set(cls.__dataclass_fields__)
        values: dict[str, Any] = {k: v for k, v in data.items() if k in known}  # JSON values, checked by __post_init__
        values.setdefault("structure", "pdn_s")
        values.setdefault("hard_quantile", ANOMALIB_HARD_QUANTILE)
        values.setdefault("score_border_cells", 0)
        values.setdefault("student_width", 128)
        values.setdefault("schedule", "step")  # saved before the cosine recipe: trained by anomalib's loop
        values.setdefault("input_mode", "squash")  # saved before input modes: resized
        return cls(**values)


@dataclass(frozen=True)
class TrainingPlan:
    """What a fit of ``config`` will run, known before it starts (about: from the images' median size and
    count): ``steps`` steps over ``inputs`` training inputs (``tiles_per_image`` tiles of each of ``fitted`` good
    images in tiles mode, else the images), ``held_out`` more images kept for calibration. ``config`` is the one
    the fit runs (``input_mode="auto"`` resolved); fewer steps than ``config.steps`` run when the cosine recipe's
    ``config.max_epochs`` passes over the inputs end first."""

    steps: int
    inputs: int
    fitted: int
    held_out: int
    tiles_per_image: int  # 0: not tiles
    config: EfficientADConfig

    @property
    def capped(self) -> bool:
        """Whether fewer steps than asked will run (the passes over the inputs end first)."""
        return self.steps < self.config.steps

    def describe(self) -> str:
        """The plan in words (``"1,500 training steps"``, or how many fewer run, and why)."""
        if not self.capped:
            return f"{self.steps:,} training steps"
        what = (f"{self.inputs:,} tiles of the {self.fitted:,} training images" if self.tiles_per_image
                else f"{self.inputs:,} training images")
        kept = f" ({self.held_out:,} more kept for calibration)" if self.held_out else ""
        return (f"{self.steps:,} training steps, not the {self.config.steps:,} asked for: {self.config.max_epochs:g} "
                f"passes over the {what}{kept} need only {self.steps:,}")


def training_plan(config: EfficientADConfig, num_images: int,
                  shape: tuple[int, int] | None = None) -> TrainingPlan | None:
    """The :class:`TrainingPlan` of a fit on ``num_images`` good images of median (H, W) ``shape``.

    ``input_mode="auto"`` is resolved from ``shape`` as the fit will (:func:`core.models.efficientad_tiles.
    choose_input`; resized when it is None); in tiles mode every tile is a training input (at most
    :data:`~core.models.efficientad_tiles.MAX_TRAIN_TILES`). None: tiles asked for without a shape (their number
    unknown)."""
    if config.input_mode == tiles.AUTO:
        config = replace(config, **(tiles.choose_input([shape], config).settings if shape is not None
                                    else {"input_mode": "squash"}))
    per_image = 0
    if config.input_mode == "tiles":
        if shape is None:
            return None
        per_image = len(tile_boxes(scaled_shape(shape, config.scale), config.tile, config.tile_overlap))
    held_out = holdout_count(num_images)
    fitted = num_images - held_out
    inputs = min(fitted * per_image, tiles.MAX_TRAIN_TILES) if per_image else fitted
    return TrainingPlan(steps=training.planned_steps(config, inputs), inputs=inputs, fitted=fitted,
                        held_out=held_out, tiles_per_image=per_image, config=config)


def expected_training_seconds(config: EfficientADConfig, num_images: int = 0,
                              shape: tuple[int, int] | None = None) -> float | None:
    """Wall time of ``python -m core train`` / the Models page on the 2-core CPU: the measured median step time
    scaled by input area, plus the per-image passes (teacher statistics, map quantiles, calibration and the
    unfamiliar-image guard) over ``num_images`` good training images of median (H, W) ``shape``, for the
    :func:`training_plan` (None: no plan)."""
    plan = training_plan(config, num_images, shape)
    if plan is None:
        return None
    config = plan.config
    side = (config.tile, config.tile) if plan.tiles_per_image else (config.height, config.width)
    area = side[0] * side[1] / (256 * 256)
    per_image = num_images * max(1, plan.tiles_per_image) * SECONDS_PER_IMAGE_256
    if config.schedule == "step":
        return (plan.steps * SECONDS_PER_STEP_256[config.structure] + per_image) * area
    per_batch_image = SECONDS_PER_BATCH_IMAGE_256.get(config.student_width, SECONDS_PER_BATCH_IMAGE_256[128]
                                                      * config.student_width / 128)
    pool = min(training.AUG_POOL_MAX, max(training.AUG_POOL_MIN, plan.inputs))
    return (plan.steps * config.train_batch * per_batch_image + pool * SECONDS_PER_TEACHER_IMAGE_256 + per_image) * area


def _config_for(settings: dict[str, Any]) -> EfficientADConfig:
    """The config of a settings dict as the registry passes it (defaults filled in)."""
    return EfficientADConfig.from_dict({**EfficientADConfig().to_dict(), **settings})


def plan_for_settings(settings: dict[str, Any], num_images: int, shape: tuple[int, int] | None) -> str | None:
    """:meth:`TrainingPlan.describe` of :func:`training_plan` for a settings dict (defaults filled in)."""
    plan = training_plan(_config_for(settings), num_images, shape)
    return None if plan is None else plan.describe()


def estimate_for_settings(settings: dict[str, Any], num_images: int, shape: tuple[int, int] | None) -> float | None:
    """:func:`expected_training_seconds` for a settings dict (defaults filled in), as the registry asks."""
    return expected_training_seconds(_config_for(settings), num_images, shape)


def inference_settings(settings: dict[str, Any], path: str) -> dict[str, Any]:
    """``settings`` for the inference ``path``: "fast" (the networks in the runtime measured fastest on this machine,
    OpenVINO or ONNX Runtime) or "stock" (anomalib's torch forward pass)."""
    return {**settings, "runtime": "torch" if path == "stock" else "auto"}


def input_size_for(requested: int, structure: str) -> int:
    """The EfficientAD input side closest to ``requested`` that ``structure`` accepts."""
    if structure == "lite":
        return 256 * max(1, round(requested / 256))
    return max(requested, MIN_SIZE)


def _build_pdn_s(config: EfficientADConfig) -> EfficientAdModel:
    """anomalib's stock structure: PDN-S teacher (our distilled weights), PDN-S student, autoencoder."""
    teacher_path = Path(config.teacher_path)
    if not teacher_path.is_file():
        raise FileNotFoundError(f"expected distilled teacher weights at {teacher_path}, found none "
                                "(make them with tools/distill_teacher.py)")
    model = TunedEfficientAdModel(teacher_channels(teacher_path), False, True, config.hard_quantile,
                                  config.score_border_cells)  # anomalib's PDN-S networks (its default size)
    model.teacher.load_state_dict(torch.load(teacher_path, map_location="cpu", weights_only=True), strict=True)
    return model


def _build_lite(config: EfficientADConfig) -> EfficientAdModel:
    """anomalib's model with a pretrained Lite trunk as teacher and CPU-sized student and autoencoder."""
    teacher = LiteTeacher(config.teacher_backbone, config.context_cells)
    channels = teacher.out_channels
    model = LiteEfficientAdModel(channels, config.border_cells, config.hard_quantile, config.score_border_cells)
    # anomalib types these as its PDN and autoencoder; any nn.Module with the same outputs works in their place
    model.add_module("teacher", teacher)
    model.add_module("student", LiteStudent(2 * channels, config.student_width, config.context_cells))
    model.add_module("ae", LiteAutoEncoder(channels))
    return model


BUILDERS: dict[str, Callable[[EfficientADConfig], EfficientAdModel]] = {"pdn_s": _build_pdn_s, "lite": _build_lite}


def teacher_channels(path: Path) -> int:
    manifest = path.parent / "manifest.json"
    if manifest.is_file():
        return int(json.loads(manifest.read_text())["teacher"]["out_channels"])
    return 152


class EfficientAD:
    """An EfficientAD detector for one category (structure ``lite`` or anomalib's ``pdn_s``)."""

    kind = KIND

    def __init__(self, config: EfficientADConfig) -> None:
        self.config = config
        with torch.random.fork_rng(devices=[]):  # the initial weights follow config.seed, not the process's RNG
            torch.manual_seed(config.seed)
            self.model = BUILDERS[config.structure](config)
        self.channels = self.model.teacher_out_channels
        self.model.teacher.eval()
        for p in self.model.teacher.parameters():
            p.requires_grad_(False)
        self.model.eval()
        self._graph: OnnxGraph | None = None
        self._device = torch.device("cpu")  # where fit() is training; the CPU otherwise
        self.step_seconds: list[float] = []  # wall time of each training step of the last fit

    def _inference_graph(self) -> OnnxGraph | None:
        """The exported eval forward pass (built on first use, after training or loading)."""
        if uses_graph(self.config.runtime) and self._graph is None:
            if isinstance(self.model, TunedEfficientAdModel) and self.model.has_grid_map:
                self._graph = OnnxGraph(_GridMap(self.model), 1, self.config.runtime)  # upsampled in forward()
            else:
                self._graph = OnnxGraph(_ScoresAndMaps(self.model), 2, self.config.runtime)
        return self._graph

    # ----------------------------------------------------------------- training
    @property
    def device(self) -> torch.device:
        """Where the model is training (core.models.efficientad_training); the CPU otherwise."""
        return self._device

    def use_device(self, device: torch.device) -> None:
        """Move the networks to ``device`` (training there, or back on the CPU); the exported graph is dropped."""
        self._graph = None
        self._device = device
        self.model.to(device)

    def drop_graph(self) -> None:
        """Forget the exported inference graph: the weights changed, the next prediction exports them again."""
        self._graph = None

    def fit_teacher_statistics(self, images: Sequence[np.ndarray]) -> None:
        """The teacher's per-channel feature mean and std over good ``images``, which normalise its output."""
        spec = self.config.input_spec
        total = torch.zeros(())
        sq_total = torch.zeros(())
        count = 0
        with torch.no_grad():
            for start in range(0, len(images), self.config.batch_size):
                out = self.model.teacher(to_tensor(images[start:start + self.config.batch_size], spec).to(self._device))
                s = out.sum(dim=(0, 2, 3))
                sq = (out ** 2).sum(dim=(0, 2, 3))
                total = s if count == 0 else total + s
                sq_total = sq if count == 0 else sq_total + sq
                count += out.shape[0] * out.shape[2] * out.shape[3]
        mean = total / count
        std = torch.sqrt((sq_total / count - mean ** 2).clamp_min(1e-12))
        self.model.mean_std["mean"].data = mean.view(1, -1, 1, 1)
        self.model.mean_std["std"].data = std.view(1, -1, 1, 1)

    def fit_quantiles(self, images: Sequence[np.ndarray]) -> None:
        """The map-normalisation quantiles (anomalib's qa/qb for both maps) from good ``images``."""
        maps_st, maps_ae = [], []
        with torch.no_grad():
            for start in range(0, len(images), self.config.batch_size):
                batch = to_tensor(images[start:start + self.config.batch_size], self.config.input_spec)
                st, ae = self.model.get_maps(batch.to(self._device), normalize=False)
                maps_st.append(st.flatten())
                maps_ae.append(ae.flatten())
        st_all, ae_all = torch.cat(maps_st), torch.cat(maps_ae)
        q = {"qa_st": torch.quantile(_reduce(st_all), 0.9), "qb_st": torch.quantile(_reduce(st_all), 0.995),
             "qa_ae": torch.quantile(_reduce(ae_all), 0.9), "qb_ae": torch.quantile(_reduce(ae_all), 0.995)}
        for key, value in q.items():
            self.model.quantiles[key].data = value.clone()

    def fit(self, images: Sequence[np.ndarray], validation: Sequence[np.ndarray],
            control: TrainControl = NO_CONTROL, checkpoints: tuple[int, ...] = (),
            on_checkpoint: Callable[[int, float], None] | None = None,
            resume_file: Path | None = None, save_every: int = 0, cache_teacher: bool = True) -> dict[str, float]:
        """Train student and autoencoder on good ``images``; map quantiles from good ``validation`` images. The
        resumable loop (checkpoints, state kept in ``resume_file`` every ``save_every`` steps, cancellation, the
        cached teacher targets) is :func:`core.models.efficientad_training.fit`."""
        return training.fit(self, images, validation, control, checkpoints, on_checkpoint, resume_file, save_every,
                            cache_teacher)

    def fit_good(self, images: Sequence[np.ndarray], holdout: Sequence[np.ndarray],
                 control: TrainControl = NO_CONTROL) -> dict[str, Any]:
        """:class:`core.models.registry.Detector` training: :meth:`fit` with the held-out images for map quantiles.
        With ``control.state_dir``, the run's state is kept there (every :data:`SAVE_EVERY` steps and when
        cancelled) and a state found there is continued."""
        resume_file = control.state_dir / STATE_FILE if control.state_dir is not None else None
        choice = None
        if self.config.input_mode == tiles.AUTO:  # resolved from the images' size (efficientad_tiles.py)
            choice = tiles.choose_input([im.shape for im in images], self.config)
            self.config = replace(self.config, **choice.settings)
        if self.config.input_mode == "tiles":  # each tile a training input; quantiles from the held-out tiles
            images = tiles.training_tiles(images, self.config)
            holdout = [t for image in holdout for t in tiles.image_tiles(image, self.config)]
        info: dict[str, Any] = dict(self.fit(images, holdout, control, resume_file=resume_file, save_every=SAVE_EVERY))
        if self.config.input_mode == "tiles":
            info["training_tiles"] = len(images)
        return {**info, **({"input_choice": choice.to_dict()} if choice is not None else {})}

    def export_parts(self) -> tuple[dict[str, bytes], dict[str, Any]]:
        """Files and parameters of an export bundle: the whole eval network (scores and maps) as ONNX. A tiled
        model exports its tile-sized network and ``params["tiles"]`` (tile, overlap, scale): the runner cuts and
        stitches with the app's own functions (core/portable.py), as for tiled PatchCore."""
        spec = self.config.input_spec
        h, w = spec.height, spec.width
        params: dict[str, Any] = {"kind": KIND, "height": h, "width": w, "mean": None, "std": None}
        if self.config.input_mode == "tiles":
            params["tiles"] = {"tile": self.config.tile, "overlap": self.config.tile_overlap, "scale": self.config.scale}
        return {"model.onnx": export_onnx(_ScoresAndMaps(self.model), h, w, 2)}, params

    # ---------------------------------------------------------------- inference
    def prepare(self) -> None:
        """Nothing to build before scoring (the ONNX graph is exported by the warm-up pass)."""

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw image scores ``[B]`` and anomaly maps ``[B, H, W]`` at model input size."""
        graph = self._inference_graph()
        if graph is not None and _has_grid_map(self.model):
            # the graph ends at the grid map; one bilinear upsampling and the maximum in torch (OpenVINO's
            # Interpolate measured ~0.7 ms slower per 256x256 map, benchmarks/bench_efficientad_profile.py)
            assert isinstance(self.model, TunedEfficientAdModel)
            with torch.inference_mode():
                scores, maps = self.model.upsample_and_score(graph(batch)[0], batch.shape[-2:])
        elif graph is not None:
            scores, maps = graph(batch)
        else:
            with torch.inference_mode():
                scores, maps = _reference_forward(self.model, batch)
        return scores.reshape(-1), maps[:, 0]

    def predict(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Predictions for uint8 RGB images, maps at each image's size. Tiles mode: each image resized by
        ``scale``, cut into tiles, all of them through one network call (core/models/tiling.py), the image score
        the top tile's, the tile maps stitched."""
        spec = self.config.input_spec
        if self.config.input_mode != "tiles":
            return predict_in_batches(self.forward, images, spec, self.config.batch_size)
        preds = predict_tiled(lambda batch, _rows: self.forward(batch), lambda t: to_tensor(t, spec),
                              [scale_image(im, self.config.scale) for im in images], self.config.tile,
                              self.config.tile_overlap, self.config.batch_size)
        return [Prediction(p.score, resize_map(p.anomaly_map, im.shape[:2]), p.latency_ms)
                for p, im in zip(preds, images, strict=True)]

    # ------------------------------------------------------------ persistence
    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.model.state_dict().items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self._graph = None
        result = self.model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(f"expected EfficientAD weights with {self.channels} teacher channels, found "
                             f"missing {result.missing_keys[:3]} unexpected {result.unexpected_keys[:3]}")
        self.model.eval()


class _ScoresAndMaps(torch.nn.Module):
    """The eval forward the graph runtimes run: images ``[B, 3, H, W]`` -> (scores ``[B, 1]``, maps ``[B, 1, H, W]``),
    the tuned model's fused computation (:meth:`TunedEfficientAdModel.scores_and_maps`: maps combined on the feature
    grid, upsampled once), equal to anomalib's eval forward up to float rounding."""

    def __init__(self, model: EfficientAdModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.model, TunedEfficientAdModel):
            return self.model.scores_and_maps(batch)
        out = self.model(batch)
        return out.pred_score, out.anomaly_map


class _GridMap(torch.nn.Module):
    """The inference graph's part of the eval forward: images ``[B, 3, H, W]`` -> the normalised map on the feature
    grid ``[B, 1, h, w]`` (:meth:`TunedEfficientAdModel.grid_map`)."""

    def __init__(self, model: TunedEfficientAdModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model.grid_map(batch)


def _has_grid_map(model: EfficientAdModel) -> bool:
    return isinstance(model, TunedEfficientAdModel) and model.has_grid_map


def _reference_forward(model: EfficientAdModel, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """anomalib's eval forward (the torch reference path): (scores ``[B, 1]``, maps ``[B, 1, H, W]``)."""
    out = model(batch)
    return out.pred_score, out.anomaly_map


def _reduce(values: torch.Tensor, limit: int = 2 ** 24) -> torch.Tensor:
    """At most ``limit`` elements (torch.quantile's input limit), sampled with a fixed seed."""
    if values.numel() <= limit:
        return values
    idx = torch.randperm(values.numel(), generator=torch.Generator().manual_seed(0))[:limit]
    return values[idx]
