"""Small defects on large images, by default: the product path with PatchCore's automatic input mode (issue 26).

    python benchmarks/bench_small_defects.py [--sets pcb_00041,magnetic_tile,juice_bottle_loco,demo]

Per set: ``core.store.lifecycle.train(data, "patchcore", {}, store)`` (default settings: ``input_mode="auto"``,
so the choice is part of the fit), wall time measured around it, then ``load`` and ``run_evaluation`` on the
whole test set. ``demo`` is the built-in demo category (``core.data.demo.make_demo_dataset`` defaults, as
``run_app.sh`` writes it). Each set's row is kept in benchmarks/results/small_defects_<set>.json (so sets can be
run one at a time, each under the shared timing lock) and the table is rewritten from all rows in the
``small_defects`` section of RESULTS.md. Run timing rows on an otherwise idle machine: the load average at the
start and end of each row is recorded beside it.

Where the choice is not the resized input, the same ``train`` with ``input_mode="squash"`` is timed after it (the
issue's fit-time target is relative to it); it runs second, with the images in the file cache and the backbone's
code warm, so the ratio leans against the tiles (a fraction of a second of 40, not enough to change a verdict).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, fmt, machine, write_section

from core.data.dataset import load_category
from core.store import lifecycle as det
from core.store.model_store import ModelStore

ROWS = Path(__file__).resolve().parent / "results"
SETS = ("pcb_00041", "magnetic_tile", "juice_bottle_loco", "demo")
# Today's defaults (256² squashed) on each set, for the "before" column: RESULTS.md product_* / calibration_loo rows.
BEFORE = {"pcb_00041": 0.780, "magnetic_tile": 0.907, "juice_bottle_loco": 0.985}


def category(name: str, tmp: Path) -> tuple[Path, str]:
    if name == "demo":
        from core.data.demo import DEMO_CATEGORY, make_demo_dataset

        make_demo_dataset(tmp / "data")
        return tmp / "data", DEMO_CATEGORY
    return DATA, name


def run(name: str) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        root, cat = category(name, tmp)
        data = load_category(root, cat)
        store = ModelStore(tmp / "models")
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        result = det.train(data, "patchcore", {}, store)
        fit_s = time.perf_counter() - t0
        model = det.load(result.ref)
        evaluation = det.run_evaluation(model, data)
        resized_s = None
        if result.manifest["settings"].get("input_mode") != "squash":  # the fit-time target is relative to it
            t0 = time.perf_counter()
            det.train(data, "patchcore", {"input_mode": "squash"}, ModelStore(tmp / "resized"))
            resized_s = time.perf_counter() - t0
        load_after = os.getloadavg()[0]
    o = evaluation.overall
    choice = det.input_choice_of(result.manifest)
    return {"set": name, "machine": machine(), "load": [load_before, load_after], "fit_s": fit_s,
            "resized_fit_s": resized_s, "train_seconds": {k: result.manifest["train"].get(k) for k in (
                "seconds", "calibration_seconds")},
            "choice": None if choice is None else choice.to_dict(),
            "settings": {k: result.manifest["settings"].get(k) for k in ("input_mode", "tile", "scale", "tile_overlap")},
            "num_train": len(data.train), "num_test": len(data.test),
            **{k: o.get(k) for k in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "f1_at_calibrated",
                                     "false_alarm_observed", "latency_ms_median")}}


def seconds(value: float | None) -> str:
    """Whole seconds, or – where a row does not have them."""
    return "–" if value is None else f"{value:.0f}"


def write_table() -> None:
    rows = [json.loads((ROWS / f"small_defects_{s}.json").read_text()) for s in SETS
            if (ROWS / f"small_defects_{s}.json").exists()]
    lines = ["PatchCore with the product's defaults (`python -m core train --category C`, the Models page): the input "
             "mode is chosen automatically at fit time (core/models/input_choice.py); evaluation on the whole test "
             "set. Fit: wall time of `train` (image reading, the choice, the bank, leave-one-out calibration); "
             "choice: the part of it spent choosing; bank: the fit proper (features and coreset), calibration: "
             "leave-one-out scoring of the training images. Resized fit: the same `train` with "
             "`--input-mode squash`, where the choice is not that (the target: tiles fit in at most 2x its time). "
             "ms/image: median over the test images (batch of the evaluation). Before: image AUROC of the previous "
             "default (256² squashed).", "",
             "| set | automatic choice | synthetic-defect AUROC per candidate (expected ms/image) | image AUROC (before) | "
             "pixel AUROC | AUPRO | F1 at default | F1-max | ms/image | fit s (choice / bank / calibration) | "
             "resized fit s | load avg start/end |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["choice"] or {}
        cands = "; ".join(f"{d['label']}: {fmt(d['auroc'])} ({d['expected_ms']:.0f})" for d in c.get("candidates", []))
        before = BEFORE.get(r["set"])
        parts = r.get("train_seconds") or {}  # absent from rows before session 13
        # the fit's "seconds" times fit_good, the choice (made inside PatchCore's fit) included: the bank is the rest
        bank = None if parts.get("seconds") is None else parts["seconds"] - c.get("seconds", 0.0)
        lines.append(f"| {r['set']} | {c.get('label', r['settings']['input_mode'])} | {cands or '–'} | "
                     f"{fmt(r['image_auroc'])} ({fmt(before)}) | {fmt(r['pixel_auroc'])} | {fmt(r['aupro'])} | "
                     f"{fmt(r['f1_at_calibrated'])} | {fmt(r['f1_max'])} | {r['latency_ms_median']:.0f} | "
                     f"{r['fit_s']:.0f} ({seconds(c.get('seconds'))} / {seconds(bank)} / "
                     f"{seconds(parts.get('calibration_seconds'))}) | "
                     f"{seconds(r.get('resized_fit_s'))} | "
                     f"{r['load'][0]:.1f} / {r['load'][1]:.1f} |")
    machines = sorted({r["machine"] for r in rows})
    lines += ["", "Machine: " + "; ".join(machines), "",
              "Command: `python benchmarks/bench_small_defects.py --sets " + ",".join(r["set"] for r in rows) + "`."]
    write_section("small_defects", "## Small defects on large images: the automatic input mode (issue 26)\n\n"
                  + "\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--table-only", action="store_true", help="rewrite the table from the saved rows")
    args = parser.parse_args()
    ROWS.mkdir(exist_ok=True)
    if not args.table_only:
        for name in args.sets.split(","):
            if name != "demo" and not (DATA / name).is_dir():
                print(f"skipped: no {name} under {DATA}", file=sys.stderr)
                continue
            row = run(name)
            print(json.dumps(row, default=float), file=sys.stderr, flush=True)
            (ROWS / f"small_defects_{name}.json").write_text(json.dumps(row, default=float, indent=1))
    write_table()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
