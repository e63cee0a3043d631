"""EfficientAD networks sized for a CPU: a pretrained EfficientNet-Lite trunk as the teacher.

anomalib's :class:`EfficientAdModel` keeps the recipe (hard-feature student loss, penalty images, autoencoder
branch, student-autoencoder discrepancy, quantile map normalisation). Its stock teacher is a PDN that must be
distilled from a large ImageNet network (57 GFLOP per 256x256 image for teacher + student here). This module
swaps in three modules with the same call signatures:

- :class:`LiteTeacher`: the offline-pretrained ``tf_efficientnet_lite*`` trunk up to stride 16, features of
  ``blocks.2`` (stride 8) and ``blocks.4`` (upsampled to stride 8), 3x3-averaged like PatchCore's
  locally aware features. No distillation error, ~0.2 GFLOP. ``[B, 3, H, W]`` in [0, 1] -> ``[B, C, H/8, W/8]``.
- :class:`LiteStudent`: a plain conv net (no batch norm: the penalty images pass through it too) with a
  ~100 px receptive field, output ``[B, 2C, H/8, W/8]`` (first C channels imitate the teacher, the rest the
  autoencoder, as in anomalib).
- :class:`LiteAutoEncoder`: anomalib's encoder shape (strided 4x4 convolutions to a 64-d code) with a decoder
  that upsamples straight to the teacher's stride-8 grid. ``forward(x, image_size)`` like anomalib's.

All three normalise their own input, so the model keeps taking images in [0, 1].
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from anomalib.data import InferenceBatch
from anomalib.models.image.efficient_ad.torch_model import (
    EfficientAdModel,
    imagenet_norm_batch,
    reduce_tensor_elems,
)
from torch import nn

from core.models.backbone import LITE_MEAN, LITE_STD, load_into_feature_extractor

# timm feature indices of efficientnet: 2 -> blocks.2 (stride 8), 3 -> blocks.4 (stride 16)
TEACHER_FEATURES: tuple[int, int] = (2, 3)
STRIDE = 8
ANOMALIB_HARD_QUANTILE = 0.999  # EfficientAdModel.compute_losses: the student learns from distances above it


def reflect_context(x: torch.Tensor, cells: int) -> torch.Tensor:
    """``x`` ``[B, 3, H, W]`` padded by ``cells`` feature cells (``cells * STRIDE`` px) of mirrored image on
    each side, so networks see image-like context at the border instead of zero padding."""
    if cells == 0:
        return x
    pad = cells * STRIDE
    return F.pad(x, (pad, pad, pad, pad), mode="reflect")


def crop_cells(y: torch.Tensor, cells: int) -> torch.Tensor:
    """Features ``[B, C, h + 2 cells, w + 2 cells]`` back to the image's own grid ``[B, C, h, w]``."""
    return y[..., cells:y.shape[-2] - cells, cells:y.shape[-1] - cells] if cells else y


class TunedEfficientAdModel(EfficientAdModel):
    """anomalib's EfficientAdModel with two settings of its recipe exposed (both structures use it):

    - ``hard_quantile``: the student-teacher loss averages the squared distances at or above this quantile
      (anomalib: 0.999). Measured on magnetic_tile: 0.99 gives the student more to learn from in a CPU budget of
      a few thousand steps (bench_efficientad.py, ``lite_hard99``).
    - ``score_border_cells``: in eval mode the image score is the map's maximum without a border of that many
      stride-8 cells (the map itself is kept whole), which keeps the border's localisation and drops most of its
      false alarms (bench_efficientad_scores.py). 0 is anomalib's score, the maximum of the whole map.
    """

    def __init__(self, teacher_out_channels: int, padding: bool, pad_maps: bool, hard_quantile: float,
                 score_border_cells: int) -> None:
        super().__init__(teacher_out_channels=teacher_out_channels, padding=padding, pad_maps=pad_maps)
        self.hard_quantile = hard_quantile
        self.score_border_cells = score_border_cells

    def forward(self, batch: torch.Tensor, batch_imagenet: torch.Tensor | None = None, normalize: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | InferenceBatch:
        """anomalib's forward; in eval mode the image score ``[B, 1]`` is the maximum of the map ``[B, 1, H, W]``
        inside ``score_border_cells * STRIDE`` px of border."""
        out = super().forward(batch, batch_imagenet, normalize)
        if self.training or not self.score_border_cells or not isinstance(out, InferenceBatch):
            return out
        amap = out.anomaly_map
        assert amap is not None  # anomalib's eval forward always returns the map
        b = self.score_border_cells * STRIDE
        score = torch.amax(amap[..., b:amap.shape[-2] - b, b:amap.shape[-1] - b], dim=(-2, -1))
        return InferenceBatch(pred_score=score, anomaly_map=amap)

    def scores_and_maps(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The eval forward as the exported inference graph runs it: (scores ``[B, 1]``, maps ``[B, 1, H, W]``) for
        images ``[B, 3, H, W]``, equal to :meth:`forward` in eval mode up to float rounding (tests/test_efficientad.py).

        anomalib upsamples both maps to ``H x W``, normalises each by its quantiles there (``torch.where`` on the
        whole maps) and averages them. Bilinear upsampling is linear with weights summing to one, so the affine
        normalisation and the average commute with it: here both are applied on the feature grid
        (:meth:`grid_map`) and the combined map is upsampled once (:meth:`upsample_and_score`), which measured
        ~2-3 ms less per 256x256 image in OpenVINO (benchmarks/bench_efficientad_profile.py)."""
        return self.upsample_and_score(self.grid_map(batch), batch.shape[-2:])

    def grid_map(self, batch: torch.Tensor) -> torch.Tensor:
        """The normalised anomaly map ``[B, 1, h, w]`` on the feature grid (before upsampling to the image size):
        the quantile-normalised student-teacher and student-autoencoder maps, averaged."""
        student_output, distance_st = self.compute_student_teacher_distance(batch)
        ae_output = self.ae(batch, batch.shape[-2:])
        map_st = torch.mean(distance_st, dim=1, keepdim=True)
        map_stae = torch.mean((ae_output - student_output[:, self.teacher_out_channels:]) ** 2, dim=1, keepdim=True)
        if self.pad_maps:
            map_st = F.pad(map_st, (4, 4, 4, 4))
            map_stae = F.pad(map_stae, (4, 4, 4, 4))
        q = self.quantiles
        is_set = self._is_set_tensor(q)  # unset quantiles: anomalib leaves the maps as they are
        half = torch.full_like(q["qa_st"], 0.5)
        zero = torch.zeros_like(q["qa_st"])
        scale_st = torch.where(is_set, 0.05 / (q["qb_st"] - q["qa_st"]), half)
        scale_ae = torch.where(is_set, 0.05 / (q["qb_ae"] - q["qa_ae"]), half)
        return (scale_st * (map_st - torch.where(is_set, q["qa_st"], zero))
                + scale_ae * (map_stae - torch.where(is_set, q["qa_ae"], zero)))

    def upsample_and_score(self, grid: torch.Tensor, image_size: tuple[int, int] | torch.Size
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores ``[B, 1]``, maps ``[B, 1, H, W]``) from :meth:`grid_map`'s ``[B, 1, h, w]``: bilinear upsampling
        to ``image_size`` (anomalib's), the score the maximum inside ``score_border_cells``."""
        amap = F.interpolate(grid, size=(int(image_size[0]), int(image_size[1])), mode="bilinear")
        b = self.score_border_cells * STRIDE
        return torch.amax(amap[..., b:amap.shape[-2] - b, b:amap.shape[-1] - b], dim=(-2, -1)), amap

    @property
    def has_grid_map(self) -> bool:
        """Whether :meth:`grid_map` followed by :meth:`upsample_and_score` is this model's eval forward."""
        return True

    def compute_losses(self, batch: torch.Tensor, batch_imagenet: torch.Tensor, distance_st: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """anomalib's three losses; with a ``hard_quantile`` other than anomalib's 0.999 the student-teacher loss
        averages the distances above that quantile instead (``distance_st: [B, C, h, w]``), the rest unchanged."""
        loss_st, loss_ae, loss_stae = super().compute_losses(batch, batch_imagenet, distance_st)
        if self.hard_quantile == ANOMALIB_HARD_QUANTILE:
            return loss_st, loss_ae, loss_stae
        flat = reduce_tensor_elems(distance_st)
        stock_hard = torch.mean(flat[flat >= torch.quantile(flat, ANOMALIB_HARD_QUANTILE)])
        ours_hard = torch.mean(flat[flat >= torch.quantile(flat, self.hard_quantile)])
        # anomalib's hard term is taken out again: its gradient cancels exactly, the penalty term stays
        return loss_st - stock_hard + ours_hard, loss_ae, loss_stae


class LiteEfficientAdModel(TunedEfficientAdModel):
    """The tuned model whose maps may leave a border of ``border_cells`` feature cells at zero,
    as the stock structure's valid convolutions do (padded convolutions disagree most at the border).
    Measured on magnetic_tile, 2 cells (16 px): the student-teacher branch's image AUROC 0.69 -> 0.84 at 1,500
    steps, but pixel AUROC fell (its breaks and frays touch the image edge); mirrored context
    (:func:`reflect_context`) is the default instead, see benchmarks/RESULTS.md."""

    def __init__(self, teacher_out_channels: int, border_cells: int, hard_quantile: float,
                 score_border_cells: int) -> None:
        super().__init__(teacher_out_channels, True, False, hard_quantile, score_border_cells)
        self.border_cells = border_cells

    @property
    def has_grid_map(self) -> bool:
        """A zeroed border is zeroed at pixel level, before the normalisation: no grid map then."""
        return not self.border_cells

    def scores_and_maps(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`TunedEfficientAdModel.scores_and_maps`; with a zeroed border anomalib's computation itself."""
        if self.has_grid_map:
            return super().scores_and_maps(batch)
        out = self.forward(batch)
        assert isinstance(out, InferenceBatch) and out.pred_score is not None and out.anomaly_map is not None
        return out.pred_score, out.anomaly_map

    def compute_maps(self, batch: torch.Tensor, student_output: torch.Tensor, distance_st: torch.Tensor,
                     normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(student-teacher map, student-autoencoder map), each ``[B, 1, H, W]`` at input size. Without a border
        this is anomalib's own computation; with one, the border is zeroed before anomalib's normalisation."""
        if not self.border_cells:
            return super().compute_maps(batch, student_output, distance_st, normalize=normalize)
        map_st, map_stae = super().compute_maps(batch, student_output, distance_st, normalize=False)
        border = self.border_cells * STRIDE
        h, w = map_st.shape[-2:]
        keep = F.pad(torch.ones(1, 1, h - 2 * border, w - 2 * border, dtype=map_st.dtype),
                     (border, border, border, border))
        map_st, map_stae = map_st * keep, map_stae * keep
        if normalize:
            q = self.quantiles
            is_set = self._is_set_tensor(q)
            range_st = torch.where(is_set, q["qb_st"] - q["qa_st"], torch.ones_like(q["qa_st"]))
            range_ae = torch.where(is_set, q["qb_ae"] - q["qa_ae"], torch.ones_like(q["qa_ae"]))
            map_st = torch.where(is_set, 0.1 * (map_st - q["qa_st"]) / range_st, map_st)
            map_stae = torch.where(is_set, 0.1 * (map_stae - q["qa_ae"]) / range_ae, map_stae)
        return map_st, map_stae


class LiteTeacher(nn.Module):
    """Frozen pretrained trunk. Images ``[B, 3, H, W]`` in [0, 1] -> features ``[B, C, H/8, W/8]``;
    ``context`` cells of mirrored image around the input (see :func:`reflect_context`)."""

    def __init__(self, backbone: str, context: int = 0, pretrained: bool = True) -> None:
        super().__init__()
        self.context = context
        self.trunk = timm.create_model(backbone, pretrained=False, features_only=True, out_indices=TEACHER_FEATURES)
        if pretrained:
            load_into_feature_extractor(self.trunk, backbone)
        self.out_channels = int(sum(self.trunk.feature_info.channels()))  # type: ignore[union-attr,operator]
        self.register_buffer("mean", torch.tensor(LITE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(LITE_STD).view(1, 3, 1, 1), persistent=False)
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean: torch.Tensor = self.mean  # type: ignore[assignment]  # buffers
        std: torch.Tensor = self.std  # type: ignore[assignment]
        fine, coarse = self.trunk((reflect_context(x, self.context) - mean) / std)
        coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        pooled = F.avg_pool2d(torch.cat([fine, coarse], dim=1), 3, stride=1, padding=1, count_include_pad=False)
        return crop_cells(pooled, self.context)


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation), nn.ReLU(inplace=True)]


class LiteStudent(nn.Module):
    """Images ``[B, 3, H, W]`` in [0, 1] -> ``[B, out_channels, H/8, W/8]``; ``width`` scales the channels;
    ``context`` cells of mirrored image around the input, as the teacher gets."""

    def __init__(self, out_channels: int, width: int = 128, context: int = 0) -> None:
        super().__init__()
        self.context = context
        w = width
        self.net = nn.Sequential(
            *_conv(3, w // 4, 2), *_conv(w // 4, w // 2, 2), *_conv(w // 2, w // 2),
            *_conv(w // 2, w, 2), *_conv(w, w), *_conv(w, w, dilation=2), *_conv(w, 2 * w, dilation=2),
            nn.Conv2d(2 * w, out_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """With two or more context cells, the last 3x3 convolution (dilation 2, padding 2) runs unpadded: its
        output is then the centre that the crop keeps, and the 1x1 convolution after it runs on that centre only
        (the same values as convolving the whole grid and cropping, ~20% less work in those two layers)."""
        h = imagenet_norm_batch(reflect_context(x, self.context))
        last = self.net[-3]
        if self.context < 2 or not isinstance(last, nn.Conv2d) or last.padding != (2, 2) or last.dilation != (2, 2):
            return crop_cells(self.net(h), self.context)
        y = F.conv2d(self.net[:-3](h), last.weight, last.bias, padding=0, dilation=2)  # = last(...) cropped by 2
        return crop_cells(self.net[-1](self.net[-2](y)), self.context - 2)


class LiteAutoEncoder(nn.Module):
    """anomalib's autoencoder idea at stride 8: ``[B, 3, H, W]`` -> 64-d code at ``H/256 x W/256`` ->
    ``[B, out_channels, H/8, W/8]``. Inputs must be multiples of 256 wide and high (checked by the config)."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        enc = []
        for cin, cout in ((3, 32), (32, 32), (32, 64), (64, 64), (64, 64)):
            enc += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
        enc.append(nn.Conv2d(64, 64, 8))
        self.encoder = nn.Sequential(*enc)
        self.up = nn.ModuleList([nn.Conv2d(64, 64, 3, padding=1) for _ in range(4)])
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(64, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, image_size: tuple[int, int] | torch.Size) -> torch.Tensor:
        code = self.encoder(imagenet_norm_batch(x))
        h, w = int(image_size[0]), int(image_size[1])
        y = code
        for i, conv in enumerate(self.up):  # sizes H/64, H/32, H/16, H/8
            scale = 64 // (2 ** i)
            y = F.interpolate(y, size=(h // scale, w // scale), mode="bilinear", align_corners=False)
            y = self.dropout(F.relu(conv(y)))
        return self.head(y)
