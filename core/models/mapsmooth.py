"""PatchCore's anomaly map (nearest upsampling + reflect-padded Gaussian blur) as two small matrix products.

anomalib's :class:`AnomalyMapGenerator` upsamples the ``[h, w]`` patch-score grid to ``[H, W]`` (nearest) and
blurs it with a full 2-D ``k x k`` Gaussian (k = 33 for sigma 4): ``H * W * k * k`` multiply-adds. Every step is
linear and acts on rows and columns separately, so the same map is ``A_h @ S @ A_w.T`` with ``A_h: [H, h]`` and
``A_w: [W, w]`` built once by pushing unit vectors through the very same torch operations along one axis.
Equal to anomalib's map up to float rounding (tests/test_runtime.py).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from anomalib.models.image.patchcore.anomaly_map import AnomalyMapGenerator


def separable_kernels(generator: AnomalyMapGenerator) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1-D kernels ``([k_h], [k_w])`` whose outer product is the generator's 2-D blur kernel."""
    kernel = generator.blur.kernel.detach().reshape(generator.blur.kernel.shape[-2:]).double()
    k_h, k_w = kernel.sum(dim=1), kernel.sum(dim=0)
    if not torch.allclose(torch.outer(k_h, k_w) / kernel.sum(), kernel, atol=1e-9):
        raise ValueError("expected a separable (Gaussian) blur kernel, found one that is not an outer product")
    return k_h / k_h.sum() * kernel.sum().sqrt(), k_w / k_w.sum() * kernel.sum().sqrt()


def axis_operator(n_in: int, n_out: int, kernel: torch.Tensor, border: str) -> torch.Tensor:
    """``[n_out, n_in]`` matrix of nearest upsampling ``n_in -> n_out``, ``border`` padding and 1-D ``kernel``."""
    size = kernel.numel()
    eye = torch.eye(n_in, dtype=torch.float64)[:, None, :]
    up = F.interpolate(eye, size=n_out, mode="nearest")
    left = (size - 1) // 2
    padded = F.pad(up, (left, size - 1 - left), mode=border)
    out = F.conv1d(padded, kernel.view(1, 1, -1))
    return out[:, 0, :].T.contiguous()


class MapSmoother:
    """anomalib's map for one :class:`AnomalyMapGenerator`; the kernels are split once, operators cached per size."""

    def __init__(self, generator: AnomalyMapGenerator) -> None:
        k_h, k_w = separable_kernels(generator)
        self.k_h, self.k_w = k_h, k_w
        self.border = generator.blur.border_type

    @lru_cache(maxsize=32)  # noqa: B019  (one smoother per model; a handful of sizes)
    def operators(self, h: int, w: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``A_h: [height, h]`` and ``A_w.T: [w, width]``."""
        a_h = axis_operator(h, height, self.k_h, self.border).float()
        a_w = axis_operator(w, width, self.k_w, self.border).float()
        return a_h, a_w.T.contiguous()

    def __call__(self, patch_scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Anomaly maps ``[B, 1, H, W]`` for ``patch_scores: [B, 1, h, w]``, equal to ``generator(patch_scores, size)``."""
        b, c, h, w = patch_scores.shape
        if c != 1:
            raise ValueError(f"expected patch scores [B, 1, h, w], found {tuple(patch_scores.shape)}")
        a_h, a_w_t = self.operators(h, w, int(size[0]), int(size[1]))
        return (a_h @ patch_scores.float() @ a_w_t).reshape(b, 1, int(size[0]), int(size[1]))
