"""EfficientAD's resumable training loop: the step schedule, the penalty images, the state saved and resumed.

:func:`fit` trains an :class:`core.models.efficientad.EfficientAD` detector's student and autoencoder, reports
progress, can be cancelled after any step, and keeps its whole state (weights, optimiser, schedule, random
generators, step times, the precision chosen) in a file so that a stopped run resumes exactly where it stopped: a
cancelled-and-resumed run ends where an uninterrupted one would (tests/test_efficientad.py).

Two recipes, chosen by ``config.schedule`` (the :data:`RECIPES` table):

- ``"step"`` (the defaults until issue 25): anomalib's loop, one image per step through the model's own training
  forward (the frozen teacher runs on the image and on a random augmentation of it every step), learning rate 10x
  lower after 95% of the steps.
- ``"cosine"`` (the default): the teacher is a frozen trunk, so its normalised outputs are computed ONCE, for every
  training image and for a fixed pool of augmented images (:class:`TeacherTargets`), and each step trains
  ``config.train_batch`` images against those targets (student on image, penalty and augmented image in one call,
  autoencoder on the augmented image; anomalib's three losses); linear warm-up then cosine decay of the learning
  rate; student and autoencoder under bf16 autocast when a short measurement at the start of the run finds it faster
  on this machine (``config.precision="auto"``; the teacher targets, the losses and the saved weights stay fp32).
  The step count is ``config.steps`` or, when fewer suffice, ``config.max_epochs`` passes over the images
  (:func:`planned_steps`).

The detector itself (networks, map normalisation, inference, export) stays in :mod:`core.models.efficientad`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torchvision.transforms import functional as TF

from core.data.dataset import image_files
from core.data.imageio import ImageLoadError, load_image
from core.files import atomic_write_bytes, now_iso
from core.models.device import compute_device
from core.models.preprocess import InputSpec, to_tensor
from core.types import NO_CONTROL, ResumePoint, TrainControl, TrainingCancelled

if TYPE_CHECKING:
    from core.models.efficientad import EfficientAD

logger = logging.getLogger(__name__)

STATE_FILE = "state.pt"  # the resumable training state, in TrainControl.state_dir
SAVE_EVERY = 250  # steps between saves of that state in the product path (about a minute of CPU training)
LR_DROP_AT = 0.95  # the learning rate drops 10x after this share of the steps (anomalib's schedule)
GRAY_PENALTY = 0.3  # share of steps whose penalty image is turned gray
WARMUP_SHARE = 0.05  # cosine recipe: linear warm-up over this share of the steps
AUG_POOL_MIN, AUG_POOL_MAX = 64, 400  # cosine recipe: augmented images whose teacher targets are cached
AUG_RANGE = (0.8, 1.2)  # anomalib's augmentation coefficient range (brightness, contrast or saturation)
AUGMENTATIONS: tuple[Callable[[torch.Tensor, float], torch.Tensor], ...] = (
    TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)  # anomalib's choose_random_aug_image
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
BF16_MIN_GAIN = 1.15  # "auto" trains in bf16 only when its trial steps ran at least this much faster than fp32
TRIAL_STEPS = 2  # timed trial steps per precision (after one warm-up each)


def load_penalty_images(folder: Path, spec: InputSpec) -> torch.Tensor:
    """Penalty images ``[P, 3, H, W]`` in [0, 1] from ``folder`` (unreadable files are skipped).

    Raises:
        FileNotFoundError: no readable image in ``folder``.
    """
    images = []
    for path in image_files(folder):
        try:
            images.append(load_image(path))
        except ImageLoadError:
            logger.warning("penalty image %s unreadable, skipped", path)
            continue
    if not images:
        raise FileNotFoundError(f"expected penalty images in {folder}, found none")
    return to_tensor(images, spec)


def step_schedule(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.StepLR:
    """The learning-rate schedule of a ``steps``-step run: 10x lower after :data:`LR_DROP_AT` of them."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, int(LR_DROP_AT * steps)), gamma=0.1)


def cosine_schedule(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over :data:`WARMUP_SHARE` of ``steps``, then cosine decay to zero at the last step."""
    warm = max(1, round(WARMUP_SHARE * steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, steps - warm))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def planned_steps(config: Any, num_images: int) -> int:
    """The run's step count: ``config.steps``, or fewer when ``config.max_epochs`` passes over ``num_images``
    images in batches of ``config.train_batch`` take fewer (0 epochs: no cap); at least one step."""
    if config.schedule != "cosine" or config.max_epochs <= 0:
        return int(config.steps)
    return max(1, min(int(config.steps), math.ceil(config.max_epochs * num_images / config.train_batch)))


def augment(image: torch.Tensor, which: int, coefficient: float) -> torch.Tensor:
    """anomalib's training augmentation, fixed: :data:`AUGMENTATIONS` [``which``] by ``coefficient`` on images
    ``[B, 3, H, W]`` in [0, 1]."""
    return AUGMENTATIONS[which](image, coefficient)


def teacher_outputs(detector: EfficientAD, images: torch.Tensor, batch: int) -> torch.Tensor:
    """The frozen teacher's raw outputs ``[N, C, h, w]`` for images ``[N, 3, H, W]``, ``batch`` at a time."""
    with torch.no_grad():
        return torch.cat([detector.model.teacher(images[i:i + batch]) for i in range(0, images.shape[0], batch)])


def set_teacher_statistics(detector: EfficientAD, raw: torch.Tensor) -> None:
    """The teacher's per-channel mean and std over its outputs ``raw`` ``[N, C, h, w]`` into the model (the same
    sums as :meth:`core.models.efficientad.EfficientAD.fit_teacher_statistics`, without running the teacher
    again)."""
    count = raw.shape[0] * raw.shape[2] * raw.shape[3]
    mean = raw.sum(dim=(0, 2, 3)) / count
    std = torch.sqrt(((raw ** 2).sum(dim=(0, 2, 3)) / count - mean ** 2).clamp_min(1e-12))
    detector.model.mean_std["mean"].data = mean.view(1, -1, 1, 1)
    detector.model.mean_std["std"].data = std.view(1, -1, 1, 1)


@dataclass(frozen=True)
class TeacherTargets:
    """The teacher's normalised outputs, computed once: ``train`` ``[N, C, h, w]`` for the training images and
    ``augmented`` ``[A, C, h, w]`` for the pool of augmented images, entry ``j`` being :func:`augment` of
    training image ``sources[j]`` by (``which[j]``, ``coefficients[j]``). With ``cached=False`` the tensors are
    empty and :meth:`of_train` / :meth:`of_augmented` run the teacher on the batch instead (the reference the
    cache is tested against)."""

    train: torch.Tensor
    augmented: torch.Tensor
    sources: tuple[int, ...]
    which: tuple[int, ...]
    coefficients: tuple[float, ...]
    cached: bool

    @classmethod
    def build(cls, detector: EfficientAD, train: torch.Tensor, seed: int, cached: bool = True) -> TeacherTargets:
        """Teacher statistics from the training images ``[N, 3, H, W]`` (set into the model) and the targets.
        The pool: every training image once (at least :data:`AUG_POOL_MIN`, at most :data:`AUG_POOL_MAX`
        entries), each with one augmentation drawn from a generator seeded by ``seed``."""
        batch = detector.config.batch_size
        raw = teacher_outputs(detector, train, batch)
        set_teacher_statistics(detector, raw)
        n = train.shape[0]
        size = min(AUG_POOL_MAX, max(AUG_POOL_MIN, n))
        draw = random.Random(seed + 1)
        order = list(range(n))
        draw.shuffle(order)
        sources = tuple(order[j % n] for j in range(size))
        which = tuple(draw.randrange(len(AUGMENTATIONS)) for _ in range(size))
        coefficients = tuple(draw.uniform(*AUG_RANGE) for _ in range(size))
        if not cached:
            empty = torch.empty(0)
            return cls(empty, empty, sources, which, coefficients, False)
        targets = cls(normalise(detector, raw), torch.empty(0), sources, which, coefficients, True)
        augmented = torch.cat([normalise(detector, teacher_outputs(detector, targets.augmented_images(
            train, list(range(i, min(size, i + batch)))), batch)) for i in range(0, size, batch)])
        return cls(targets.train, augmented, sources, which, coefficients, True)

    @property
    def pool(self) -> int:
        return len(self.sources)

    def augmented_images(self, train: torch.Tensor, entries: Sequence[int]) -> torch.Tensor:
        """Pool ``entries``' augmented images ``[B, 3, H, W]``."""
        return torch.cat([augment(train[self.sources[j]][None], self.which[j], self.coefficients[j])
                          for j in entries])

    def of_train(self, detector: EfficientAD, images: torch.Tensor, idx: Sequence[int]) -> torch.Tensor:
        """Normalised targets ``[B, C, h, w]`` of training images ``idx`` (``images`` is that batch)."""
        if self.cached:
            return self.train[list(idx)].to(images.device)
        with torch.no_grad():
            return normalise(detector, detector.model.teacher(images))

    def of_augmented(self, detector: EfficientAD, images: torch.Tensor, entries: Sequence[int]) -> torch.Tensor:
        """Normalised targets ``[B, C, h, w]`` of pool ``entries`` (``images`` is their augmented batch)."""
        if self.cached:
            return self.augmented[list(entries)].to(images.device)
        with torch.no_grad():
            return normalise(detector, detector.model.teacher(images))


def normalise(detector: EfficientAD, raw: torch.Tensor) -> torch.Tensor:
    """Teacher outputs ``[B, C, h, w]`` standardised by the model's teacher statistics (as anomalib does)."""
    mean_std = detector.model.mean_std
    with torch.no_grad():  # the statistics are parameters of the model, never trained
        return (raw - mean_std["mean"]) / mean_std["std"]


def hard_mean(distance: torch.Tensor, quantile: float) -> torch.Tensor:
    """Mean of the largest ``1 - quantile`` share of ``distance``'s elements (anomalib's hard-feature loss, the
    quantile taken as a count: ``ceil((1 - quantile) * n)`` elements)."""
    flat = distance.flatten()
    k = max(1, math.ceil((1.0 - quantile) * flat.numel()))
    return torch.topk(flat, k, sorted=False).values.mean()


class Recipe(Protocol):
    """One training step of a recipe: draws its batch from ``rng``, returns the loss to minimise."""

    def loss(self, rng: random.Random) -> torch.Tensor: ...


class StockRecipe:
    """anomalib's step (``schedule="step"``): one image and one penalty image through the model's training forward."""

    def __init__(self, detector: EfficientAD, train: torch.Tensor, penalty: torch.Tensor) -> None:
        self.model, self.train, self.penalty = detector.model, train, penalty

    def loss(self, rng: random.Random) -> torch.Tensor:
        image = self.train[rng.randrange(self.train.shape[0])][None]
        pen = self.penalty[rng.randrange(self.penalty.shape[0])][None]
        if rng.random() < GRAY_PENALTY:
            pen = pen.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
        loss_st, loss_ae, loss_stae = self.model(batch=image, batch_imagenet=pen)
        return loss_st + loss_ae + loss_stae


class CachedRecipe:
    """The cosine recipe's step: ``batch`` images against the teacher targets, optionally under bf16 autocast.

    Losses (anomalib's, per batch): hard student-teacher term (:func:`hard_mean` at ``config.hard_quantile``) +
    the student's squared output on penalty images + autoencoder-teacher and autoencoder-student distances on the
    augmented images."""

    def __init__(self, detector: EfficientAD, train: torch.Tensor, penalty: torch.Tensor,
                 targets: TeacherTargets) -> None:
        self.detector, self.model, self.train, self.penalty, self.targets = (
            detector, detector.model, train, penalty, targets)
        self.batch = detector.config.train_batch
        self.quantile = detector.config.hard_quantile
        self.bf16 = False

    def loss(self, rng: random.Random) -> torch.Tensor:
        b, c = self.batch, self.model.teacher_out_channels
        idx = [rng.randrange(self.train.shape[0]) for _ in range(b)]
        pen_idx = [rng.randrange(self.penalty.shape[0]) for _ in range(b)]
        gray = [rng.random() < GRAY_PENALTY for _ in range(b)]
        entries = [rng.randrange(self.targets.pool) for _ in range(b)]
        images = self.train[idx]
        pen = self.penalty[pen_idx]
        mask = torch.tensor(gray, device=pen.device).view(-1, 1, 1, 1)
        pen = torch.where(mask, pen.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1), pen)
        aug = self.targets.augmented_images(self.train, entries)
        target = self.targets.of_train(self.detector, images, idx)
        target_aug = self.targets.of_augmented(self.detector, aug, entries)
        with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            student = self.model.student(torch.cat([images, pen, aug]))
            ae = self.model.ae(aug, images.shape[-2:])
        student, ae = student.float(), ae.float()
        loss_st = hard_mean((target - student[:b, :c]) ** 2, self.quantile) + torch.mean(student[b:2 * b, :c] ** 2)
        loss_ae = torch.mean((target_aug - ae) ** 2)
        loss_stae = torch.mean((ae - student[2 * b:, c:]) ** 2)
        return loss_st + loss_ae + loss_stae


SCHEDULES: dict[str, Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LRScheduler]] = {
    "step": step_schedule, "cosine": cosine_schedule}


def choose_bf16(recipe: CachedRecipe, precision: str, device: torch.device) -> bool:
    """Whether the run trains under bf16 autocast: ``precision`` "bf16"/"fp32" as asked; "auto" times
    :data:`TRIAL_STEPS` forward-backward passes of each (one warm-up each, no optimiser step, random generators
    left as they were) and takes bf16 when it is at least :data:`BF16_MIN_GAIN` times faster."""
    if precision != "auto":
        return precision == "bf16"
    seconds = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for bf16 in (False, True):
            recipe.bf16 = bf16
            times = []
            for i in range(TRIAL_STEPS + 1):
                t0 = time.perf_counter()
                recipe.loss(random.Random(i)).backward()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - t0)
            seconds[bf16] = min(times[1:])
    for p in recipe.model.parameters():
        p.grad = None
    chosen = seconds[False] >= BF16_MIN_GAIN * seconds[True]
    logger.info("EfficientAD training precision: %s (trial step fp32 %.3f s, bf16 %.3f s)",
                "bf16" if chosen else "fp32", seconds[False], seconds[True])
    return chosen


def fit(detector: EfficientAD, images: Sequence[np.ndarray], validation: Sequence[np.ndarray],
        control: TrainControl = NO_CONTROL, checkpoints: tuple[int, ...] = (),
        on_checkpoint: Callable[[int, float], None] | None = None,
        resume_file: Path | None = None, save_every: int = 0, cache_teacher: bool = True) -> dict[str, float]:
    """Train ``detector``'s student and autoencoder on good uint8 RGB ``images`` ``[H, W, 3]``; map quantiles from
    good ``validation`` images (``images`` when there are none). Returns train_seconds, seconds_per_step,
    final_loss, steps and bf16 (1.0 when the steps ran under bf16 autocast); ``detector.step_seconds`` holds the
    wall time of every step so far.

    After each step count in ``checkpoints`` the model is made usable (eval mode, quantiles) and
    ``on_checkpoint(step, training_seconds_so_far)`` is called; training then continues where it was.
    With ``resume_file``, the whole training state is written there atomically every ``save_every`` steps and at
    each checkpoint, and a run that finds the file picks up at its step (same images and settings expected; the
    teacher targets are computed again, they depend only on the images and the seed).
    ``cache_teacher=False`` (cosine recipe) runs the teacher on every batch instead of using its cached outputs:
    the reference the cache is tested against.

    Cancelled through ``control`` (checked after every step), the run writes its state to ``resume_file`` at the
    step reached (with a :class:`core.types.ResumePoint` beside it) and raises
    :class:`core.types.TrainingCancelled` naming that step; resuming ends where the run never stopped would.

    Raises:
        ValueError: no images, or a ``resume_file`` written for other images or settings.
    """
    config = detector.config
    detector.drop_graph()
    if not images:
        raise ValueError("expected at least one good training image, found none")
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    spec = config.input_spec
    total = planned_steps(config, len(images))
    control.report("teacher statistics", 0.0)
    device = compute_device()
    detector.use_device(device)
    train = to_tensor(images, spec).to(device)
    penalty = load_penalty_images(Path(config.penalty_dir), spec).to(device)
    recipe: StockRecipe | CachedRecipe
    if config.schedule == "step":
        detector.fit_teacher_statistics(images)
        recipe = StockRecipe(detector, train, penalty)
    else:
        targets = TeacherTargets.build(detector, train, config.seed, cached=cache_teacher)
        recipe = CachedRecipe(detector, train, penalty, targets)
    model = detector.model
    params = list(model.student.parameters()) + list(model.ae.parameters())
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = SCHEDULES[config.schedule](optimizer, total)
    losses: list[float] = []
    detector.step_seconds = []
    first = 0
    digest = images_digest(images) if resume_file is not None else ""
    model.train()
    model.teacher.eval()
    bf16: bool | None = None
    if resume_file is not None and resume_file.is_file():
        first, bf16 = restore_state(detector, resume_file, optimizer, scheduler, rng, losses, len(images), digest)
        control.report(f"resuming at step {first} of {total}", 0.95 * first / total)
    if isinstance(recipe, CachedRecipe):
        recipe.bf16 = choose_bf16(recipe, config.precision, device) if bf16 is None else bf16
    use_bf16 = isinstance(recipe, CachedRecipe) and recipe.bf16

    def stopped(done: int) -> TrainingCancelled:
        """Keep the state at ``done`` steps (when there is a file for it) and say so."""
        if resume_file is None:
            return TrainingCancelled(f"cancelled at step {done} of {total}; nothing was kept")
        save_state(detector, resume_file, done, total, optimizer, scheduler, rng, losses, len(images), digest,
                   use_bf16)
        return TrainingCancelled(f"cancelled at step {done} of {total}; the training state is "
                                 f"kept in {resume_file.parent} to resume")

    for step in range(first, total):
        t0 = time.perf_counter()
        loss = recipe.loss(rng)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        del losses[:-50]
        detector.step_seconds.append(time.perf_counter() - t0)
        done = step + 1
        try:
            control.check(f"step {done}/{total}")
            if step % 10 == 0 or done == total:
                control.report(f"step {done}/{total}, loss {np.mean(losses[-10:]):.3f}", 0.95 * done / total)
        except TrainingCancelled:
            raise stopped(done) from None
        at_checkpoint = on_checkpoint is not None and done in checkpoints and done < total
        if at_checkpoint and on_checkpoint is not None:
            model.eval()
            detector.fit_quantiles(validation if len(validation) else images)
            detector.drop_graph()
            model.to("cpu")
            on_checkpoint(done, sum(detector.step_seconds))
            detector.drop_graph()
            model.to(device)
            model.train()
            model.teacher.eval()
        # saved after the checkpoint's callback: a run stopped during it resumes before the checkpoint
        if resume_file is not None and done < total and (
                at_checkpoint or (save_every > 0 and done % save_every == 0)):
            save_state(detector, resume_file, done, total, optimizer, scheduler, rng, losses, len(images), digest,
                       use_bf16)
    train_seconds = sum(detector.step_seconds)
    try:
        control.report("map normalisation on held-out good images", 0.97)
    except TrainingCancelled:
        raise stopped(total) from None
    model.eval()
    detector.fit_quantiles(validation if len(validation) else images)
    detector.use_device(torch.device("cpu"))
    control.report("done", 1.0)
    return {"train_seconds": train_seconds, "seconds_per_step": train_seconds / max(1, len(detector.step_seconds)),
            "final_loss": float(np.mean(losses)) if losses else float("nan"), "steps": float(total),
            "bf16": float(use_bf16)}


def save_state(detector: EfficientAD, path: Path, step: int, steps: int, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, rng: random.Random,
               losses: list[float], num_images: int, digest: str, bf16: bool) -> None:
    """Everything needed to continue training at ``step`` of ``steps`` (and in the precision chosen: ``bf16``),
    written atomically; then the :class:`core.types.ResumePoint` that describes it, beside it."""
    config, model = detector.config, detector.model
    state = {"config": config.to_dict(), "num_images": num_images, "images_sha1": digest, "step": step,
             "bf16": bf16,
             "student": model.student.state_dict(), "ae": model.ae.state_dict(),
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "rng": rng.getstate(), "torch_rng": torch.get_rng_state(),
             "losses": list(losses), "step_seconds": list(detector.step_seconds)}
    if detector.device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(detector.device)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    ResumePoint(kind=detector.kind, step=step, steps=steps, settings=config.to_dict(),
                num_images=num_images, train_seconds=sum(detector.step_seconds), saved=now_iso()).write(path.parent)


def restore_state(detector: EfficientAD, path: Path, optimizer: torch.optim.Optimizer,
                  scheduler: torch.optim.lr_scheduler.LRScheduler, rng: random.Random,
                  losses: list[float], num_images: int, digest: str) -> tuple[int, bool]:
    """Load a state written by :func:`save_state` into ``detector`` and the run's parts; returns the step to
    continue from and whether the run trains under bf16 autocast. A state that records its images' digest must
    have been written for these very images.

    Raises:
        ValueError: the file is unreadable, or was written for other settings, another number of images or
            other images.
    """
    config, model = detector.config, detector.model
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"expected a training state written by EfficientAD.fit in {path}, found an "
                         f"unreadable file ({type(exc).__name__}: {exc})") from exc
    if state.get("config") != config.to_dict() or state.get("num_images") != num_images:
        raise ValueError(f"expected a training state for {num_images} images and settings "
                         f"{config.to_dict()}, found one for {state.get('num_images')} images and "
                         f"{state.get('config')} in {path}")
    if state.get("images_sha1") and digest and state["images_sha1"] != digest:
        raise ValueError(f"expected a training state for these {num_images} images, found one written for "
                         f"other images (digest {state['images_sha1'][:12]}, these {digest[:12]}) in {path}")
    model.student.load_state_dict(state["student"])
    model.ae.load_state_dict(state["ae"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng.setstate(rng_state(state["rng"]))
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and detector.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], detector.device)
    losses[:] = state["losses"]
    detector.step_seconds = list(state["step_seconds"])
    return int(state["step"]), bool(state.get("bf16", False))


def images_digest(images: Sequence[np.ndarray]) -> str:
    """SHA-1 over the training images' shapes and pixels, in order: a resumed run must see the same images."""
    h = hashlib.sha1()
    for image in images:
        h.update(repr(image.shape).encode())
        h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def _as_tuple(value: object) -> object:
    """Lists, as storage may give them back, as the tuples they were (recursively)."""
    if isinstance(value, list | tuple):
        return tuple(_as_tuple(v) for v in value)
    return value


def rng_state(value: object) -> tuple[Any, ...]:
    """A :class:`random.Random` state back from storage, as the tuple ``setstate`` wants.

    Raises:
        ValueError: ``value`` is not a sequence (not a saved generator state).
    """
    state = _as_tuple(value)
    if not isinstance(state, tuple):
        raise ValueError(f"expected a saved random-generator state (a sequence), found {type(value).__name__}")
    return state
