"""The review band's default edges on the line_promise models: which share of the parts falls inside, and which
share of the plain threshold's errors it catches (issue 24), for several edge rules on the same scores.

    python benchmarks/bench_review_band.py pcb_00041 demo juice_bottle_loco magnetic_tile

Reads the models benchmarks/bench_line_promise.py trained (its first version of each set: the training
calibration, before any recalibration from the line), scores every test image once and applies each rule's band
around the saved image threshold. Rules: ``max 10%-1%`` (the product before session 12: the edges are the
thresholds the calibration's rule would set for 10% and 1%), ``tail A-B`` (the band as wide below and above the
threshold as a normal fit to the good scores puts its A and B tails from the 5% one: the product now, with
10%-1%), ``symmetric 10%`` (the 10%-5% width on both sides). Rows: benchmarks/results/review_band.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_line_promise as blp
from common import machine

from core.scores.calibration import threshold_for
from core.scores.thresholds import band_counts
from core.store import lifecycle
from core.store.model_store import ModelStore

TAILS = {"tail 10%-1%": (0.10, 0.01), "tail 10%-2%": (0.10, 0.02), "tail 15%-2%": (0.15, 0.02),
         "tail 20%-2%": (0.20, 0.02)}


def bands(good: np.ndarray, threshold: float, promise: float) -> dict[str, tuple[float, float]]:
    """Each rule's band ``(low, high)`` around ``threshold`` from the calibration's good scores ``good: [n]``."""
    def t(rate: float, rule: str) -> float:
        return threshold_for(good, rate, rule)

    out = {"max 10%-1%": (threshold - (t(promise, "max") - t(0.10, "max")),
                          threshold + (t(0.01, "max") - t(promise, "max")))}
    for name, (low, high) in TAILS.items():
        out[name] = (threshold - (t(promise, "gaussian_tail") - t(low, "gaussian_tail")),
                     threshold + (t(high, "gaussian_tail") - t(promise, "gaussian_tail")))
    width = t(promise, "gaussian_tail") - t(0.10, "gaussian_tail")
    out["symmetric 10%"] = (threshold - width, threshold + width)
    return out


def measure(name: str) -> dict:
    data = blp.dataset(name)
    store = ModelStore(blp.WORK / name / "patchcore" / "store")
    first = min(store.version_numbers(data.name, "patchcore"))  # the training calibration
    model = lifecycle.load(store.ref(data.name, "patchcore", first))
    items = blp.score_all(model, data)
    labels = np.array([0 if i.good else 1 for i in items])
    scores = np.array([i.prediction.score for i in items])
    cal = model.calibration
    out = {}
    for rule, band in bands(np.array(cal.good_scores), cal.image_threshold, cal.false_alarm_target or 0.05).items():
        c = band_counts(labels, scores, cal.image_threshold, band)
        out[rule] = {"parts": c.parts / len(scores), "caught": c.errors_caught / max(c.errors, 1),
                     "errors": c.errors, "band": list(band)}
    return {"set": name, "n": len(cal.good_scores), "threshold": cal.image_threshold, "rules": out}


def main() -> None:
    rows = [measure(name) for name in sys.argv[1:]]
    for row in rows:
        print(row["set"], f"threshold {row['threshold']:.4g}, n = {row['n']}")
        for rule, v in row["rules"].items():
            print(f"   {rule:16s} parts {100 * v['parts']:5.1f}%  caught {100 * v['caught']:5.1f}% of {v['errors']}")
    path = Path(__file__).resolve().parent / "results" / "review_band.json"
    path.write_text(json.dumps({"machine": machine(), "rows": rows}, default=float, indent=1))


if __name__ == "__main__":
    main()
