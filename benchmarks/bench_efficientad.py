"""EfficientAD on magnetic_tile with our distilled teacher: CPU seconds per step and AUROC vs step budget.

    python benchmarks/bench_efficientad.py [--checkpoints 500,1000]

Trains one model (256x256, small PDN, batch 1, anomalib's losses) through core.efficientad and evaluates it
on the full test set after each checkpoint's number of steps (map quantiles from the held-out good images
each time). The teacher is assets/teacher/teacher_small.pth (see its manifest.json).
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
from bench_patchcore import evaluate_predictions  # noqa: E402
from common import DATA, OUT, fmt, machine, peak_rss_mb, write_section  # noqa: E402

from core.detector import split_holdout  # noqa: E402
from core.dataset import load_category  # noqa: E402
from core.efficientad import DEFAULT_TEACHER, EfficientAD, EfficientADConfig  # noqa: E402
from core.imageio import load_image  # noqa: E402
from core.preprocess import to_tensor  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoints", default="500,1000")
    args = parser.parse_args()
    if not (DATA / "magnetic_tile").is_dir():
        print(f"skipped: no magnetic_tile under {DATA}", file=sys.stderr)
        return 0
    torch.set_num_threads(2)
    data = load_category(DATA, "magnetic_tile")
    train_all = [load_image(s.path) for s in data.train]
    fit_idx, hold_idx = split_holdout(len(train_all), 0.1, 0)
    train = [train_all[i] for i in fit_idx]
    hold = [train_all[i] for i in hold_idx]
    test_samples = list(data.test)
    test = [load_image(s.path) for s in test_samples]
    checkpoints = [int(c) for c in args.checkpoints.split(",")]
    rows = []
    model = EfficientAD(EfficientADConfig(steps=checkpoints[-1]))
    done = 0
    total_train_s = 0.0
    for target in checkpoints:
        # continue training from where the previous checkpoint stopped (same optimiser settings per segment)
        segment = EfficientAD(EfficientADConfig(steps=target - done, seed=done))
        segment.model.load_state_dict(model.model.state_dict())
        info = segment.fit(train, hold)
        model = segment
        done = target
        total_train_s += info["train_seconds"]
        t0 = time.perf_counter()
        preds = model.predict(test)
        eval_s = time.perf_counter() - t0
        lat = []
        for im in test[:40]:
            x = to_tensor([im], model.config.input_spec)
            s = time.perf_counter()
            model.forward(x)
            lat.append((time.perf_counter() - s) * 1000)
        row = {"steps": target, "seconds_per_step": info["seconds_per_step"], "train_s": total_train_s,
               "latency_ms_b1": statistics.median(lat[3:]), "folder_images_per_s": len(test) / eval_s,
               "peak_rss_mb": peak_rss_mb(), "final_loss": info["final_loss"]}
        row.update(evaluate_predictions(test_samples, test, preds))
        rows.append(row)
        print(json.dumps(row, default=float), file=sys.stderr, flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "efficientad.json").write_text(json.dumps(rows, default=float, indent=1))
    teacher = json.loads((DEFAULT_TEACHER.parent / "manifest.json").read_text())
    lines = [f"Machine: {machine()}. 256x256 input, small PDN, teacher distilled for {teacher['steps']} steps "
             f"(final distillation loss {teacher['loss_last_50']:.3f}), {len(train)} training images, "
             f"{len(hold)} held out for map normalisation.", "",
             "| steps | s/step | train min | image AUROC | pixel AUROC | AUPRO | F1-max | ms/image (batch 1) | images/s (folder) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['steps']} | {r['seconds_per_step']:.2f} | {r['train_s'] / 60:.1f} | {fmt(r['image_auroc'])} | "
                     f"{fmt(r['pixel_auroc'])} | {fmt(r['aupro'])} | {fmt(r['f1_max'])} | {r['latency_ms_b1']:.0f} | "
                     f"{r['folder_images_per_s']:.1f} |")
    sps = min(r["seconds_per_step"] for r in rows)
    lines += ["", f"At {sps:.2f} s/step (the fastest segment; a segment that shared the CPU with other jobs runs slower) "
                  f"3,000 steps take about {3000 * sps / 3600:.1f} h and 10,000 steps about {10000 * sps / 3600:.1f} h on "
                  "this CPU (not run here; the dashboard shows this estimate before training).",
              "", f"Command: `python benchmarks/bench_efficientad.py --checkpoints {args.checkpoints}`."]
    write_section("efficientad", "## EfficientAD on magnetic_tile\n\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
