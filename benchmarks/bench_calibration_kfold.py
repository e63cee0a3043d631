"""PatchCore calibration: leave-one-image-out on one bank of all training images (the product) vs K-fold banks.

    python benchmarks/bench_calibration_kfold.py pcb_00041 [K]     # K = 5 by default

The product scores every training image against the bank without its own entries (one coreset chosen with that
image's patches in it). The question measured here: is that biased high against a new good image (whose patches
no coreset saw), and would K-fold banks (each coreset chosen without the fold it scores) place the threshold
better? Per set, default settings (the input mode chosen as the product chooses it): the fit on all training
images with its leave-one-out scores, then K fits on the other folds scoring each held-out fold; each set of
scores gives thresholds for the 5% promise (rules "max" = the product's, "conformal", "gaussian_tail"), applied
to the test set scored by the all-image model: false-alarm rate on test goods, recall, F1, and F1-max. Rows:
benchmarks/results/calibration_kfold_<set>.json. Read in RESULTS.md "line_promise_reading".
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, machine

from core.data.dataset import load_category
from core.data.imageio import load_many
from core.models.patchcore import PatchCore, PatchCoreConfig
from core.scores import metrics
from core.scores.calibration import threshold_for

RULES = ("max", "conformal", "gaussian_tail")


def measure(name: str, folds: int) -> dict:
    data = load_category(DATA, name)
    _, train, _ = load_many([s.path for s in data.train])
    _, test, _ = load_many([s.path for s in data.test])
    labels = np.array([s.label for s in data.test])
    t0 = time.perf_counter()
    model = PatchCore(PatchCoreConfig())
    model.fit(train)
    config = model.config  # the input mode as the product resolved it
    loo = np.array([p.score for p in model.predict_left_out(train)])
    t_all = time.perf_counter() - t0
    test_scores = np.array([p.score for p in model.predict(test)])
    fold = np.random.default_rng(0).permutation(len(train)) % folds
    kfold = np.zeros(len(train))
    t1 = time.perf_counter()
    for f in range(folds):
        part = PatchCore(replace(config))
        part.fit([im for im, g in zip(train, fold, strict=True) if g != f])
        held = [i for i in range(len(train)) if fold[i] == f]
        for i, p in zip(held, part.predict([train[i] for i in held]), strict=True):
            kfold[i] = p.score
    out: dict = {"machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "set": name,
                 "mode": config.input_mode, "K": folds, "fit_loo_s": t_all, "kfold_s": time.perf_counter() - t1,
                 "loo_mean": loo.mean(), "kfold_mean": kfold.mean(), "test_good_mean": test_scores[labels == 0].mean(),
                 "f1_max": metrics.f1_max(labels, test_scores)[0]}
    for tag, values in (("loo", loo), ("kfold", kfold)):
        for rule in RULES:
            threshold = threshold_for(values, 0.05, rule)
            r = metrics.rates(metrics.confusion(labels, test_scores, threshold))
            out[f"{tag}_{rule}"] = {"thr": threshold, "fpr": r["fpr"], "recall": r["recall"], "f1": r["f1"]}
    return out


def main() -> None:
    name = sys.argv[1]
    folds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    out = measure(name, folds)
    print(json.dumps(out, default=float))
    path = Path(__file__).resolve().parent / "results" / f"calibration_kfold_{name}.json"
    path.write_text(json.dumps(out, default=float, indent=1))


if __name__ == "__main__":
    main()
