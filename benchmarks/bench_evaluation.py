"""Evaluation cost: the product's binned metrics pass against exact pixel metrics, on real images.

    python benchmarks/bench_evaluation.py [--category juice_bottle_loco]

Trains the default PatchCore for the category (a temp store), then runs, each in a fresh process so its peak
memory is its own: ``binned`` = ``core.store.lifecycle.run_evaluation`` as the app and CLI run it (scoring + one
binned pass for pixel AUROC / AUPRO, overall and per defect); ``exact`` = the same scores with pixel AUROC and
AUPRO computed exactly on all pixels (concatenate + sort, overall and per defect: the code before this change).
Image AUROC is exact in both. Written to the ``evaluation`` section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, fmt, machine, peak_rss_mb, run_variant, write_section

from core.data.dataset import GOOD, load_category
from core.data.imageio import load_image, load_mask
from core.scores import metrics
from core.store import lifecycle as det
from core.store.model_store import ModelStore
from core.types import TrainControl


def run_binned(store: Path, category: str) -> dict:
    data = load_category(DATA, category)
    model = det.load(ModelStore(store).current(category, "patchcore"))
    stages: dict[str, float] = {}
    last = {"t": time.perf_counter(), "stage": "scoring", "fraction": 0.0}
    went_back = []

    def progress(message: str, fraction: float) -> None:
        if fraction < last["fraction"]:
            went_back.append((last["fraction"], fraction))
        stage = "metrics" if message.startswith("pixel metrics") or message == "evaluation done" else "scoring"
        now = time.perf_counter()
        stages[last["stage"]] = stages.get(last["stage"], 0.0) + now - last["t"]
        last.update(t=now, stage=stage, fraction=fraction)

    t0 = time.perf_counter()
    result = det.run_evaluation(model, data, TrainControl(progress=progress))
    total = time.perf_counter() - t0
    return {"total_s": total, "scoring_s": stages.get("scoring", 0.0), "metrics_s": stages.get("metrics", 0.0),
            "peak_rss_mb": peak_rss_mb(), "progress_went_back": len(went_back), "num_images": len(result.images),
            **{k: result.overall.get(k) for k in ("image_auroc", "pixel_auroc", "aupro")},
            "per_defect": {d: {k: v.get(k) for k in ("pixel_auroc", "aupro")} for d, v in result.per_defect.items()}}


def run_exact(store: Path, category: str) -> dict:
    data = load_category(DATA, category)
    model = det.load(ModelStore(store).current(category, "patchcore"))
    samples = list(data.test)
    images = [load_image(s.path) for s in samples]
    t0 = time.perf_counter()
    preds = model.detector.predict(images)
    scoring = time.perf_counter() - t0
    masks = [np.zeros(im.shape[:2], bool) if s.defect == GOOD else load_mask(s.mask_path, im.shape[:2])
             for s, im in zip(samples, images, strict=True)]
    maps = [p.anomaly_map for p in preds]
    labels = np.array([s.label for s in samples])
    scores = np.array([p.score for p in preds])
    t1 = time.perf_counter()

    def pixel(sel: list[int]) -> dict:
        truth = np.concatenate([masks[i].ravel() for i in sel])
        values = np.concatenate([maps[i].ravel() for i in sel])
        return {"pixel_auroc": metrics.roc_auc(truth, values), "aupro": metrics.aupro([masks[i] for i in sel],
                                                                                         [maps[i] for i in sel])}

    overall = pixel(list(range(len(samples))))
    per_defect = {d: pixel([i for i, s in enumerate(samples) if s.defect in (d, GOOD)])
                  for d in sorted({s.defect for s in samples if s.label == 1})}
    return {"scoring_s": scoring, "metrics_s": time.perf_counter() - t1, "peak_rss_mb": peak_rss_mb(),
            "image_auroc": metrics.roc_auc(labels, scores), **overall, "per_defect": per_defect}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--category", default="juice_bottle_loco")
    parser.add_argument("--mode", choices=("binned", "exact"))
    parser.add_argument("--store", type=Path)
    args = parser.parse_args()
    if args.mode:
        out = (run_binned if args.mode == "binned" else run_exact)(args.store, args.category)
        print(json.dumps(out, default=float))
        return 0
    if not (DATA / args.category).is_dir():
        print(f"skipped: no {args.category} under {DATA}", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        det.train(load_category(DATA, args.category), "patchcore", {}, ModelStore(store))
        script = Path(__file__)
        binned = run_variant(script, ["--mode", "binned", "--store", str(store), "--category", args.category], 3600)
        exact = run_variant(script, ["--mode", "exact", "--store", str(store), "--category", args.category], 3600)
    lines = [f"Machine: {machine()}. Default PatchCore (lite0, 256x256, 1% coreset) on `{args.category}` "
             f"({binned.get('num_images')} test images at native size); each column a fresh process.", "",
             "| | binned (product) | exact (previous code) | difference |", "|---|---|---|---|"]
    for key, label in (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO")):
        lines.append(f"| {label} | {fmt(binned[key], 4)} | {fmt(exact[key], 4)} | {abs(binned[key] - exact[key]):.5f} |")
    worst = max(abs(binned["per_defect"][d][k] - exact["per_defect"][d][k])
                for d in exact["per_defect"] for k in ("pixel_auroc", "aupro"))
    lines += [f"| per defect type, largest pixel AUROC / AUPRO difference | | | {worst:.5f} |",
              f"| scoring s | {binned['scoring_s']:.1f} | {exact['scoring_s']:.1f} | |",
              f"| metrics s (after scoring) | {binned['metrics_s']:.1f} | {exact['metrics_s']:.1f} | |",
              f"| whole evaluation s | {binned['total_s']:.1f} | | |",
              f"| peak RSS MB (process) | {binned['peak_rss_mb']:.0f} | {exact['peak_rss_mb']:.0f} | |",
              f"| progress went back | {binned['progress_went_back']} times | | |", "",
              f"Command: `python benchmarks/bench_evaluation.py --category {args.category}`."]
    write_section(f"evaluation_{args.category}", f"## Evaluation cost on {args.category}\n\n" + "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
