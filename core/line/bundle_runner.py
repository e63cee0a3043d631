"""Standalone runner of an export bundle: needs only numpy, pillow and onnxruntime (no torch, no anomalib).

    python runner.py IMAGE [IMAGE ...]          # CSV: path, score, threshold, verdict, familiar, note
    python -c "import runner; print(runner.Bundle('.').inspect(pil_image))"

The bundle folder holds: model.onnx (and model.xml/.bin, OpenVINO IR, when OpenVINO was installed at export:
used when params.json says it was faster on the exporting CPU and OpenVINO is installed here), params.json,
calibration.json, manifest.json, portable.py, and for PatchCore the memory bank (bank.npy) and the map
operators (map_h.npy, map_w_t.npy). A tiled model, PatchCore or EfficientAD (params.json "tiles": tile, overlap,
scale), is run on the image's tiles, cut and stitched by portable.py as the app does.

portable.py is the app's own module (core/portable.py) for decoding images and for the verdict rules, so the
bundle decodes as the app does (PNG/JPEG/BMP/TIFF only; 16-bit rescaled, alpha dropped, EXIF orientation
applied) and judges as it does: NO VERDICT below the minimum side, DEFECT at or above the image threshold, the
unfamiliar-image guard and aspect range of calibration.json. Scores and verdicts equal the app's up to float
rounding (tests/test_export.py states the tolerance).
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

try:
    import portable  # in the bundle: core/line/export.py copies core/portable.py beside this file
except ImportError:  # run from the repository
    from core import portable  # type: ignore[no-redef]


def _preprocess(rgb: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` -> float32 [1, 3, h, w], resized (bilinear) and normalised as the model was trained
    (core/models/preprocess.py's to_tensor, in numpy)."""
    if rgb.shape[:2] != (params["height"], params["width"]):
        rgb = np.asarray(Image.fromarray(rgb).resize((params["width"], params["height"]), Image.Resampling.BILINEAR))
    x = rgb.astype(np.float32).transpose(2, 0, 1)[None] / np.float32(255.0)
    if params.get("mean") is not None:
        x = (x - np.array(params["mean"], np.float32).reshape(1, 3, 1, 1)) / np.array(params["std"], np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray(x, dtype=np.float32)


def as_rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    """A PIL image (converted as the app converts decoded images) or a uint8 RGB array ``[H, W, 3]``."""
    if isinstance(image, Image.Image):
        return portable.pil_to_rgb(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB [H, W, 3], found {image.dtype} {image.shape}")
    return image


@dataclass(frozen=True)
class Result:
    """What the bundle says about one image, field for field what the app says (core.verdict.inspection.Inspection):
    raw score and map (None with NO VERDICT), verdict, whether it looks like the training images (None: no
    guard or no verdict), the guard's statistic and a note."""

    score: float | None
    anomaly_map: np.ndarray | None
    verdict: str
    familiar: bool | None
    typical_anomaly: float | None
    note: str


def _distances(x: np.ndarray, bank: np.ndarray, bank_sq: np.ndarray) -> np.ndarray:
    """Euclidean distances [n, M] as anomalib computes them (|x|^2 - 2 x.b + |b|^2, clamped, sqrt), float32."""
    d = (x * x).sum(1, keepdims=True) - 2.0 * (x @ bank.T) + bank_sq[None, :]
    return np.sqrt(np.maximum(d, 0.0), dtype=np.float32)


class Bundle:
    """An extracted bundle folder, ready to judge images.

    Raises:
        ValueError: calibration.json holds values no verdict can be made from (the message names the file
            and the field).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.params = json.loads((self.folder / "params.json").read_text())
        self.calibration = json.loads((self.folder / "calibration.json").read_text())
        positive = bool(self.params.get("positive_scores", self.params["kind"] == "patchcore"))
        try:
            portable.check_calibration(self.calibration, positive)
        except ValueError as exc:
            raise ValueError(f"{self.folder / 'calibration.json'}: {exc}") from None
        self.rules = portable.Rules.from_calibration(self.calibration)
        self.run = self._runtime()
        if self.params["kind"] == "patchcore":
            self.bank = np.load(self.folder / "bank.npy").astype(np.float32)
            self.bank_sq = (self.bank * self.bank).sum(1)
            self.map_h = np.load(self.folder / "map_h.npy")
            self.map_w_t = np.load(self.folder / "map_w_t.npy")

    def _runtime(self):
        """The runtime measured fastest on the exporting machine (params.json), when installed here; else
        ONNX Runtime."""
        if self.params.get("runtime") == "openvino" and (self.folder / "model.xml").is_file():
            try:
                import openvino as ov

                compiled = ov.Core().compile_model(str(self.folder / "model.xml"), "CPU",
                                                   {"INFERENCE_PRECISION_HINT": "f32"})
                self.runtime = "openvino"
                return lambda x: [compiled(x)[out] for out in compiled.outputs]
            except ImportError:
                pass
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(self.folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.runtime = "onnxruntime"
        return lambda x: session.run(None, {"input": x})

    def score(self, image: Image.Image | np.ndarray) -> tuple[float, np.ndarray]:
        """(raw image score, anomaly map at the image's size), whatever its size (see :meth:`inspect`)."""
        return KINDS[self.params["kind"]](self, as_rgb(image))

    def inspect(self, image: Image.Image | np.ndarray) -> Result:
        """Score and judge one image by the app's rules (an image below the minimum side is not scored)."""
        rgb = as_rgb(image)
        if self.rules.size_problem(rgb.shape) is not None:
            found = self.rules.judge(rgb.shape, None, None)
            return Result(None, None, found.verdict, None, None, found.note)
        score, amap = self.score(rgb)
        found = self.rules.judge(rgb.shape, score, amap)
        guard = found.familiarity
        return Result(score, amap, found.verdict, None if guard is None else guard.familiar,
                      None if guard is None else guard.value, found.note)

    def verdict(self, score: float) -> str:
        """OK / REVIEW / DEFECT for a raw score (the size rule and the guard are :meth:`inspect`'s)."""
        return portable.verdict(score, self.rules.image_threshold, self.rules.review)


def _patch_scores(bundle: Bundle, emb: np.ndarray) -> tuple[float, np.ndarray]:
    """PatchCore's image score and map ``[height, width]`` for one input's patch embeddings ``emb: [D, h, w]``."""
    d, h, w = emb.shape
    flat = np.ascontiguousarray(emb.reshape(d, h * w).T)  # [h*w, D]
    dist = _distances(flat, bundle.bank, bundle.bank_sq)
    locations = dist.argmin(1)
    patch = dist[np.arange(len(flat)), locations]
    top = int(patch.argmax())
    score = float(patch[top])
    k = min(int(bundle.params["num_neighbors"]), len(bundle.bank))
    if k > 1:
        neighbour = bundle.bank[locations[top]][None]
        support = np.argsort(_distances(neighbour, bundle.bank, bundle.bank_sq)[0], kind="stable")[:k]
        dists = _distances(flat[top][None], bundle.bank[support], bundle.bank_sq[support])[0].astype(np.float64)
        soft = np.exp(dists - dists.max())
        score *= float(1.0 - (soft / soft.sum())[0])
    return score, bundle.map_h @ patch.reshape(h, w) @ bundle.map_w_t


def _tiled(bundle: Bundle, image: np.ndarray, score_batch) -> tuple[float, np.ndarray]:
    """Score ``image`` with ``score_batch`` (network input [B, 3, h, w] -> list of (score, map [h, w])): the whole
    image resized to the network's input, or, for a tiled model (params.json "tiles"), its tiles cut as the app
    cuts them (portable.py), all in one network call, the top tile's score and the tiles' maps stitched; the map
    resized back to the image."""
    tiles = bundle.params.get("tiles")
    if tiles is None:
        score, amap = score_batch(_preprocess(image, bundle.params))[0]
        return score, portable.resize_map(amap, image.shape[:2])
    scaled = portable.scale_image(image, float(tiles["scale"]))
    tile, overlap = int(tiles["tile"]), float(tiles["overlap"])
    batch = np.concatenate([_preprocess(t, bundle.params) for t in portable.crop_tiles(scaled, tile, overlap)])
    found = score_batch(batch)
    amap = portable.stitch_tiles(scaled.shape, portable.tile_boxes(scaled.shape, tile, overlap),
                                 np.stack([m for _, m in found]))
    return max(s for s, _ in found), portable.resize_map(amap, image.shape[:2])


def _patchcore(bundle: Bundle, image: np.ndarray) -> tuple[float, np.ndarray]:
    return _tiled(bundle, image, lambda batch: [_patch_scores(bundle, emb) for emb in bundle.run(batch)[0]])


def _efficientad(bundle: Bundle, image: np.ndarray) -> tuple[float, np.ndarray]:
    def score_batch(batch: np.ndarray) -> list[tuple[float, np.ndarray]]:
        scores, maps = bundle.run(batch)
        return [(float(s), m[0]) for s, m in zip(scores.reshape(-1), maps, strict=True)]

    return _tiled(bundle, image, score_batch)


KINDS = {"patchcore": _patchcore, "efficientad": _efficientad}


def main(argv: list[str]) -> int:
    """Judge the images named in ``argv``; CSV on stdout (score empty with NO VERDICT; familiar yes/no, empty
    without a guard), one line on stderr per unreadable file. Exit 1 when any file could not be read."""
    bundle = Bundle(Path(__file__).resolve().parent)
    writer = csv.writer(sys.stdout)
    writer.writerow(["path", "score", "threshold", "verdict", "familiar", "note"])
    failures = 0
    for path in argv:
        try:
            rgb = portable.decode(path)
        except portable.ImageLoadError as exc:  # named, the rest still judged
            print(f"error: {exc}", file=sys.stderr)
            failures += 1
            continue
        found = bundle.inspect(rgb)
        writer.writerow([path, "" if found.score is None else f"{found.score:.6g}",
                         f"{bundle.rules.image_threshold:.6g}", found.verdict,
                         {True: "yes", False: "no", None: ""}[found.familiar], found.note])
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
