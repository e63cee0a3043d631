"""The one place that chooses where networks train: CUDA when torch sees one, else the CPU.

``INSPECT_DEVICE=cpu|cuda|auto`` overrides the choice. Weights are always saved from and loaded to the CPU
(``map_location="cpu"``), so a model trained on one device loads on the other; fast inference runs in ONNX
Runtime on the CPU, where a line PC runs it.
"""

from __future__ import annotations

import torch

from core import settings

ENV = settings.DEVICE_ENV
CHOICES = settings.DEVICE_CHOICES


def compute_device() -> torch.device:
    """The device for training (EfficientAD's loop, PatchCore's feature pass).

    Raises:
        ValueError: ``INSPECT_DEVICE`` is not one of ``auto``, ``cpu``, ``cuda``, or asks for CUDA that torch
            does not see.
    """
    choice = settings.device()
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{ENV}=cuda, but torch {torch.__version__} sees no CUDA device")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def describe(device: torch.device) -> str:
    """``"cpu"`` or ``"cuda (NVIDIA H200)"``: what a manifest records."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type
