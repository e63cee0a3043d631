"""Fast tiles (issue 26): PatchCore on pcb_00041 (640x640 scans, defects a few pixels wide), resized vs tiled, through
the product path (``core.store.lifecycle.train`` -> ``load`` -> ``run_evaluation``).

    /tmp/quiet_bench.sh python benchmarks/bench_tiles.py --name tiles --settings '{"input_mode": "tiles", "tile": 256}'
    /tmp/quiet_bench.sh python benchmarks/bench_tiles.py --fit-only --name auto   # the fit and its parts only
    python benchmarks/bench_tiles.py --table        # RESULTS.md section "tiles_speed" from the saved rows

One variant per run (each locked run stays short). Measured: fit wall seconds (``train``: the automatic input
choice, training and leave-one-image-out calibration, image reading and saving included; the model libraries are
imported first, as in a running app, and that import's seconds are kept apart as ``import_s``) and its parts
(``--fit-only`` writes only those, to tiles_fit_<name>.json), ms/image at batch 1 on the first ``--latency-images`` test images after two
warm-up images (median wall, and the median process CPU time, which a busy machine inflates less), image AUROC,
pixel AUROC, AUPRO and F1 at the default threshold from the evaluation of the whole test set. The load average
before and after is kept with each row: on shared cores the timings are upper bounds. Rows go to
benchmarks/results/tiles_<name>.json (committed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, fmt, machine, write_section

from core.data.dataset import CategoryData, load_category
from core.data.imageio import load_image, load_many
from core.scores.calibration import Calibration
from core.store import lifecycle as det
from core.store.model_store import ModelStore

ROWS = Path(__file__).resolve().parent / "results"
CATEGORY = "pcb_00041"


def fit_breakdown(manifest: dict, fit_s: float) -> dict:
    """The parts of a ``train`` wall time ``fit_s`` (s): the automatic input choice, feature extraction, coreset,
    leave-one-image-out calibration, and the rest (reading the images, saving the version)."""
    train = manifest["train"]
    choice = float((manifest.get("input_choice") or {}).get("seconds", 0.0))
    parts = {"choice_s": choice, "embed_s": train.get("embed_seconds"), "coreset_s": train.get("coreset_seconds"),
             "calibration_s": train.get("calibration_seconds")}
    known = sum(float(v) for v in parts.values() if v is not None)
    return {**parts, "other_s": fit_s - known}


def calibration_agreement(model: det.LoadedModel, data: CategoryData, calibration: Calibration) -> dict:
    """The saved calibration (scored from the fit's own features) against leave-one-image-out scoring that extracts
    every training image's features again (a loaded model keeps none): the largest relative differences of the
    image scores and of the map maxima."""
    _, images, _ = load_many([s.path for s in data.train])
    again = model.detector.predict_left_out(images)
    scores = np.array([p.score for p in again])
    maxima = np.array([float(p.anomaly_map.max()) for p in again])
    return {"calibration_score_rel": float(np.max(np.abs(np.array(calibration.good_scores) - scores) / np.abs(scores))),
            "calibration_map_max_rel": float(np.max(np.abs(np.array(calibration.good_map_maxes) - maxima)
                                                    / np.abs(maxima)))}


def run(name: str, settings: dict, latency_images: int, compare_before: bool, fit_only: bool = False,
        check: bool = False) -> dict:
    data = load_category(DATA, CATEGORY)
    load_before = os.getloadavg()
    t_import = time.perf_counter()
    det.default_settings("patchcore")  # imports anomalib, timm, lightning: once per process, not part of the fit
    import_s = time.perf_counter() - t_import
    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(tmp)
        t0 = time.perf_counter()
        c0 = time.process_time()
        trained = det.train(data, "patchcore", settings, store)
        fit_s, fit_cpu = time.perf_counter() - t0, time.process_time() - c0
        train = trained.manifest["train"]
        fit_row = {"name": name, "category": CATEGORY, "settings": settings, "machine": machine(),
                   "load_before": [round(x, 2) for x in load_before], "import_s": import_s, "fit_s": fit_s,
                   "fit_cpu_s": fit_cpu,
                   **fit_breakdown(trained.manifest, fit_s), "memory_bank": train.get("memory_bank"),
                   "num_patches": train.get("num_patches"),
                   "input_mode": trained.manifest["settings"].get("input_mode"),
                   "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # Linux: KiB
        if fit_only:
            fit_row["load_after"] = [round(x, 2) for x in os.getloadavg()]
            if check:  # after the timing: not part of it
                model = det.load(store.current(CATEGORY, "patchcore"))
                fit_row.update(calibration_agreement(model, data, trained.calibration))
            return fit_row
        model = det.load(store.current(CATEGORY, "patchcore"))
        images = [load_image(s.path) for s in data.test[:latency_images + 2]]
        detector = model.detector
        bank, owners = detector.memory_bank.clone(), detector.bank_image
        # the bank the same settings had before (coreset_ratio of all patches): random entries of that size, timed
        # image by image in turn with the trained bank, so both see the same load (search time depends on sizes only)
        before = (torch.randn(int(round(train["num_patches"] * detector.config.coreset_ratio)), bank.shape[1])
                  if compare_before else None)
        wall, cpu, wall_before = [], [], []
        for i, image in enumerate(images):
            if i == 0 or before is not None:  # a new bank is a new index: its first searches time both precisions
                detector.set_memory_bank(bank, owners)
                detector.prepare()
            t1, c1 = time.perf_counter(), time.process_time()
            detector.predict([image])
            if i >= 2:
                wall.append((time.perf_counter() - t1) * 1000)
                cpu.append((time.process_time() - c1) * 1000)
            if before is not None:
                detector.set_memory_bank(before)
                detector.prepare()
                t1 = time.perf_counter()
                detector.predict([image])
                if i >= 2:
                    wall_before.append((time.perf_counter() - t1) * 1000)
        detector.set_memory_bank(bank, owners)
        result = det.run_evaluation(model, data)
    o = result.overall
    return {**fit_row, "load_after": [round(x, 2) for x in os.getloadavg()], "ms_image": float(np.median(wall)),
            "cpu_ms_image": float(np.median(cpu)),
            "ms_image_bank_before": float(np.median(wall_before)) if wall_before else None,
            "bank_before": None if before is None else int(before.shape[0]),
            **{k: o.get(k) for k in ("image_auroc", "pixel_auroc", "aupro", "f1_at_calibrated", "latency_ms_median")}}


def _before(row: dict) -> str:
    if row.get("ms_image_bank_before") is None:
        return "–"
    return f"{row['ms_image_bank_before']:.0f} ({row['bank_before']:,} entries)"


def fit_table() -> list[str]:
    """The fit's parts per ``--fit-only`` row (tiles_fit_*.json), in seconds."""
    paths = sorted(ROWS.glob("tiles_fit_*.json"), key=lambda p: (not p.stem.startswith("tiles_fit_before"), p.stem))
    rows = [json.loads(p.read_text()) for p in paths]  # the code of before first
    if not rows:
        return []
    out = ["", "The fit alone (`--fit-only`: `lifecycle.train`'s wall time, the model libraries imported before, and "
           "its parts; s; `before_*`: the code before the fit's features were reused, commit 1f4b433). Every run "
           "through /tmp/quiet_bench.sh (every other process paused): the 1-minute load average it shows lags "
           "behind the paused processes.", "",
           "| run | settings | mode | fit s (CPU s) | choice | features | coreset | calibration | other (read, save) | "
           "import (apart) | peak RSS GB | load | machine |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['name']} | `{json.dumps(r['settings'])}` | {r.get('input_mode')} | {r['fit_s']:.1f} "
                   f"({r['fit_cpu_s']:.0f}) | {r['choice_s']:.1f} | {r['embed_s']:.1f} | {r['coreset_s']:.1f} | "
                   f"{r['calibration_s']:.1f} | {r['other_s']:.1f} | "
                   + (f"{r['import_s']:.1f}" if r.get("import_s") is not None else "in fit") + " | "
                   + (f"{r['peak_rss_gb']:.1f}" if r.get("peak_rss_gb") is not None else "–") +
                   f" | {r['load_before'][0]:.1f} / {r['load_after'][0]:.1f} | {r['machine'].split(';')[0]} |")
    return out


def write_table() -> None:
    lines = ["PatchCore on pcb_00041 (train/good 176, test 45 good + 45 defective, 640x640) through the product path: "
             "`lifecycle.train` (fit + leave-one-image-out calibration) -> `load` -> `run_evaluation`. ms/image: "
             "batch 1, median over the first test images after two warm-ups (wall; CPU = process time over both "
             "threads). Load: 1-minute load average before / after the run (2 cores; above 2 the timings are upper "
             "bounds). Script: benchmarks/bench_tiles.py.", "",
             "| variant | settings | fit s (CPU s) | bank | ms/image (CPU ms) | ms/image, bank of before | image AUROC | "
             "pixel AUROC | AUPRO | F1 at default | load | machine |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(p for p in ROWS.glob("tiles_*.json") if not p.name.startswith("tiles_fit_")):
        r = json.loads(path.read_text())
        lines.append(f"| {r['name']} | `{json.dumps(r['settings'])}` | {r['fit_s']:.0f} ({r['fit_cpu_s']:.0f}) | "
                     f"{r['memory_bank']:,} of {r['num_patches']:,} | {r['ms_image']:.0f} ({r['cpu_ms_image']:.0f}) | "
                     f"{_before(r)} | "
                     f"{fmt(r['image_auroc'], 4)} | {fmt(r['pixel_auroc'])} | {fmt(r['aupro'])} | "
                     f"{fmt(r['f1_at_calibrated'])} | {r['load_before'][0]:.1f} / {r['load_after'][0]:.1f} | "
                     f"{r['machine'].split(';')[0]} |")
    lines += fit_table()
    notes = ROWS / "tiles_notes.md"
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    write_section("tiles_speed", "## Fast tiles (issue 26): pcb_00041, resized vs tiled\n\n" + "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", default="")
    parser.add_argument("--settings", default="{}", help="PatchCore settings as JSON (the product's defaults otherwise)")
    parser.add_argument("--latency-images", type=int, default=20)
    parser.add_argument("--table", action="store_true", help="only write the RESULTS.md section")
    parser.add_argument("--compare-before", action="store_true",
                        help="also time each latency image with a bank of the size these settings had before")
    parser.add_argument("--fit-only", action="store_true",
                        help="only train (fit + calibration) and record the fit's breakdown, to tiles_fit_<name>.json")
    parser.add_argument("--check-calibration", action="store_true",
                        help="with --fit-only: after the timing, compare the calibration's scores with leave-one-image-out "
                             "scoring that extracts the features again")
    args = parser.parse_args()
    if not args.table:
        if not (DATA / CATEGORY).is_dir():
            sys.exit(f"expected {DATA / CATEGORY} (../shared/data), found none")
        row = run(args.name, json.loads(args.settings), args.latency_images, args.compare_before, args.fit_only,
                  args.check_calibration)
        ROWS.mkdir(exist_ok=True)
        out = ROWS / (f"tiles_fit_{args.name}.json" if args.fit_only else f"tiles_{args.name}.json")
        out.write_text(json.dumps(row, indent=2, default=float))
        print(json.dumps(row, default=float))
    write_table()


if __name__ == "__main__":
    main()
