"""EfficientAD's resumable training loop: the step schedule, the penalty images, the state saved and resumed.

:func:`fit` trains an :class:`core.models.efficientad.EfficientAD` detector's student and autoencoder one image per
step (anomalib's losses, our CPU step budget), reports progress, can be cancelled after any step, and keeps its whole
state (weights, optimiser, schedule, random generators, step times) in a file so that a stopped run resumes exactly
where it stopped: a cancelled-and-resumed run ends where an uninterrupted one would (tests/test_efficientad.py).
The detector itself (networks, map normalisation, inference, export) stays in :mod:`core.models.efficientad`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

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


def fit(detector: EfficientAD, images: Sequence[np.ndarray], validation: Sequence[np.ndarray],
        control: TrainControl = NO_CONTROL, checkpoints: tuple[int, ...] = (),
        on_checkpoint: Callable[[int, float], None] | None = None,
        resume_file: Path | None = None, save_every: int = 0) -> dict[str, float]:
    """Train ``detector``'s student and autoencoder on good uint8 RGB ``images`` ``[H, W, 3]``; map quantiles from
    good ``validation`` images (``images`` when there are none). Returns train_seconds, seconds_per_step and
    final_loss; ``detector.step_seconds`` holds the wall time of every step so far.

    After each step count in ``checkpoints`` the model is made usable (eval mode, quantiles) and
    ``on_checkpoint(step, training_seconds_so_far)`` is called; training then continues where it was.
    With ``resume_file``, the whole training state is written there atomically every ``save_every`` steps and at
    each checkpoint, and a run that finds the file picks up at its step (same images and settings expected).

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
    control.report("teacher statistics", 0.0)
    device = compute_device()
    detector.use_device(device)
    detector.fit_teacher_statistics(images)
    train = to_tensor(images, spec).to(device)
    penalty = load_penalty_images(Path(config.penalty_dir), spec).to(device)
    model = detector.model
    params = list(model.student.parameters()) + list(model.ae.parameters())
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = step_schedule(optimizer, config.steps)
    losses: list[float] = []
    detector.step_seconds = []
    first = 0
    digest = images_digest(images) if resume_file is not None else ""
    if resume_file is not None and resume_file.is_file():
        first = restore_state(detector, resume_file, optimizer, scheduler, rng, losses, len(images), digest)
        control.report(f"resuming at step {first} of {config.steps}", 0.95 * first / config.steps)

    def stopped(done: int) -> TrainingCancelled:
        """Keep the state at ``done`` steps (when there is a file for it) and say so."""
        if resume_file is None:
            return TrainingCancelled(f"cancelled at step {done} of {config.steps}; nothing was kept")
        save_state(detector, resume_file, done, optimizer, scheduler, rng, losses, len(images), digest)
        return TrainingCancelled(f"cancelled at step {done} of {config.steps}; the training state is "
                                 f"kept in {resume_file.parent} to resume")

    model.train()
    model.teacher.eval()
    for step in range(first, config.steps):
        t0 = time.perf_counter()
        image = train[rng.randrange(train.shape[0])][None]
        pen = penalty[rng.randrange(penalty.shape[0])][None]
        if rng.random() < GRAY_PENALTY:
            pen = pen.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
        loss_st, loss_ae, loss_stae = model(batch=image, batch_imagenet=pen)
        loss = loss_st + loss_ae + loss_stae
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        del losses[:-50]
        detector.step_seconds.append(time.perf_counter() - t0)
        done = step + 1
        try:
            control.check(f"step {done}/{config.steps}")
            if step % 10 == 0 or done == config.steps:
                control.report(f"step {done}/{config.steps}, loss {np.mean(losses[-10:]):.3f}",
                               0.95 * done / config.steps)
        except TrainingCancelled:
            raise stopped(done) from None
        at_checkpoint = on_checkpoint is not None and done in checkpoints and done < config.steps
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
        if resume_file is not None and done < config.steps and (
                at_checkpoint or (save_every > 0 and done % save_every == 0)):
            save_state(detector, resume_file, done, optimizer, scheduler, rng, losses, len(images), digest)
    train_seconds = sum(detector.step_seconds)
    try:
        control.report("map normalisation on held-out good images", 0.97)
    except TrainingCancelled:
        raise stopped(config.steps) from None
    model.eval()
    detector.fit_quantiles(validation if len(validation) else images)
    detector.use_device(torch.device("cpu"))
    control.report("done", 1.0)
    return {"train_seconds": train_seconds, "seconds_per_step": train_seconds / max(1, len(detector.step_seconds)),
            "final_loss": float(np.mean(losses)) if losses else float("nan")}


def save_state(detector: EfficientAD, path: Path, step: int, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, rng: random.Random,
               losses: list[float], num_images: int, digest: str) -> None:
    """Everything needed to continue training at ``step``, written atomically; then the
    :class:`core.types.ResumePoint` that describes it, beside it."""
    config, model = detector.config, detector.model
    state = {"config": config.to_dict(), "num_images": num_images, "images_sha1": digest, "step": step,
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
    ResumePoint(kind=detector.kind, step=step, steps=config.steps, settings=config.to_dict(),
                num_images=num_images, train_seconds=sum(detector.step_seconds), saved=now_iso()).write(path.parent)


def restore_state(detector: EfficientAD, path: Path, optimizer: torch.optim.Optimizer,
                  scheduler: torch.optim.lr_scheduler.LRScheduler, rng: random.Random,
                  losses: list[float], num_images: int, digest: str) -> int:
    """Load a state written by :func:`save_state` into ``detector`` and the run's parts; returns the step to
    continue from. A state that records its images' digest must have been written for these very images.

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
    return int(state["step"])


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
