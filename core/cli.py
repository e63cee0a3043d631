"""Command line: ``python -m core train|evaluate|predict|list|demo``.

Exit codes: 0 success; 1 finished but some inputs could not be used (named on stderr); 2 bad arguments,
missing data or a broken model; 130 cancelled.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import threading
from pathlib import Path
from typing import Any

from core import detector as det
from core import inspection
from core.dataset import DatasetError, load_category, load_folder
from core.imageio import SUPPORTED_SUFFIXES, ImageLoadError, load_image
from core.runtime import RUNTIMES
from core.store import ModelStore, ModelStoreError
from core.types import TrainControl, TrainingCancelled

DEFAULT_STORE = Path("models")


def _progress_printer() -> TrainControl:
    last = {"pct": -1}

    def show(message: str, fraction: float) -> None:
        pct = int(fraction * 100)
        if pct != last["pct"]:
            last["pct"] = pct
            print(f"[{pct:3d}%] {message}", file=sys.stderr, flush=True)

    return TrainControl(progress=show, cancel=threading.Event())


def _settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    if args.image_size:
        settings["height"], settings["width"] = args.image_size
    for name in ("coreset_ratio", "steps", "backbone", "input_mode", "scale", "search", "coreset", "runtime"):
        value = getattr(args, name, None)
        if value is not None:
            settings[name] = value
    if getattr(args, "layers", None):
        settings["layers"] = args.layers
    return settings


def _load_data(args: argparse.Namespace):
    if args.category:
        return load_category(args.data, args.category)
    return load_folder(args.data)


def cmd_train(args: argparse.Namespace) -> int:
    data = _load_data(args)
    if data.problems:
        for p in data.problems:
            print(f"warning: {p}", file=sys.stderr)
    result = det.train(data, args.model, _settings_from_args(args), ModelStore(args.store), _progress_printer())
    for p in result.problems:
        print(f"unreadable, skipped: {p}", file=sys.stderr)
    print(json.dumps({"model": str(result.path), "train": result.manifest["train"],
                      "image_threshold": result.calibration.image_threshold,
                      "pixel_threshold": result.calibration.pixel_threshold}, indent=2, default=float))
    return 1 if result.problems else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    data = load_category(args.data, args.category)
    store = ModelStore(args.store)
    model = det.load(store, args.category, args.model, args.inference)
    result = det.run_evaluation(store, model, data, _progress_printer())
    print(json.dumps({"overall": result.overall, "per_defect": result.per_defect}, indent=2, default=float))
    for p in result.problems:
        print(f"problem: {p}", file=sys.stderr)
    return 1 if result.unreadable else 0


def _expand(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.suffix.lower() in SUPPORTED_SUFFIXES))
        else:
            out.append(p)
    return out


def cmd_predict(args: argparse.Namespace) -> int:
    model = det.load(ModelStore(args.store), args.category, args.model, args.inference)
    print(f"model loaded; warm-up {model.warmup_ms:.0f} ms (not counted in latency_ms)", file=sys.stderr)
    failures = 0
    writer = csv.writer(sys.stdout)
    writer.writerow(["path", "score", "threshold", "verdict", "familiar", "latency_ms", "note"])
    for path in _expand(args.images):
        try:
            image = load_image(path)
        except ImageLoadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failures += 1
            continue
        result = inspection.inspect(model, [image])[0]
        if result.score is None:
            print(f"no verdict: {path}: {result.note}", file=sys.stderr)
            failures += 1
        familiar = {True: "yes", False: "no", None: ""}[result.familiar]
        writer.writerow([str(path), "" if result.score is None else f"{result.score:.6g}",
                         f"{model.calibration.image_threshold:.6g}", result.verdict, familiar,
                         "" if result.score is None else f"{result.latency_ms:.1f}", result.note])
        if args.overlays and result.anomaly_map is not None:
            from core.overlay import overlay_png

            args.overlays.mkdir(parents=True, exist_ok=True)
            (args.overlays / f"{path.stem}_overlay.png").write_bytes(
                overlay_png(image, result.anomaly_map, model.calibration))
    return 1 if failures else 0


def cmd_list(args: argparse.Namespace) -> int:
    for rec in ModelStore(args.store).list_models():
        if rec.ok and rec.manifest is not None:
            m = rec.manifest.get("metrics", {})
            print(f"{rec.category}/{rec.kind}: {rec.manifest['backbone']} created {rec.manifest['created']} "
                  f"image AUROC {m.get('image_auroc', float('nan')):.3f}")
        else:
            print(f"{rec.category}/{rec.kind}: BROKEN - {rec.error}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from core.demo import make_demo_dataset

    path = make_demo_dataset(args.out)
    print(f"demo data written to {path}")
    return 0


INFERENCE_HELP = ("fast (default): ONNX Runtime, blocked exact / HNSW search, matrix map smoothing; "
                  "stock: anomalib's own PyTorch forward pass, for comparison")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="Offline visual anomaly detection.")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, need_data: bool = True) -> None:
        if need_data:
            p.add_argument("--data", type=Path, required=True, help="data root (MVTec layout) or a folder of good images")
        p.add_argument("--store", type=Path, default=DEFAULT_STORE, help="model store folder (default: models)")
        p.add_argument("--model", choices=det.KINDS, default="patchcore")

    p = sub.add_parser("train", help="fit a model on good images and save it")
    common(p)
    p.add_argument("--category", help="category under --data (omit when --data is a plain folder of good images)")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--input-mode", choices=("squash", "native"))
    p.add_argument("--scale", type=float, help="native mode: resize factor keeping aspect ratio")
    p.add_argument("--backbone", choices=("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"))
    p.add_argument("--layers", nargs="+")
    p.add_argument("--coreset-ratio", type=float)
    p.add_argument("--coreset", choices=("fast", "stock"))
    p.add_argument("--search", choices=("auto", "exact", "hnsw", "stock"))
    p.add_argument("--steps", type=int, help="EfficientAD training steps")
    p.add_argument("--runtime", choices=RUNTIMES, help="network runtime (default onnx: ONNX Runtime; torch: PyTorch)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score the test set and save metrics beside the model")
    common(p)
    p.add_argument("--category", required=True)
    p.add_argument("--inference", choices=det.INFERENCE_PATHS, default="fast", help=INFERENCE_HELP)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="score images or folders; CSV on stdout")
    common(p, need_data=False)
    p.add_argument("--category", required=True)
    p.add_argument("--overlays", type=Path, help="write heatmap overlay PNGs here")
    p.add_argument("--inference", choices=det.INFERENCE_PATHS, default="fast", help=INFERENCE_HELP)
    p.add_argument("images", type=Path, nargs="+")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("list", help="list saved models")
    p.add_argument("--store", type=Path, default=DEFAULT_STORE)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("demo", help="generate the built-in demo dataset")
    p.add_argument("--out", type=Path, default=Path("demo_data"))
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (DatasetError, ModelStoreError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingCancelled as exc:
        print(f"cancelled: {exc}", file=sys.stderr)
        return 130
