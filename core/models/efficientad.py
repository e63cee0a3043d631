"""EfficientAD through anomalib, offline: our distilled PDN teacher, penalty images we ship, a CPU step budget.

anomalib's :class:`EfficientAdModel` supplies the networks (teacher, student, autoencoder), the losses and the
map computation. We replace what would otherwise be downloaded -- the pretrained teacher (distilled by
``tools/distill_teacher.py``, weights in ``assets/teacher``) and the Imagenette penalty images (a few photos in
``assets/penalty``) -- and drive the training loop ourselves so it can report progress, be cancelled and
compute the map-normalisation quantiles on held-out GOOD images (anomalib uses its validation split).
Inference runs anomalib's eval forward pass exported to ONNX Runtime (``runtime="onnx"``, the default) or in
torch (``runtime="torch"``); both give the same scores up to float rounding (tests/test_runtime.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel

from core.data.dataset import image_files
from core.models.device import compute_device
from core.models.efficientad_lite import (
    ANOMALIB_HARD_QUANTILE,
    STRIDE,
    LiteAutoEncoder,
    LiteEfficientAdModel,
    LiteStudent,
    LiteTeacher,
    TunedEfficientAdModel,
)
from core.data.imageio import ImageLoadError, load_image
from core.models.preprocess import InputSpec, predict_in_batches, to_tensor
from core.models.runtime import OnnxGraph, check_runtime, export_onnx
from core.files import atomic_write_bytes, now_iso
from core.types import NO_CONTROL, Prediction, ResumePoint, TrainControl, TrainingCancelled

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
STRUCTURES: tuple[str, ...] = ("lite", "pdn_s")
STATE_FILE = "state.pt"  # the resumable training state, in TrainControl.state_dir
SAVE_EVERY = 250  # steps between saves of that state in the product path (about a minute of CPU training)


@dataclass(frozen=True)
class EfficientADConfig:
    """Settings of an EfficientAD model. ``steps`` is the CPU training budget."""

    height: int = 256
    width: int = 256
    steps: int = 6000  # the best measured within the 30-minute budget (bench_efficientad.py, lite_6000)
    lr: float = 1e-3  # lite; the pdn_s structure was measured at 1e-4 (anomalib's value)
    weight_decay: float = 1e-5
    teacher_path: str = str(DEFAULT_TEACHER)
    penalty_dir: str = str(DEFAULT_PENALTY_DIR)
    batch_size: int = 8
    seed: int = 0
    runtime: str = "onnx"
    structure: str = "lite"
    teacher_backbone: str = "tf_efficientnet_lite0"
    student_width: int = 128
    context_cells: int = 2  # lite: mirrored image around the input, in stride-8 cells (16 px)
    border_cells: int = 0  # lite: map border left at zero, in stride-8 cells
    hard_quantile: float = 0.99  # the student learns from distances above this quantile (anomalib: 0.999)
    score_border_cells: int = 2  # image score = map maximum without this border, in stride-8 cells (anomalib: 0)

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
        if self.structure == "lite" and (self.height % 256 or self.width % 256):
            raise ValueError(f"expected an EfficientAD-lite input size in multiples of 256 (its autoencoder "
                             f"code is 256 px wide), found {self.height}x{self.width}")

    @property
    def input_spec(self) -> InputSpec:
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
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("structure", "pdn_s")
        values.setdefault("hard_quantile", ANOMALIB_HARD_QUANTILE)
        values.setdefault("score_border_cells", 0)
        return cls(**values)  # type: ignore[arg-type]


def expected_training_seconds(config: EfficientADConfig, num_images: int = 0) -> float:
    """Wall time of ``python -m core train`` / the Models page on the 2-core CPU: the measured median step time
    scaled by input area, plus the per-image passes (teacher statistics, map quantiles, calibration and the
    unfamiliar-image guard) over ``num_images`` good training images."""
    area = (config.height * config.width) / (256 * 256)
    return (config.steps * SECONDS_PER_STEP_256[config.structure] + num_images * SECONDS_PER_IMAGE_256) * area


def estimate_for_settings(settings: dict[str, Any], num_images: int) -> float:
    """:func:`expected_training_seconds` for a settings dict (defaults filled in), as the registry asks."""
    return expected_training_seconds(EfficientADConfig.from_dict({**EfficientADConfig().to_dict(), **settings}),
                                     num_images)


def inference_settings(settings: dict[str, Any], path: str) -> dict[str, Any]:
    """``settings`` for the inference ``path``: "fast" (the networks in ONNX Runtime) or "stock" (anomalib's
    torch forward pass)."""
    return {**settings, "runtime": "torch" if path == "stock" else "onnx"}


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
    model.teacher = teacher  # type: ignore[assignment]  # anomalib types it as its PDN; any nn.Module works
    model.student = LiteStudent(  # type: ignore[assignment]
        2 * channels, config.student_width, config.context_cells)
    model.ae = LiteAutoEncoder(channels)  # type: ignore[assignment]
    return model


BUILDERS: dict[str, Callable[[EfficientADConfig], EfficientAdModel]] = {"pdn_s": _build_pdn_s, "lite": _build_lite}


def teacher_channels(path: Path) -> int:
    manifest = path.parent / "manifest.json"
    if manifest.is_file():
        return int(json.loads(manifest.read_text())["teacher"]["out_channels"])
    return 152


def load_penalty_images(folder: Path, spec: InputSpec) -> torch.Tensor:
    """Penalty images ``[P, 3, H, W]`` in [0, 1] from ``folder`` (unreadable files are skipped)."""
    images = []
    for path in image_files(folder):
        try:
            images.append(load_image(path))
        except ImageLoadError:
            continue
    if not images:
        raise FileNotFoundError(f"expected penalty images in {folder}, found none")
    return to_tensor(images, spec)


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
        if self.config.runtime == "onnx" and self._graph is None:
            self._graph = OnnxGraph(_ScoresAndMaps(self.model), 2)
        return self._graph

    # ----------------------------------------------------------------- training
    def _teacher_mean_std(self, images: Sequence[np.ndarray]) -> None:
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

    def _set_quantiles(self, images: Sequence[np.ndarray]) -> None:
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
            resume_file: Path | None = None, save_every: int = 0) -> dict[str, float]:
        """Train student and autoencoder on good ``images``; map quantiles from good ``validation`` images.

        After each step count in ``checkpoints`` the model is made usable (eval mode, quantiles) and
        ``on_checkpoint(step, training_seconds_so_far)`` is called; training then continues where it was.
        With ``resume_file``, the whole training state (weights, optimiser, schedule, random generators, step
        times) is written there atomically every ``save_every`` steps and at each checkpoint, and a run that
        finds the file picks up at its step, so a long run can be stopped and continued (same images and
        settings expected). ``self.step_seconds`` holds the wall time of every step so far.

        Cancelled through ``control`` (checked after every step), the run writes its state to ``resume_file``
        at the step reached (with a :class:`core.types.ResumePoint` beside it) and raises
        :class:`core.types.TrainingCancelled` naming that step; resuming ends where the run never stopped would.
        """
        self._graph = None
        if not images:
            raise ValueError("expected at least one good training image, found none")
        torch.manual_seed(self.config.seed)
        rng = random.Random(self.config.seed)
        spec = self.config.input_spec
        control.report("teacher statistics", 0.0)
        device = compute_device()
        self._device = device
        self.model.to(device)
        self._teacher_mean_std(images)
        train = to_tensor(images, spec).to(device)
        penalty = load_penalty_images(Path(self.config.penalty_dir), spec).to(device)
        params = list(self.model.student.parameters()) + list(self.model.ae.parameters())
        optimizer = torch.optim.Adam(params, lr=self.config.lr, weight_decay=self.config.weight_decay)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, int(0.95 * self.config.steps)),
                                                    gamma=0.1)
        losses: list[float] = []
        self.step_seconds = []
        first = 0
        digest = _images_digest(images) if resume_file is not None else ""
        if resume_file is not None and resume_file.is_file():
            first = self._restore_training(resume_file, optimizer, scheduler, rng, losses, len(images), digest)
            control.report(f"resuming at step {first} of {self.config.steps}", 0.95 * first / self.config.steps)

        def stopped(done: int) -> TrainingCancelled:
            """Keep the state at ``done`` steps (when there is a file for it) and say so."""
            if resume_file is None:
                return TrainingCancelled(f"cancelled at step {done} of {self.config.steps}; nothing was kept")
            self._save_training(resume_file, done, optimizer, scheduler, rng, losses, len(images), digest)
            return TrainingCancelled(f"cancelled at step {done} of {self.config.steps}; the training state is "
                                     f"kept in {resume_file.parent} to resume")

        self.model.train()
        self.model.teacher.eval()
        for step in range(first, self.config.steps):
            t0 = time.perf_counter()
            image = train[rng.randrange(train.shape[0])][None]
            pen = penalty[rng.randrange(penalty.shape[0])][None]
            if rng.random() < 0.3:
                pen = pen.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
            loss_st, loss_ae, loss_stae = self.model(batch=image, batch_imagenet=pen)
            loss = loss_st + loss_ae + loss_stae
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            del losses[:-50]
            self.step_seconds.append(time.perf_counter() - t0)
            done = step + 1
            try:
                control.check(f"step {done}/{self.config.steps}")
                if step % 10 == 0 or done == self.config.steps:
                    control.report(f"step {done}/{self.config.steps}, loss {np.mean(losses[-10:]):.3f}",
                                   0.95 * done / self.config.steps)
            except TrainingCancelled:
                raise stopped(done) from None
            at_checkpoint = on_checkpoint is not None and done in checkpoints and done < self.config.steps
            if at_checkpoint and on_checkpoint is not None:
                self.model.eval()
                self._set_quantiles(validation if len(validation) else images)
                self._graph = None
                self.model.to("cpu")
                on_checkpoint(done, sum(self.step_seconds))
                self._graph = None
                self.model.to(device)
                self.model.train()
                self.model.teacher.eval()
            # saved after the checkpoint's callback: a run stopped during it resumes before the checkpoint
            if resume_file is not None and done < self.config.steps and (
                    at_checkpoint or (save_every > 0 and done % save_every == 0)):
                self._save_training(resume_file, done, optimizer, scheduler, rng, losses, len(images), digest)
        train_seconds = sum(self.step_seconds)
        try:
            control.report("map normalisation on held-out good images", 0.97)
        except TrainingCancelled:
            raise stopped(self.config.steps) from None
        self.model.eval()
        self._set_quantiles(validation if len(validation) else images)
        self.model.to("cpu")
        self._device = torch.device("cpu")
        control.report("done", 1.0)
        return {"train_seconds": train_seconds, "seconds_per_step": train_seconds / max(1, len(self.step_seconds)),
                "final_loss": float(np.mean(losses)) if losses else float("nan")}

    def _save_training(self, path: Path, step: int, optimizer: torch.optim.Optimizer,
                       scheduler: torch.optim.lr_scheduler.LRScheduler, rng: random.Random,
                       losses: list[float], num_images: int, digest: str) -> None:
        """Everything needed to continue training at ``step``, written atomically; then the
        :class:`core.types.ResumePoint` that describes it, beside it."""
        state = {"config": self.config.to_dict(), "num_images": num_images, "images_sha1": digest, "step": step,
                 "student": self.model.student.state_dict(), "ae": self.model.ae.state_dict(),
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "rng": rng.getstate(), "torch_rng": torch.get_rng_state(),
                 "losses": list(losses), "step_seconds": list(self.step_seconds)}
        if self._device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self._device)
        buffer = io.BytesIO()
        torch.save(state, buffer)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buffer.getvalue())
        ResumePoint(kind=KIND, step=step, steps=self.config.steps, settings=self.config.to_dict(),
                    num_images=num_images, train_seconds=sum(self.step_seconds), saved=now_iso()).write(path.parent)

    def _restore_training(self, path: Path, optimizer: torch.optim.Optimizer,
                          scheduler: torch.optim.lr_scheduler.LRScheduler, rng: random.Random,
                          losses: list[float], num_images: int, digest: str) -> int:
        """Load a state written by :meth:`_save_training`; returns the step to continue from. A state that
        records its images' digest must have been written for these very images."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"expected a training state written by EfficientAD.fit in {path}, found an "
                             f"unreadable file ({type(exc).__name__}: {exc})") from exc
        if state.get("config") != self.config.to_dict() or state.get("num_images") != num_images:
            raise ValueError(f"expected a training state for {num_images} images and settings "
                             f"{self.config.to_dict()}, found one for {state.get('num_images')} images and "
                             f"{state.get('config')} in {path}")
        if state.get("images_sha1") and digest and state["images_sha1"] != digest:
            raise ValueError(f"expected a training state for these {num_images} images, found one written for "
                             f"other images (digest {state['images_sha1'][:12]}, these {digest[:12]}) in {path}")
        self.model.student.load_state_dict(state["student"])
        self.model.ae.load_state_dict(state["ae"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng.setstate(_as_tuple(state["rng"]))  # type: ignore[arg-type]  # a tuple again after _as_tuple
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self._device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self._device)
        losses[:] = state["losses"]
        self.step_seconds = list(state["step_seconds"])
        return int(state["step"])

    def fit_good(self, images: Sequence[np.ndarray], holdout: Sequence[np.ndarray],
                 control: TrainControl = NO_CONTROL) -> dict[str, Any]:
        """:class:`core.models.registry.Detector` training: :meth:`fit` with the held-out images for map quantiles.
        With ``control.state_dir``, the run's state is kept there (every :data:`SAVE_EVERY` steps and when
        cancelled) and a state found there is continued."""
        resume_file = control.state_dir / STATE_FILE if control.state_dir is not None else None
        return self.fit(images, holdout, control, resume_file=resume_file, save_every=SAVE_EVERY)

    def export_parts(self) -> tuple[dict[str, bytes], dict[str, Any]]:
        """Files and parameters of an export bundle: the whole eval network (scores and maps) as ONNX."""
        h, w = self.config.height, self.config.width
        return ({"model.onnx": export_onnx(_ScoresAndMaps(self.model), h, w, 2)},
                {"kind": KIND, "height": h, "width": w, "mean": None, "std": None})

    # ---------------------------------------------------------------- inference
    def prepare(self) -> None:
        """Nothing to build before scoring (the ONNX graph is exported by the warm-up pass)."""

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw image scores ``[B]`` and anomaly maps ``[B, H, W]`` at model input size."""
        graph = self._inference_graph()
        if graph is not None:
            scores, maps = graph(batch)
        else:
            with torch.inference_mode():
                scores, maps = _ScoresAndMaps(self.model)(batch)
        return scores.reshape(-1), maps[:, 0]

    def predict(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        return predict_in_batches(self.forward, images, self.config.input_spec, self.config.batch_size)

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
    """anomalib's eval forward as plain tensors: images ``[B, 3, H, W]`` -> (scores ``[B]``, maps ``[B, 1, H, W]``)."""

    def __init__(self, model: EfficientAdModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(batch)
        return out.pred_score, out.anomaly_map


def _reduce(values: torch.Tensor, limit: int = 2 ** 24) -> torch.Tensor:
    """At most ``limit`` elements (torch.quantile's input limit), sampled with a fixed seed."""
    if values.numel() <= limit:
        return values
    idx = torch.randperm(values.numel(), generator=torch.Generator().manual_seed(0))[:limit]
    return values[idx]


def _images_digest(images: Sequence[np.ndarray]) -> str:
    """SHA-1 over the training images' shapes and pixels, in order: a resumed run must see the same images."""
    h = hashlib.sha1()
    for image in images:
        h.update(repr(image.shape).encode())
        h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def _as_tuple(value: object) -> object:
    """A random-generator state back from storage (lists, as saved, become the tuples ``setstate`` wants)."""
    if isinstance(value, list):
        return tuple(_as_tuple(v) for v in value)
    return value
