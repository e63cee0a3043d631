"""EfficientAD on magnetic_tile with our distilled teacher: CPU seconds per step and AUROC vs step budget.

    python benchmarks/bench_efficientad.py [--checkpoints 1000,3000,10000]

The run can be stopped and continued: the training state is saved to benchmarks/out/efficientad_state.pt every
100 steps and at each checkpoint, and running the same command again picks up there (rows already measured are
kept in benchmarks/out/efficientad.json). ``--fresh`` starts over. s/step is the median wall time of the steps
in a segment, so a pause (a stopped process, a machine change between sessions) does not count as training.

Trains one model (256x256, small PDN, batch 1, anomalib's losses) through core.efficientad for the last
checkpoint's number of steps, pausing at each earlier checkpoint to evaluate it on the full test set (map
quantiles from the held-out good images each time), so the 1,000-step row is the same run as the 3,000-step
row, 1,000 steps in. s/step is measured per segment. Inference runs the fast (ONNX Runtime) path. The teacher
is assets/teacher/teacher_small.pth (see its manifest.json).
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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoints", default="1000,3000,10000")
    parser.add_argument("--fresh", action="store_true", help="ignore a saved training state and start over")
    parser.add_argument("--test-images", type=int, default=0, help="score only this many test images (0: all)")
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
    test_samples = list(data.test)[::max(1, len(data.test) // args.test_images)] if args.test_images else list(data.test)
    test = [load_image(s.path) for s in test_samples]
    checkpoints = [int(c) for c in args.checkpoints.split(",")]
    state_file, rows_file = OUT / "efficientad_state.pt", OUT / "efficientad.json"
    if args.fresh:
        state_file.unlink(missing_ok=True)
    rows = []
    if state_file.is_file() and rows_file.is_file():
        saved = json.loads(rows_file.read_text())
        rows = saved.get("rows", []) if isinstance(saved, dict) and saved.get("checkpoints") == checkpoints else []
    model = EfficientAD(EfficientADConfig(steps=checkpoints[-1]))
    last = {"step": rows[-1]["steps"] if rows else 0}

    def evaluate_now(step: int, train_s: float) -> None:
        t0 = time.perf_counter()
        preds = model.predict(test)
        eval_s = time.perf_counter() - t0
        lat = []
        for im in test[:40]:
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
        write_results()  # after every checkpoint, so an interrupted run keeps what it measured

    def write_results() -> None:
        OUT.mkdir(parents=True, exist_ok=True)
        rows_file.write_text(json.dumps({"checkpoints": checkpoints, "rows": rows}, default=float, indent=1))
        teacher = json.loads((DEFAULT_TEACHER.parent / "manifest.json").read_text())
        lines = [f"Machine: {machine()}. 256x256 input, small PDN, teacher distilled for {teacher['steps']} steps "
                 f"(final distillation loss {teacher['loss_last_50']:.3f}), {len(train)} training images, "
                 f"{len(hold)} held out for map normalisation.", "",
                 "| steps | s/step (median) | train min (steps x median) | image AUROC | pixel AUROC | AUPRO | F1-max | ms/image (batch 1) | images/s (folder) |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['steps']} | {r['seconds_per_step']:.2f} | {r['train_s'] / 60:.1f} | {fmt(r['image_auroc'])} | "
                         f"{fmt(r['pixel_auroc'])} | {fmt(r['aupro'])} | {fmt(r['f1_max'])} | {r['latency_ms_b1']:.0f} | "
                         f"{r['folder_images_per_s']:.1f} |")
        sps = min(r["seconds_per_step"] for r in rows)
        done = rows[-1]["steps"]
        if done < checkpoints[-1]:
            lines += ["", f"Run in progress: rows up to {done:,} steps of a {checkpoints[-1]:,}-step run (its learning "
                          f"rate drops 10x at 95% of {checkpoints[-1]:,}); running the command again continues it."]
        lines += ["", f"At {sps:.2f} s/step (the fastest segment) 10,000 steps take about {10000 * sps / 3600:.1f} h on "
                      f"this CPU; the dashboard shows this estimate before training.",
                  "", f"Command: `python benchmarks/bench_efficientad.py --checkpoints {args.checkpoints}`."]
        write_section("efficientad", "## EfficientAD on magnetic_tile\n\n" + "\n".join(lines))

    info = model.fit(train, hold, checkpoints=tuple(checkpoints), on_checkpoint=evaluate_now,
                     resume_file=state_file, save_every=100)
    evaluate_now(checkpoints[-1], info["train_seconds"])
    rows[-1]["final_loss"] = info["final_loss"]
    write_results()
    state_file.unlink(missing_ok=True)  # finished: a rerun starts over
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
