"""EfficientAD calibration: the held-out split of today vs k-fold, chosen by measurement (issue 24 item 1).

    python benchmarks/bench_efficientad_calibration.py [--sets demo,juice_bottle_loco] [--subset 90] [--folds 3]

Per set (training goods cut to ``--subset`` at random, seed 0, as ``bench_product.py --subset`` does), EfficientAD
with the product's default settings, two ways to set the default threshold (``core.scores.calibration.calibrate``,
promise 5%):

* **held-out** (the product today, ``core.store.lifecycle.train``): fit on 80% of the goods, map quantiles and
  calibration from the other 20% (``split_holdout``); the deployed model is that one.
* **k-fold**: ``--folds`` models, each fit on the other folds with its own fold for map quantiles and calibration;
  the out-of-fold scores of all goods calibrate; the deployed model is fit on all goods (map quantiles from its
  own training images, as ``fit`` does without held-out images). k + 1 trainings instead of 1.

Measured on the whole test set with the deployed model: observed false alarms on test goods at the default
threshold (the promise is 5%), image AUROC, F1 at the default and F1-max; n and the promise's bound. Scores are kept
under benchmarks/out/efficientad_calibration/ (a rerun reuses each finished training; ``--fresh`` retrains).
Written to the ``efficientad_calibration`` section of RESULTS.md (``--no-write``: printed only).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, OUT, machine, train_subset, write_section

from core.data.dataset import GOOD, CategoryData, load_category
from core.data.demo import DEMO_CATEGORY, make_demo_dataset
from core.data.imageio import load_many
from core.scores import metrics
from core.scores.calibration import calibrate
from core.store import lifecycle
from core.types import Prediction

KIND = "efficientad"
WORK = OUT / "efficientad_calibration"
SEED = 0


def dataset(name: str, subset: int) -> CategoryData:
    """The set's images (the demo made under :data:`WORK`), its training goods cut to ``subset`` at random."""
    if name == "demo":
        root = WORK / "demo_data"
        if not (root / DEMO_CATEGORY).is_dir():
            make_demo_dataset(root)
        data = load_category(root, DEMO_CATEGORY)
    else:
        data = load_category(DATA, name)
    return train_subset(data, subset)


def trained_scores(tag: str, fit: list[np.ndarray], hold: list[np.ndarray], calib: list[np.ndarray],
                   test: list[np.ndarray], fresh: bool) -> dict:
    """Train one default EfficientAD on ``fit`` (map quantiles from ``hold``; ``fit`` when empty) and score
    ``calib`` and ``test``: ``{"calib": [scores], "calib_map_max": [...], "test": [scores], "fit_s": s}``, cached
    as ``WORK/<tag>.json``."""
    path = WORK / f"{tag}.json"
    if path.exists() and not fresh:
        return json.loads(path.read_text())
    detector = lifecycle.build(KIND, lifecycle.default_settings(KIND))
    start = time.perf_counter()
    detector.fit_good(fit, hold)
    fit_s = time.perf_counter() - start
    calib_preds = detector.predict(calib) if calib else []
    test_preds = detector.predict(test)
    found = {"calib": [p.score for p in calib_preds],
             "calib_map_max": [float(p.anomaly_map.max()) for p in calib_preds],
             "test": [p.score for p in test_preds], "fit_s": fit_s, "n_fit": len(fit), "n_hold": len(hold)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(found))
    print(f"{tag}: fit {fit_s:.0f} s on {len(fit)} images", file=sys.stderr, flush=True)
    return found


def as_predictions(scores: list[float], map_maxes: list[float]) -> list[Prediction]:
    """Calibration input from kept scores (the map only carries its maximum, which is all ``calibrate`` reads)."""
    return [Prediction(s, np.full((1, 1), m, dtype=np.float32), 0.0) for s, m in zip(scores, map_maxes, strict=True)]


def measured(method: str, cal_scores: list[float], cal_maps: list[float], test_scores: list[float],
             labels: np.ndarray, fit_s: float, trainings: int) -> dict:
    cal = calibrate(as_predictions(cal_scores, cal_maps), method)
    scores = np.array(test_scores)
    good = labels == 0
    flagged = scores >= cal.image_threshold
    tp, fp, fn = int(np.sum(flagged & ~good)), int(np.sum(flagged & good)), int(np.sum(~flagged & ~good))
    promise = cal.promise
    return {"method": method, "n": cal.num_images, "threshold": cal.image_threshold,
            "bound": None if promise is None else [promise.lower, promise.bound],
            "false_alarms": float(np.mean(flagged[good])), "n_test_goods": int(good.sum()),
            "auroc": metrics.roc_auc(labels, scores), "f1": 2 * tp / max(2 * tp + fp + fn, 1),
            "f1_max": float(metrics.f1_max(labels, scores)[0]), "fit_s": fit_s, "trainings": trainings,
            "cal_mean": float(np.mean(cal_scores)), "cal_std": float(np.std(cal_scores)),
            "test_good_mean": float(np.mean(scores[good])), "test_good_std": float(np.std(scores[good]))}


def run_set(name: str, subset: int, folds: int, fresh: bool) -> list[dict]:
    data = dataset(name, subset)
    _, images, problems = load_many([s.path for s in data.train])
    if problems:
        raise ValueError(f"expected every training image of {name} readable, found {len(problems)} unreadable")
    _, test_images, test_problems = load_many([s.path for s in data.test])
    if test_problems:
        raise ValueError(f"expected every test image of {name} readable, found {len(test_problems)} unreadable")
    labels = np.array([0 if s.defect == GOOD else 1 for s in data.test])
    tag = f"{name}_{subset or len(images)}"
    fit_idx, hold_idx = lifecycle.split_holdout(len(images), lifecycle.HOLDOUT_FRACTION, SEED)
    held = trained_scores(f"{tag}_holdout", [images[i] for i in fit_idx], [images[i] for i in hold_idx],
                          [images[i] for i in hold_idx], test_images, fresh)
    rows = [measured(f"held-out {len(hold_idx)} of {len(images)} (today)", held["calib"], held["calib_map_max"],
                     held["test"], labels, held["fit_s"], 1)]
    order = list(range(len(images)))
    random.Random(SEED).shuffle(order)
    oof_scores: list[float] = []
    oof_maps: list[float] = []
    fold_s = 0.0
    for f in range(folds):
        fold = sorted(order[f::folds])
        rest = [i for i in range(len(images)) if i not in set(fold)]
        found = trained_scores(f"{tag}_fold{f}of{folds}", [images[i] for i in rest], [images[i] for i in fold],
                               [images[i] for i in fold], test_images, fresh)
        oof_scores += found["calib"]
        oof_maps += found["calib_map_max"]
        fold_s += found["fit_s"]
        rows.append(measured(f"fold {f + 1} model, its own fold (n={len(fold)})", found["calib"],
                             found["calib_map_max"], found["test"], labels, found["fit_s"], 1))
    full = trained_scores(f"{tag}_all", images, [], [], test_images, fresh)
    rows.append(measured(f"{folds}-fold out-of-fold scores, model on all {len(images)}", oof_scores, oof_maps,
                         full["test"], labels, fold_s + full["fit_s"], folds + 1))
    for r in rows:
        r["set"] = name
    return rows


def table(rows: list[dict], command: str) -> str:
    lines = [f"Machine: {machine()}. Load average at the end: {' / '.join(f'{x:.1f}' for x in os.getloadavg())} "
             "(accuracy figures; fit seconds are upper bounds on the shared cores).", f"Command: `{command}`.", "",
             "EfficientAD, product default settings, promise 5% (default rule). Observed false alarms: test goods at "
             "or above the default threshold, scored by the deployed model. Rows 'fold i' are the fold models "
             "calibrated on their own fold alone (each is a smaller held-out split), for the spread.", "",
             "| set | calibration | n | bound | observed false alarms (test goods) | image AUROC | F1 at default / "
             "F1-max | calibration scores mean ± std | test goods mean ± std | trainings (fit s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bound = "–" if r["bound"] is None else f"{r['bound'][0]:.1%}–{r['bound'][1]:.1%}"
        lines.append(f"| {r['set']} | {r['method']} | {r['n']} | {bound} | {r['false_alarms']:.1%} (of "
                     f"{r['n_test_goods']}) | {r['auroc']:.3f} | {r['f1']:.3f} / {r['f1_max']:.3f} | "
                     f"{r['cal_mean']:.4g} ± {r['cal_std']:.2g} | {r['test_good_mean']:.4g} ± {r['test_good_std']:.2g} | "
                     f"{r['trainings']} ({r['fit_s']:.0f}) |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sets", default="demo,juice_bottle_loco")
    parser.add_argument("--subset", type=int, default=90, help="training goods per set (0: all)")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rows: list[dict] = []
    for name in args.sets.split(","):
        if name != "demo" and not (DATA / name).is_dir():
            print(f"skipped: no {name} under {DATA}", file=sys.stderr)
            continue
        rows += run_set(name, args.subset, args.folds, args.fresh)
        print(json.dumps(rows[-1]), flush=True)
    body = table(rows, ("python benchmarks/bench_efficientad_calibration.py " + " ".join(sys.argv[1:])).strip())
    print(body)
    if not args.no_write:
        write_section("efficientad_calibration", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
