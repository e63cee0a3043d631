"""The product as a user runs it: default training (``python -m core train`` / the Models page), the training
time the Models page estimated beforehand vs the wall time, then the default evaluation, for PatchCore and
EfficientAD side by side on one category.

    python benchmarks/bench_product.py --category juice_bottle_loco [--kinds patchcore,efficientad]
    python benchmarks/bench_product.py --category demo_metal --kinds efficientad   # the built-in 40-image demo
    python benchmarks/bench_product.py --category magnetic_tile --subset 90        # 90 random train goods
    python benchmarks/bench_product.py --category magnetic_tile --kinds efficientad --settings '{"schedule": "step"}'

Each kind: ``core.store.lifecycle.train`` with default settings into a temp store (wall time measured around it,
image reading included), ``core.store.lifecycle.run_evaluation`` on the whole test set. ``--subset N``: the
training goods are N drawn at random (seed 0) from the category's, the test set stays whole. ``demo_metal`` is
made by ``core.data.demo.make_demo_dataset`` (the dashboard's demo). The estimate is the kind's
``KindSpec.estimate_seconds`` (what the Models page and ``train`` print). Each row records the machine and the
load average before and after. Rows are kept in benchmarks/results/product_<category>[_sub<N>]_<kind>[_<tag>].json
(committed) and written to the ``product_<category>`` section of RESULTS.md.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, fmt, machine, train_subset, write_section

from core.data.dataset import CategoryData, load_category
from core.data.demo import DEMO_CATEGORY, make_demo_dataset
from core.data.imageio import median_shape
from core.models.registry import spec
from core.store import lifecycle as det
from core.store.model_store import ModelStore

ROWS = Path(__file__).resolve().parent / "results"


def category_data(category: str, subset: int, tmp: Path) -> CategoryData:
    """The category's images (the demo made under ``tmp``), its training goods cut to ``subset`` at random."""
    if category == DEMO_CATEGORY:
        make_demo_dataset(tmp / "demo")
        data = load_category(tmp / "demo", category)
    else:
        data = load_category(DATA, category)
    return train_subset(data, subset)


def load() -> str:
    """The 1/5/15-minute load averages (``uptime``)."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_seconds() -> float:
    """CPU seconds (user + system) this process has used: on a busy machine, what the wall time would be on an
    idle one is near this over the threads used (an upper bound: busy-waiting threads count too)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(category: str, kind: str, subset: int = 0, settings: dict | None = None) -> dict:
    settings = settings or {}
    with tempfile.TemporaryDirectory() as tmp:
        data = category_data(category, subset, Path(tmp))
        kind_spec = spec(kind)
        estimate = kind_spec.estimate_seconds({**kind_spec.default_settings(), **settings}, len(data.train),
                                              median_shape([s.path for s in data.train]))
        store = ModelStore(Path(tmp) / "store")
        load_before = load()
        cpu0 = cpu_seconds()
        t0 = time.perf_counter()
        result = det.train(data, kind, settings, store)
        wall = time.perf_counter() - t0
        cpu = cpu_seconds() - cpu0
        load_after = load()
        model = det.load(store.current(data.name, kind))
        evaluation = det.run_evaluation(model, data)
    o = evaluation.overall
    return {"category": category, "kind": kind, "subset": subset, "num_train": len(data.train),
            "machine": machine(), "load_before": load_before, "load_after": load_after, "train_wall_s": wall,
            "train_cpu_s": cpu,
            "estimate_s": estimate, "settings": model.manifest["settings"], "train": result.manifest["train"],
            "warmup_ms": model.warmup_ms,
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
        label = path.stem[len(f"product_{category}_"):]  # kind, with the subset and settings tag if any
        lines.append(f"| {label} | {r['train_wall_s'] / 60:.1f} | {est} | {fmt(r['image_auroc'])} | "
                     f"{fmt(r['pixel_auroc'])} | {fmt(r['aupro'])} | {fmt(r['f1_max'])} | {fmt(r['f1_at_calibrated'])} | "
                     f"{r['false_alarm_observed']:.1%} | {r['latency_ms_median']:.0f} | {r['machine']} |")
    lines += ["", f"Command: `python benchmarks/bench_product.py --category {category}`."]
    write_section(f"product_{category}", f"## The product on {category}: PatchCore and EfficientAD, default "
                                         "settings\n\n" + "\n".join(lines))


# issue 25's EfficientAD training targets: (label, rows file of the new defaults, rows file before, target)
TARGETS: tuple[tuple[str, str, str, str], ...] = (
    ("EfficientAD default training, magnetic_tile", "product_magnetic_tile_efficientad",
     "product_magnetic_tile_efficientad_old_defaults", "<= 5 min, image AUROC >= 0.87 (aim 0.93)"),
    ("EfficientAD default training, juice_bottle_loco", "product_juice_bottle_loco_efficientad",
     "product_juice_bottle_loco_efficientad_old_defaults", "<= 5 min, image AUROC >= 0.98"),
    ("EfficientAD on the 40-image demo", "product_demo_metal_efficientad", "", "<= 1 min to image AUROC 1.0"),
)
SUBSETS = ("magnetic_tile", "juice_bottle_loco", "pcb_00041")


def _read(name: str) -> dict | None:
    path = ROWS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _train_cell(r: dict) -> str:
    cpu = f", {r['train_cpu_s'] / 60:.1f} CPU-min" if r.get("train_cpu_s") else ""
    return f"{r['train_wall_s'] / 60:.1f} min wall{cpu}, image AUROC {fmt(r['image_auroc'])}"


def category_shape(name: str) -> tuple[int, int] | None:
    """The median (H, W) of a category's good training images (the estimate's input), None when its data is absent."""
    root = DATA if name != DEMO_CATEGORY else Path(tempfile.gettempdir()) / "bench_product_demo"
    try:
        if name == DEMO_CATEGORY and not (root / name).is_dir():
            make_demo_dataset(root)
        return median_shape([s.path for s in load_category(root, name).train])
    except (OSError, ValueError):
        return None


def _estimate_cell(r: dict) -> str:
    """The committed estimator's figure for the row's settings and images (the Models page's and ``train``'s), with
    its error against the measured wall time."""
    settings = {"input_mode": "squash", **r["settings"]}  # rows recorded before EfficientAD had input modes: squash
    est = spec(r["kind"]).estimate_seconds(settings, r["num_train"], category_shape(r["category"])) or 0.0
    return f"{est / 60:.1f} min ({(est - r['train_wall_s']) / r['train_wall_s']:+.0%})"


def write_cpu_speed() -> None:
    """The ``cpu_speed_training`` rows of RESULTS.md (issue 25) from the saved rows: one row per target."""
    lines = ["EfficientAD training (issue 25), `python benchmarks/bench_product.py` rows: `core.store.lifecycle.train` "
             "with default settings (wall time around it, image reading, calibration and the guard included), then "
             "the default evaluation on the whole test set. CPU-min: the process's CPU time (user + system) during "
             "training. Load: `uptime` before / after training. Before: the defaults until issue 25 (`--schedule "
             "step --steps 6000 --student-width 128`), measured on the machine named there.", "",
             "| target | goal | before | after | command | CPU | load (1/5/15 min) |", "|---|---|---|---|---|---|---|"]
    for label, new, old, goal in TARGETS:
        r, b = _read(new), _read(old) if old else None
        if r is None:
            continue
        before = f"{_train_cell(b)} ({b['machine'].split(',')[0]})" if b else "22 min wall at 6,000 steps (issue 25)"
        category = r["category"]
        lines.append(f"| {label} | {goal} | {before} | {_train_cell(r)} | `bench_product.py --category {category} "
                     f"--kinds efficientad` | {r['machine'].split(';')[0]} | {r.get('load_before', '?')} → "
                     f"{r.get('load_after', '?')} |")
    for category in SUBSETS:
        e, p = _read(f"product_{category}_sub90_efficientad"), _read(f"product_{category}_sub90_patchcore")
        if e is None or p is None:
            continue
        gap = e["image_auroc"] - p["image_auroc"]
        squashed = _read(f"product_{category}_sub90_efficientad_squash")  # before EfficientAD's input modes (resized)
        resized = (f"EfficientAD resized to 256² {fmt(squashed['image_auroc'])} ({squashed['image_auroc'] - p['image_auroc']:+.3f}), "
                   f"{squashed['train_wall_s'] / 60:.1f} min wall" if squashed else "not measured")
        mode = e["settings"].get("input_mode", "squash")
        lines.append(f"| EfficientAD with 90 training images, {category} | image AUROC within 0.03 of PatchCore's "
                     f"| {resized} | EfficientAD ({mode}) {fmt(e['image_auroc'])} vs PatchCore {fmt(p['image_auroc'])} "
                     f"({gap:+.3f}); EfficientAD {e['train_wall_s'] / 60:.1f} min wall | `bench_product.py "
                     f"--category {category} --subset 90` | {e['machine'].split(';')[0]} | "
                     f"{e.get('load_before', '?')} → {e.get('load_after', '?')} |")
    estimates = []
    for path in sorted(ROWS.glob("product_*_efficientad*.json")):
        r = json.loads(path.read_text())
        if r.get("estimate_s") and "load_before" in r:  # rows of this script since issue 25
            estimates.append(f"{path.stem[len('product_'):]} {_estimate_cell(r)}")
    if estimates:
        lines.append(f"| the Models page's estimate (also printed by `train`) | within 25% for every new setting | "
                     f"within 25% (6,000-step defaults: +11%, +13%) | the committed estimator for each row's settings "
                     f"(error vs wall): "
                     f"{'; '.join(estimates)} | the rows above | | |")
    lines += ["", "Timings taken on a machine shared with other engineers' jobs (see the load column) are upper "
              "bounds of what an idle 2-core machine gives; CPU-min is closer to it."]
    write_section("cpu_speed_training", "### EfficientAD training\n\n" + "\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--category", default="juice_bottle_loco")
    parser.add_argument("--kinds", default="patchcore,efficientad")
    parser.add_argument("--subset", type=int, default=0, help="train on this many random train goods (0: all)")
    parser.add_argument("--settings", default="{}", help="JSON settings over the defaults (e.g. the old ones)")
    parser.add_argument("--tag", default="", help="rows-file suffix naming --settings (e.g. old_defaults)")
    parser.add_argument("--table", action="store_true", help="only rewrite the RESULTS.md sections from saved rows")
    args = parser.parse_args()
    if args.table:
        write_table(args.category)
        write_cpu_speed()
        return 0
    if args.category != DEMO_CATEGORY and not (DATA / args.category).is_dir():
        print(f"skipped: no {args.category} under {DATA}", file=sys.stderr)
        return 0
    ROWS.mkdir(exist_ok=True)
    settings = json.loads(args.settings)
    for kind in args.kinds.split(","):
        row = run(args.category, kind, args.subset, settings)
        print(json.dumps(row, default=float), file=sys.stderr, flush=True)
        name = "_".join(x for x in (f"product_{args.category}", f"sub{args.subset}" if args.subset else "", kind,
                                    args.tag) if x)
        (ROWS / f"{name}.json").write_text(json.dumps(row, default=float, indent=1))
        write_table(args.category)
        write_cpu_speed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
