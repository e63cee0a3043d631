"""The feedback loop measured: does "Mark as OK" on a few false alarms lower the false-alarm rate on OTHER good
parts without costing recall?

    python benchmarks/bench_feedback.py [--category magnetic_tile] [--marks 20] [--every 5]

Default PatchCore trained on the category's train/good; test/good and the defective test images are each split
in two halves (A, B) by a fixed shuffle. The highest-scoring good images of half A are marked OK one at a time
through ``core.verdict.feedback.mark_ok`` (each mark: a new model version, loaded as the app loads it); after every
``--every`` marks the false-alarm rate on good B and the recall on defective B are measured at the FIXED
threshold of the first version (the calibrated default). Written to the ``feedback`` section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, machine, write_section

from core.data.dataset import load_category
from core.data.imageio import load_many
from core.store import lifecycle as det
from core.store.model_store import ModelStore
from core.verdict import feedback


def halves(items: list, seed: int) -> tuple[list, list]:
    order = list(items)
    random.Random(seed).shuffle(order)
    return order[: len(order) // 2], order[len(order) // 2:]


def rates(model: det.LoadedModel, good: list[np.ndarray], bad: list[np.ndarray], threshold: float) -> tuple[float, float]:
    g = np.array([p.score for p in model.detector.predict(good)])
    b = np.array([p.score for p in model.detector.predict(bad)])
    return float((g >= threshold).mean()), float((b >= threshold).mean())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--category", default="magnetic_tile")
    parser.add_argument("--marks", type=int, default=20)
    parser.add_argument("--every", type=int, default=5)
    args = parser.parse_args()
    if not (DATA / args.category).is_dir():
        print(f"skipped: no {args.category} under {DATA}", file=sys.stderr)
        return 0
    data = load_category(DATA, args.category)
    good = [s for s in data.test if s.label == 0]
    bad = [s for s in data.test if s.label == 1]
    good_a, good_b = halves(good, 0)
    _, bad_b = halves(bad, 1)
    _, img_a, _ = load_many([s.path for s in good_a])
    _, img_gb, _ = load_many([s.path for s in good_b])
    _, img_bb, _ = load_many([s.path for s in bad_b])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(tmp)
        t0 = time.perf_counter()
        ref = det.train(data, "patchcore", {}, store).ref
        train_s = time.perf_counter() - t0
        model = det.load(ref)
        threshold = model.calibration.image_threshold
        scores_a = np.array([p.score for p in model.detector.predict(img_a)])
        order = list(np.argsort(-scores_a))
        fpr, recall = rates(model, img_gb, img_bb, threshold)
        rows.append((0, model.version, float((scores_a >= threshold).mean()), fpr, recall, 0.0,
                     int(model.detector.memory_bank.shape[0])))
        mark_seconds: list[float] = []
        for n in range(1, args.marks + 1):
            i = int(order[n - 1])
            t1 = time.perf_counter()
            # these are good parts by their labels: a far-above score is confirmed, as a user who knows would
            result = feedback.mark_ok(model, img_a[i], good_a[i].path.name, confirm_far_above=True)
            model = det.load(result.after)
            mark_seconds.append(time.perf_counter() - t1)
            print(f"mark {n}: {result.message}", file=sys.stderr, flush=True)
            if n % args.every == 0:
                fpr, recall = rates(model, img_gb, img_bb, threshold)
                still = float((np.array([p.score for p in model.detector.predict(img_a)]) >= threshold).mean())
                rows.append((n, model.version, still, fpr, recall, float(np.median(mark_seconds)),
                             int(model.detector.memory_bank.shape[0])))
                print(rows[-1], file=sys.stderr, flush=True)
    lines = [f"Machine: {machine()}. Category {args.category}: default PatchCore (trained in {train_s:.0f} s), "
             f"threshold fixed at the first version's calibrated default ({threshold:.4g}). Good A: {len(good_a)}, "
             f"good B: {len(good_b)}, defective B: {len(bad_b)} images. Each mark: `core.verdict.feedback.mark_ok` on the next "
             "highest-scoring good image of half A, then the new version loaded as the app loads it.", "",
             "| marks | version | false alarms on good A | false alarms on good B (held apart) | recall on defective B | "
             "seconds per mark (median, incl. load) | memory bank |", "|---|---|---|---|---|---|---|"]
    for n, version, fa_a, fa_b, rec, sec, bank in rows:
        lines.append(f"| {n} | v{version} | {fa_a:.1%} | {fa_b:.1%} | {rec:.1%} | {sec:.1f} | {bank} |")
    lines += ["", f"Command: `python benchmarks/bench_feedback.py --category {args.category}`."]
    write_section("feedback", "## Feedback loop: marking false alarms OK (PatchCore)\n\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
