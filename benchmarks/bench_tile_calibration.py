"""Why the default threshold misses defects on pcb_00041 with tiles (F1 at default < F1-max on a separable set).

    python benchmarks/bench_tile_calibration.py [--set pcb_00041] [--shares 0.25,1.0]

PatchCore in the mode the product picks for the set (tiles of 256 px at 1x, ``input_mode="tiles"``, so the
chooser is not rerun), the other settings the defaults. Per bank share (``core.models.patchcore.TILE_BANK_SHARE``,
the share of ``coreset_ratio`` a tiled bank keeps; set here for the run only): a model fit on 80% of the training
goods (``lifecycle.split_holdout``, seed 0) gives, on the same bank,

* the leave-one-image-out scores of its own training images (what calibration reads: ``predict_left_out``),
* the plain scores of the 20% it never saw (new goods from the same source),
* the test goods' and the test defects' scores,

and the default threshold (``calibrate``, promise 5%) from the leave-one-out scores vs from the held-out goods:
test false alarms, missed defects, F1. If leave-one-out scores sit above new goods', the threshold is too high.
Written to benchmarks/out/tile_calibration.json and printed (``--write``: the ``tile_calibration`` section of
RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, OUT, machine, write_section

from core.data.dataset import GOOD, load_category
from core.data.imageio import load_many
from core.models import patchcore
from core.scores import metrics
from core.scores.calibration import calibrate
from core.store import lifecycle
from core.types import Prediction

TILED = {"input_mode": "tiles", "tile": 256, "scale": 1.0}


def summary(values: list[float]) -> dict:
    a = np.array(values)
    return {"n": len(a), "mean": float(a.mean()), "std": float(a.std()), "p50": float(np.median(a)),
            "p95": float(np.quantile(a, 0.95)), "max": float(a.max()), "min": float(a.min())}


def at_threshold(threshold: float, good: np.ndarray, bad: np.ndarray) -> dict:
    fp, tp = int(np.sum(good >= threshold)), int(np.sum(bad >= threshold))
    fn = len(bad) - tp
    return {"threshold": threshold, "false_alarms": fp / len(good), "missed": fn / len(bad),
            "f1": 2 * tp / max(2 * tp + fp + fn, 1)}


def run_share(share: float, images: list[np.ndarray], test: list[np.ndarray], labels: np.ndarray) -> dict:
    patchcore.TILE_BANK_SHARE = share  # the fit reads the module constant
    fit_idx, hold_idx = lifecycle.split_holdout(len(images), lifecycle.HOLDOUT_FRACTION, 0)
    fit, hold = [images[i] for i in fit_idx], [images[i] for i in hold_idx]
    detector = lifecycle.build("patchcore", {**lifecycle.default_settings("patchcore"), **TILED})
    start = time.perf_counter()
    detector.fit_good(fit, [])
    fit_s = time.perf_counter() - start
    left_out = detector.predict_left_out(fit)
    new_goods = detector.predict(hold)
    scored = detector.predict(test)
    test_scores = np.array([p.score for p in scored])
    good, bad = test_scores[labels == 0], test_scores[labels == 1]
    dummy = [Prediction(p.score, p.anomaly_map, 0.0) for p in left_out]
    loo_cal = calibrate(dummy, "leave-one-out")
    hold_cal = calibrate([Prediction(p.score, p.anomaly_map, 0.0) for p in new_goods], "held-out")
    sep = float(metrics.f1_max(labels, test_scores)[0])
    return {"share": share, "bank": int(detector.model.memory_bank.shape[0]), "fit_s": fit_s,
            "left_out": summary([p.score for p in left_out]), "held_out": summary([p.score for p in new_goods]),
            "test_good": summary(good.tolist()), "test_defect": summary(bad.tolist()),
            "auroc": metrics.roc_auc(labels, test_scores), "f1_max": sep,
            "loo_threshold": at_threshold(loo_cal.image_threshold, good, bad),
            "held_out_threshold": at_threshold(hold_cal.image_threshold, good, bad),
            "left_out_scores": [p.score for p in left_out], "held_out_scores": [p.score for p in new_goods],
            "test_scores": test_scores.tolist()}


def table(rows: list[dict], command: str) -> str:
    lines = [f"Machine: {machine()}. Load at the end: {' / '.join(f'{x:.1f}' for x in os.getloadavg())}.",
             f"Command: `{command}`.", "",
             "| bank share | bank entries | leave-one-out scores of the fit's 80% (mean ± std, p95, max) | "
             "plain scores of the unseen 20% | test goods | test defects (min) | image AUROC | threshold from "
             "leave-one-out: value, test false alarms, missed, F1 | threshold from the unseen 20% | F1-max |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def s(x: dict) -> str:
        return f"{x['mean']:.3f} ± {x['std']:.3f}, {x['p95']:.3f}, {x['max']:.3f}"

    def t(x: dict) -> str:
        return f"{x['threshold']:.3f}, {x['false_alarms']:.1%}, {x['missed']:.1%}, {x['f1']:.3f}"

    for r in rows:
        lines.append(f"| {r['share']:g} | {r['bank']:,} | {s(r['left_out'])} (n={r['left_out']['n']}) | "
                     f"{s(r['held_out'])} (n={r['held_out']['n']}) | {s(r['test_good'])} | "
                     f"{r['test_defect']['mean']:.3f} ({r['test_defect']['min']:.3f}) | {r['auroc']:.3f} | "
                     f"{t(r['loo_threshold'])} | {t(r['held_out_threshold'])} | {r['f1_max']:.3f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--set", default="pcb_00041")
    parser.add_argument("--shares", default="0.25,1.0")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    data = load_category(DATA, args.set)
    _, images, _ = load_many([s.path for s in data.train])
    _, test, _ = load_many([s.path for s in data.test])
    labels = np.array([0 if s.defect == GOOD else 1 for s in data.test])
    path = OUT / "tile_calibration.json"
    done = json.loads(path.read_text()) if path.exists() else {}
    rows = []
    for share in (float(x) for x in args.shares.split(",")):
        key = f"{args.set}:{share:g}"
        if key not in done:
            done[key] = run_share(share, images, test, labels)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(done))
        rows.append(done[key])
        print(json.dumps({k: v for k, v in done[key].items() if not k.endswith("_scores")}), flush=True)
    body = table(rows, ("python benchmarks/bench_tile_calibration.py " + " ".join(sys.argv[1:])).strip())
    print(body)
    if args.write:
        write_section("tile_calibration", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
