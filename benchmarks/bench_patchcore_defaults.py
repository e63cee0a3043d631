"""PatchCore defaults chosen by measurement: candidate settings through the product's own path (``det.train``
with default settings plus the variant's, then ``det.run_evaluation``), per category, each in a fresh process
(peak RSS is its own), with per-defect metrics. Stock anomalib's row comes from bench_patchcore.py's stock
variant in the same run (magnetic_tile only; 0.1% coreset, the largest its coreset finishes here).

    python benchmarks/bench_patchcore_defaults.py [--categories magnetic_tile,juice_bottle_loco] [--variants ...]

Rows are kept in benchmarks/results/patchcore_defaults_<category>_<variant>.json (committed); the
``patchcore_defaults`` section of RESULTS.md is rewritten from all kept rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, fmt, machine, peak_rss_mb, run_variant, write_section

ROWS = Path(__file__).resolve().parent / "results"
VARIANTS: dict[str, dict] = {
    "today": {},  # the defaults before this benchmark: lite0 blocks.2+4, 256² squashed, 1% coreset, ImageNet stats
    "lite_stats": {"normalization": "backbone"},  # the statistics EfficientNet-Lite was trained with ([-1, 1])
    "full_bank": {"coreset_ratio": 1.0},  # every patch kept; HNSW + exact maximum
    "full_bank_lite_stats": {"coreset_ratio": 1.0, "normalization": "backbone"},
    "lite1": {"backbone": "tf_efficientnet_lite1"},
    "320px": {"height": 320, "width": 320},
    "tiles256": {"input_mode": "tiles", "tile": 256},  # native resolution, 256 px tiles overlapping by 25%
    # the winner so far (the backbone's own statistics) combined with the other changes
    "lite_stats+lite1": {"normalization": "backbone", "backbone": "tf_efficientnet_lite1"},
    "lite_stats+320px": {"normalization": "backbone", "height": 320, "width": 320},
    "lite_stats+tiles256": {"normalization": "backbone", "input_mode": "tiles", "tile": 256},
}


def run_one(category: str, variant: str) -> dict:
    from core.data.dataset import load_category
    from core.store import lifecycle as det

    data = load_category(DATA, category)
    with tempfile.TemporaryDirectory() as tmp:
        from core.store.model_store import ModelStore

        store = ModelStore(tmp)
        t0 = time.perf_counter()
        ref = det.train(data, "patchcore", VARIANTS[variant], store).ref
        fit_s = time.perf_counter() - t0
        model = det.load(ref)
        result = det.run_evaluation(model, data)
    o = result.overall
    return {"category": category, "variant": variant, "settings": VARIANTS[variant], "fit_wall_s": fit_s,
            "bank": int(model.detector.memory_bank.shape[0]), "peak_rss_mb": peak_rss_mb(), "machine": machine(),
            **{k: o.get(k) for k in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "f1_at_calibrated",
                                     "false_alarm_observed", "latency_ms_median")},
            "per_defect": {d: {"image_auroc": v.get("image_auroc"), "pixel_auroc": v.get("pixel_auroc")}
                           for d, v in result.per_defect.items()}}


def stock_row() -> dict:
    row = run_variant(Path(__file__).resolve().parent / "bench_patchcore.py",
                      ["--variant", "stock", "--ratio", "0.001"], timeout=5400)
    if "error" in row:
        return {"category": "magnetic_tile", "variant": "stock anomalib (0.1% coreset)", "error": row["error"]}
    return {"category": "magnetic_tile", "variant": "stock anomalib (0.1% coreset)", "settings": {},
            "fit_wall_s": row["fit_s"], "bank": row["bank"], "peak_rss_mb": row["peak_rss_mb"], "machine": machine(),
            "image_auroc": row["image_auroc"], "pixel_auroc": row["pixel_auroc"], "aupro": row["aupro"],
            "f1_max": row["f1_max"], "f1_at_calibrated": None, "false_alarm_observed": None,
            "latency_ms_median": row["latency_ms_b1"],
            "per_defect": {d: {"image_auroc": v, "pixel_auroc": row.get("per_defect_pixel_auroc", {}).get(d)}
                           for d, v in row["per_defect_image_auroc"].items()}}


def write_table() -> None:
    lines = ["Each row: `det.train` with the product's defaults plus the variant's settings, then the full "
             "evaluation, in a fresh process. Fit: wall time of training incl. reading images and calibration.", ""]
    rows = [json.loads(p.read_text()) for p in sorted(ROWS.glob("patchcore_defaults_*.json"))]
    for category in sorted({r["category"] for r in rows}):
        part = [r for r in rows if r["category"] == category and "error" not in r]
        if not part:
            continue
        defects = sorted({d for r in part for d in r["per_defect"]})
        lines += [f"### {category}", "",
                  "| variant | image AUROC | pixel AUROC | AUPRO | F1-max | F1 at default | false alarms (5% promised) | "
                  "fit s | peak RSS MB | bank | ms/image | " + " | ".join(f"{d} img / pix" for d in defects) + " |",
                  "|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(defects)]
        for r in sorted(part, key=lambda r: (r["variant"] != "today", r["variant"])):
            lines.append(f"| {r['variant']} | {fmt(r['image_auroc'])} | {fmt(r['pixel_auroc'])} | {fmt(r['aupro'])} | "
                         f"{fmt(r['f1_max'])} | {fmt(r['f1_at_calibrated'])} | "
                         f"{'–' if r.get('false_alarm_observed') is None else format(r['false_alarm_observed'], '.1%')} | "
                         f"{r['fit_wall_s']:.0f} | "
                         f"{r['peak_rss_mb']:.0f} | {r['bank']:,} | {r['latency_ms_median']:.0f} | "
                         + " | ".join(f"{fmt(r['per_defect'].get(d, {}).get('image_auroc'))} / "
                                      f"{fmt(r['per_defect'].get(d, {}).get('pixel_auroc'))}" for d in defects) + " |")
        lines.append("")
    machines = sorted({r["machine"] for r in rows if "machine" in r})
    lines += [f"Machine: {'; '.join(machines)}.", "",
              "Command: `python benchmarks/bench_patchcore_defaults.py`."]
    write_section("patchcore_defaults", "## PatchCore defaults chosen by measurement\n\n" + "\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--categories", default="magnetic_tile,juice_bottle_loco")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--stock", action="store_true", help="also run stock anomalib on magnetic_tile")
    parser.add_argument("--one", nargs=2, metavar=("CATEGORY", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one), default=float))
        return 0
    ROWS.mkdir(exist_ok=True)
    for category in args.categories.split(","):
        if not (DATA / category).is_dir():
            print(f"skipped: no {category} under {DATA}", file=sys.stderr)
            continue
        for variant in args.variants.split(","):
            out = ROWS / f"patchcore_defaults_{category}_{variant}.json"
            if out.exists():
                continue  # resumable: delete a row's file to measure it again
            print(f"running {category} {variant}", file=sys.stderr, flush=True)
            row = run_variant(Path(__file__), ["--one", category, variant], timeout=3600)
            row.setdefault("category", category)
            row.setdefault("variant", variant)
            out.write_text(json.dumps(row, default=float, indent=1))
            write_table()
    if args.stock and (DATA / "magnetic_tile").is_dir():
        out = ROWS / "patchcore_defaults_magnetic_tile_stock.json"
        if not out.exists():
            out.write_text(json.dumps(stock_row(), default=float, indent=1))
        write_table()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
