"""EfficientAD variants on real data: CPU seconds per step, accuracy against the step budget, latency.

    python benchmarks/bench_efficientad.py --variant lite --category magnetic_tile [--checkpoints 1000,3000]
    python benchmarks/bench_efficientad.py --table        # only rewrite the RESULTS.md section from saved rows

Variants (``VARIANTS`` below) are EfficientADConfig settings; ``cosine`` is the product's default since issue 25
(cached teacher targets, batches of 2, warm-up + cosine, width-64 student, bf16 where measured faster), the ``lite*``
variants anomalib's one-image-per-step loop with the width-128 student (the default before; ``lite_hard99_6000``
was it), ``pdn_s`` anomalib's stock structure with our
distilled PDN-S teacher. One run trains one model for the last checkpoint's number of steps and pauses at each
earlier checkpoint to evaluate it on the full test set (map quantiles from the held-out good images each time),
so the rows of a run are one training run. The training state is saved to benchmarks/out/ every 100 steps and
at each checkpoint: running the same command again continues it (``--fresh`` starts over). s/step is the median
step wall time of a segment, so a pause does not count as training. Rows are kept per (category, variant) in
benchmarks/results/efficientad_<category>_<variant>.json (committed) and the RESULTS.md section lists them all;
``pdn_s`` rows there were measured before this script took variants (see the file's ``note``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_patchcore import evaluate_predictions
from common import DATA, OUT, fmt, machine, peak_rss_mb, write_section

from core.data.dataset import load_category
from core.data.imageio import load_image
from core.models.efficientad import EfficientAD, EfficientADConfig
from core.store.lifecycle import HOLDOUT_FRACTION, split_holdout

# the settings each variant was measured with (the defaults have moved since; old rows keep their meaning)
_STEP = {"schedule": "step", "student_width": 128, "lr": 1e-3}  # anomalib's loop, width-128 student: the defaults until issue 25
_STOCK_LOSS = {**_STEP, "hard_quantile": 0.999, "score_border_cells": 0}  # + anomalib's hard loss and image score
VARIANTS: dict[str, dict[str, object]] = {
    "cosine": {"max_epochs": 0},  # the product's default recipe (issue 25); steps from --checkpoints' last
    "cosine_fp32": {"max_epochs": 0, "precision": "fp32"},
    "cosine_w128": {"max_epochs": 0, "student_width": 128},
    "lite": {**_STOCK_LOSS},  # the first lite default (3,000 steps)
    "lite_6000": {**_STOCK_LOSS},  # 6,000 steps: what the 30-minute budget buys (separate rows file)
    "lite_lr1e-4": {**_STOCK_LOSS, "lr": 1e-4},
    "lite_border2": {**_STOCK_LOSS, "context_cells": 0, "border_cells": 2},
    "lite_lr1e-4_border2": {**_STOCK_LOSS, "lr": 1e-4, "context_cells": 0, "border_cells": 2},
    "lite_w64": {**_STOCK_LOSS, "student_width": 64},
    "lite1": {**_STOCK_LOSS, "teacher_backbone": "tf_efficientnet_lite1"},
    "lite_hard99": {**_STEP, "hard_quantile": 0.99, "score_border_cells": 0},
    "lite_hard99_6000": {**_STEP, "hard_quantile": 0.99, "score_border_cells": 2},  # the default, session 6 to issue 25
    "lite_w64_hard99_6000": {**_STEP, "student_width": 64, "hard_quantile": 0.99, "score_border_cells": 2},
    # the default with ../shared/data/natural (320 photos) as penalty images instead of the 20 shipped ones
    "lite_hard99_6000_natural": {**_STEP, "hard_quantile": 0.99, "score_border_cells": 2,
                                 "penalty_dir": str(DATA / "natural")},
    "pdn_s": {**_STOCK_LOSS, "structure": "pdn_s", "lr": 1e-4},
}


ROWS = Path(__file__).resolve().parent / "results"  # committed, so the table survives a fresh checkout


def rows_path(category: str, variant: str) -> Path:
    return ROWS / f"efficientad_{category}_{variant}.json"


def write_table() -> None:
    lines = ["Each row: one training run of `EfficientADConfig` defaults plus the variant's settings, evaluated on "
             "the full test set at that step count (map quantiles from the held-out good training images: 20%, at most 200, as the product holds out). "
             "`lite` is the product's default (pretrained tf_efficientnet_lite0 trunk to stride 16 as teacher, "
             "152 channels at stride 8; plain-conv student of width 128; stride-8 autoencoder); `pdn_s` is anomalib's "
             "stock structure with our distilled PDN-S teacher (assets/teacher). ms/image: batch 1, fast (ONNX "
             "Runtime) path, median over 40 images after 3 warm-up images.", "",
             "| category | variant | held out | steps | s/step (median) | train min | image AUROC | pixel AUROC | AUPRO | "
             "F1-max | ms/image (batch 1) | images/s (folder) | machine |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(ROWS.glob("efficientad_*_*.json")):
        if path.name.startswith("efficientad_scores_"):  # bench_efficientad_scores.py's rows
            continue
        saved = json.loads(path.read_text())
        for r in saved.get("rows", []):
            lines.append(f"| {saved['category']} | {saved['variant']} | {saved['num_holdout']} | {r['steps']} | "
                         f"{r['seconds_per_step']:.3f} | "
                         f"{r['train_s'] / 60:.1f} | {fmt(r['image_auroc'])} | {fmt(r['pixel_auroc'])} | "
                         f"{fmt(r['aupro'])} | {fmt(r['f1_max'])} | {r['latency_ms_b1']:.0f} | "
                         f"{r['folder_images_per_s']:.1f} | {saved['machine']} |")
    lines += ["", "Command: `python benchmarks/bench_efficientad.py --variant V --category C --checkpoints ...`."]
    write_section("efficientad", "## EfficientAD variants on real data\n\n" + "\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", default="lite", choices=sorted(VARIANTS))
    parser.add_argument("--category", default="magnetic_tile")
    parser.add_argument("--checkpoints", default="1000,3000")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fresh", action="store_true", help="ignore a saved training state and start over")
    parser.add_argument("--table", action="store_true", help="only rewrite the RESULTS.md section")
    args = parser.parse_args()
    if args.table:
        write_table()
        return 0
    if not (DATA / args.category).is_dir():
        print(f"skipped: no {args.category} under {DATA}", file=sys.stderr)
        return 0
    torch.set_num_threads(args.threads)
    data = load_category(DATA, args.category)
    train_all = [load_image(s.path) for s in data.train]
    fit_idx, hold_idx = split_holdout(len(train_all), HOLDOUT_FRACTION, 0)
    train = [train_all[i] for i in fit_idx]
    hold = [train_all[i] for i in hold_idx]
    test_samples = list(data.test)
    test = [load_image(s.path) for s in test_samples]
    checkpoints = [int(c) for c in args.checkpoints.split(",")]
    tag = f"{args.category}_{args.variant}"
    state_file, rows_file = OUT / f"efficientad_state_{tag}.pt", rows_path(args.category, args.variant)
    if args.fresh:
        state_file.unlink(missing_ok=True)
    rows = []
    if state_file.is_file() and rows_file.is_file():
        saved = json.loads(rows_file.read_text())
        rows = saved.get("rows", []) if saved.get("checkpoints") == checkpoints else []
    model = EfficientAD(EfficientADConfig(steps=checkpoints[-1], **VARIANTS[args.variant]))  # type: ignore[arg-type]
    last = {"step": rows[-1]["steps"] if rows else 0}

    def evaluate_now(step: int, train_s: float) -> None:
        t0 = time.perf_counter()
        preds = model.predict(test)
        eval_s = time.perf_counter() - t0
        lat = []
        for im in test[:43]:
            s = time.perf_counter()
            model.predict([im])
            lat.append((time.perf_counter() - s) * 1000)
        segment = model.step_seconds[last["step"]:step]
        row = {"steps": step, "seconds_per_step": statistics.median(segment),
               "train_s": statistics.median(model.step_seconds[:step]) * step, "wall_train_s": train_s,
               "latency_ms_b1": statistics.median(lat[3:]),
               "folder_images_per_s": len(test) / eval_s, "peak_rss_mb": peak_rss_mb()}
        row.update(evaluate_predictions(test_samples, test, preds))
        rows.append(row)
        last.update(step=step)
        print(json.dumps(row, default=float), file=sys.stderr, flush=True)
        ROWS.mkdir(parents=True, exist_ok=True)
        rows_file.write_text(json.dumps({"category": args.category, "variant": args.variant,
                                         "settings": model.config.to_dict(), "checkpoints": checkpoints,
                                         "machine": machine(), "num_train": len(train), "num_holdout": len(hold),
                                         "rows": rows}, default=float, indent=1))
        write_table()  # after every checkpoint, so an interrupted run keeps what it measured

    info = model.fit(train, hold, checkpoints=tuple(checkpoints), on_checkpoint=evaluate_now,
                     resume_file=state_file, save_every=100)
    evaluate_now(checkpoints[-1], info["train_seconds"])
    torch.save(model.state(), OUT / f"efficientad_model_{tag}.pt")  # for scoring studies (bench_efficientad_scores.py)
    state_file.unlink(missing_ok=True)  # finished: a rerun starts over
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
