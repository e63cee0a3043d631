"""Default thresholds on real data: the false-alarm rate the default promises vs the one observed, F1 at the
default vs F1-max, and the cross-fitted threshold's F1, for the product's default PatchCore.

    python benchmarks/bench_calibration.py [--categories magnetic_tile,juice_bottle_loco] [--kind patchcore]

Each category: ``core.store.lifecycle.train`` with default settings (20% of the good training images, at most 200, held out; the
default thresholds come from them alone, for ``core.scores.calibration.DEFAULT_FALSE_ALARM``), then
``core.store.lifecycle.run_evaluation`` on the whole test set. Rows also show what other promised rates would have
given (``Calibration.defaults_for``), from the same held-out statistics. Written to the ``calibration``
section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, machine, write_section

from core.data.dataset import load_category
from core.scores import metrics
from core.store import lifecycle as det
from core.store.model_store import ModelStore

RATES = (0.01, 0.02, 0.05, 0.1)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--categories", default="magnetic_tile,juice_bottle_loco")
    parser.add_argument("--kind", default="patchcore", choices=det.KINDS)
    args = parser.parse_args()
    lines = [f"Machine: {machine()}. Default {args.kind} per category; thresholds from held-out GOOD training "
             "images only; observed on the test set (good images for the false-alarm rate).", "",
             "| category | promised false alarms | threshold | observed false alarms (test/good) | recall | "
             "F1 at this threshold | F1-max | cross-fitted F1 |", "|---|---|---|---|---|---|---|---|"]
    for category in args.categories.split(","):
        if not (DATA / category).is_dir():
            print(f"skipped: no {category} under {DATA}", file=sys.stderr)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            store = ModelStore(tmp)
            data = load_category(DATA, category)
            det.train(data, args.kind, {}, store)
            model = det.load(store.current(category, args.kind))
            result = det.run_evaluation(model, data)
        labels = np.array([r.label for r in result.images])
        scores = np.array([r.score for r in result.images])
        cal = model.calibration
        f1max, _ = metrics.f1_max(labels, scores)
        cross, _ = metrics.crossfit_f1(labels, scores)
        n_good = int((labels == 0).sum())
        for rate in RATES:
            thr = cal.defaults_for(rate)[0]
            r = metrics.rates(metrics.confusion(labels, scores, thr))
            mark = " **(default)**" if rate == cal.false_alarm_target else ""
            lines.append(f"| {category} | {rate:.0%}{mark} | {thr:.3f} | {r['fpr']:.1%} ({round(r['fpr'] * n_good)}/"
                         f"{n_good}) | {r['recall']:.3f} | {r['f1']:.3f} | {f1max:.3f} | {cross:.3f} |")
    lines += ["", f"Held out: 20% of each category's good training images (at most 200). Command: `python "
                  f"benchmarks/bench_calibration.py --kind {args.kind}`."]
    write_section(f"calibration_{args.kind}", f"## Default thresholds ({args.kind})\n\n" + "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
