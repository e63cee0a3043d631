"""The product as a user runs it: default training (``python -m core train`` / the Models page), the training
time the Models page estimated beforehand vs the wall time, then the default evaluation, for PatchCore and
EfficientAD side by side on one category.

    python benchmarks/bench_product.py --category juice_bottle_loco [--kinds patchcore,efficientad]

Each kind: ``core.store.lifecycle.train`` with default settings into a temp store (wall time measured around it,
image reading included), ``core.store.lifecycle.run_evaluation`` on the whole test set. Rows are kept in
benchmarks/results/product_<category>_<kind>.json (committed) and written to the ``product_<category>``
section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, fmt, machine, write_section

from core.data.dataset import load_category
from core.models.efficientad import EfficientADConfig, expected_training_seconds
from core.store import lifecycle as det
from core.store.model_store import ModelStore

ROWS = Path(__file__).resolve().parent / "results"


def run(category: str, kind: str) -> dict:
    data = load_category(DATA, category)
    estimate = (expected_training_seconds(EfficientADConfig(), len(data.train)) if kind == "efficientad" else None)
    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(tmp)
        t0 = time.perf_counter()
        det.train(data, kind, {}, store)
        wall = time.perf_counter() - t0
        model = det.load(store.current(category, kind))
        result = det.run_evaluation(model, data)
    o = result.overall
    return {"category": category, "kind": kind, "machine": machine(), "train_wall_s": wall, "estimate_s": estimate,
            "settings": model.manifest["settings"], "warmup_ms": model.warmup_ms,
            **{k: o.get(k) for k in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "f1_at_calibrated",
                                     "false_alarm_observed", "latency_ms_median")}}


def write_table(category: str) -> None:
    lines = ["Default settings, as `python -m core train` and the Models page use them; evaluation on the whole "
             "test set. Estimate: what the Models page shows before training.", "",
             "| kind | train wall min | estimate min (error) | image AUROC | pixel AUROC | AUPRO | F1-max | "
             "F1 at default | false alarms observed (5% promised) | ms/image | machine |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(ROWS.glob(f"product_{category}_*.json")):
        r = json.loads(path.read_text())
        est = (f"{r['estimate_s'] / 60:.1f} ({(r['estimate_s'] - r['train_wall_s']) / r['train_wall_s']:+.0%})"
               if r["estimate_s"] else "–")
        lines.append(f"| {r['kind']} | {r['train_wall_s'] / 60:.1f} | {est} | {fmt(r['image_auroc'])} | "
                     f"{fmt(r['pixel_auroc'])} | {fmt(r['aupro'])} | {fmt(r['f1_max'])} | {fmt(r['f1_at_calibrated'])} | "
                     f"{r['false_alarm_observed']:.1%} | {r['latency_ms_median']:.0f} | {r['machine']} |")
    lines += ["", f"Command: `python benchmarks/bench_product.py --category {category}`."]
    write_section(f"product_{category}", f"## The product on {category}: PatchCore and EfficientAD, default "
                                         "settings\n\n" + "\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--category", default="juice_bottle_loco")
    parser.add_argument("--kinds", default="patchcore,efficientad")
    args = parser.parse_args()
    if not (DATA / args.category).is_dir():
        print(f"skipped: no {args.category} under {DATA}", file=sys.stderr)
        return 0
    ROWS.mkdir(exist_ok=True)
    for kind in args.kinds.split(","):
        row = run(args.category, kind)
        print(json.dumps(row, default=float), file=sys.stderr, flush=True)
        (ROWS / f"product_{args.category}_{kind}.json").write_text(json.dumps(row, default=float, indent=1))
        write_table(args.category)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
