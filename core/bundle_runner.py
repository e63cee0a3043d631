"""Standalone runner of an export bundle: needs only numpy, pillow and onnxruntime (no torch, no anomalib).

    python runner.py IMAGE [IMAGE ...]          # CSV: path, score, threshold, verdict
    python -c "import runner; print(runner.Bundle('.').score(pil_image))"

The bundle folder holds: model.onnx (and model.xml/.bin, OpenVINO IR, when OpenVINO was installed at export:
used when params.json says it was faster on the exporting CPU and OpenVINO is installed here), params.json,
calibration.json, manifest.json, and for PatchCore the memory bank (bank.npy) and the map operators (map_h.npy,
map_w_t.npy). Scores equal the app's up to float
rounding (tests/test_export.py states the tolerance).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image


def _preprocess(image: Image.Image, params: dict) -> np.ndarray:
    """uint8 RGB -> float32 [1, 3, H, W], resized (bilinear) and normalised as the model was trained."""
    rgb = np.asarray(image.convert("RGB"))
    if rgb.shape[:2] != (params["height"], params["width"]):
        rgb = np.asarray(Image.fromarray(rgb).resize((params["width"], params["height"]), Image.Resampling.BILINEAR))
    x = rgb.astype(np.float32).transpose(2, 0, 1)[None] / np.float32(255.0)
    if params.get("mean") is not None:
        x = (x - np.array(params["mean"], np.float32).reshape(1, 3, 1, 1)) / np.array(params["std"], np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray(x, dtype=np.float32)


def _resize_map(amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if amap.shape == size:
        return amap
    return np.asarray(Image.fromarray(amap.astype(np.float32), mode="F").resize((size[1], size[0]), Image.Resampling.BILINEAR))


def _distances(x: np.ndarray, bank: np.ndarray, bank_sq: np.ndarray) -> np.ndarray:
    """Euclidean distances [n, M] as anomalib computes them (|x|^2 - 2 x.b + |b|^2, clamped, sqrt), float32."""
    d = (x * x).sum(1, keepdims=True) - 2.0 * (x @ bank.T) + bank_sq[None, :]
    return np.sqrt(np.maximum(d, 0.0), dtype=np.float32)


class Bundle:
    """An extracted bundle folder, ready to score PIL images."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.params = json.loads((self.folder / "params.json").read_text())
        self.calibration = json.loads((self.folder / "calibration.json").read_text())
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

    def score(self, image: Image.Image) -> tuple[float, np.ndarray]:
        """(raw image score, anomaly map at the image's size)."""
        return KINDS[self.params["kind"]](self, image)

    def verdict(self, score: float) -> str:
        return "DEFECT" if score >= self.calibration["image_threshold"] else "OK"


def _patchcore(bundle: Bundle, image: Image.Image) -> tuple[float, np.ndarray]:
    emb = bundle.run(_preprocess(image, bundle.params))[0][0]  # [D, h, w]
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
    amap = bundle.map_h @ patch.reshape(h, w) @ bundle.map_w_t
    return score, _resize_map(amap, (image.height, image.width))


def _efficientad(bundle: Bundle, image: Image.Image) -> tuple[float, np.ndarray]:
    scores, maps = bundle.run(_preprocess(image, bundle.params))
    return float(scores.reshape(-1)[0]), _resize_map(maps[0, 0], (image.height, image.width))


KINDS = {"patchcore": _patchcore, "efficientad": _efficientad}


def main(argv: list[str]) -> int:
    bundle = Bundle(Path(__file__).resolve().parent)
    writer = csv.writer(sys.stdout)
    writer.writerow(["path", "score", "threshold", "verdict"])
    failures = 0
    for path in argv:
        try:
            image = Image.open(path)
            image.load()
        except Exception as exc:  # any unreadable file: named, the rest still scored
            print(f"error: {path}: {exc}", file=sys.stderr)
            failures += 1
            continue
        score, _ = bundle.score(image)
        writer.writerow([path, f"{score:.6g}", f"{bundle.calibration['image_threshold']:.6g}", bundle.verdict(score)])
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
