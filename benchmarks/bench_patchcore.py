"""PatchCore on magnetic_tile: our pipeline against stock anomalib, same backbone/layers/size/ratio, one run.

    python benchmarks/bench_patchcore.py                 # default variants, writes benchmarks/RESULTS.md
    python benchmarks/bench_patchcore.py --variant ours --ratio 0.01 --mode native   # one variant, JSON line

"stock" = anomalib 2.7's PatchcoreModel exactly as its Lightning module drives it: embeddings collected in
training mode, ``subsample_embedding`` (anomalib's KCenterGreedy with its sparse random projection), and
the model's own ``forward`` (``torch.cdist``-free exhaustive search) for inference. The stock coreset runs
under ``torch.no_grad()`` (without it, its memory grows per iteration until the OOM killer ends the run).
"ours" = core.models.patchcore.PatchCore: the same anomalib model and weights, the backbone run by ONNX Runtime
(core/models/runtime.py), our bounded fast coreset (core/models/coreset.py), the product's ``search="auto"`` (exact search up
to 16,384 bank entries, HNSW + exact maximum above: core/models/knn.py) and matrix map smoothing (core/models/mapsmooth.py).
Coreset ratio 1.0 keeps every patch (no coreset). Both read the same images, preprocessed the same way.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, fmt, machine, peak_rss_mb, run_variant, write_section

from core.data.dataset import GOOD, load_category
from core.data.imageio import load_image, load_mask
from core.models.knn import resolve
from core.models.patchcore import PatchCore, PatchCoreConfig
from core.models.preprocess import batches, predict_in_batches, to_tensor
from core.scores import metrics


def image_metrics(samples, scores) -> dict:
    """Image AUROC, F1-max and image AUROC per defect type (each defect against all good images)."""
    labels = np.array([s.label for s in samples])
    scores = np.asarray(scores, dtype=np.float64)
    f1, _ = metrics.f1_max(labels, scores)
    per_defect = {}
    defects = np.array([s.defect for s in samples])
    for d in sorted(set(defects[labels == 1])):
        sel = (defects == d) | (defects == "good")
        per_defect[d] = metrics.roc_auc(labels[sel], scores[sel])
    return {"image_auroc": metrics.roc_auc(labels, scores), "f1_max": f1, "per_defect_image_auroc": per_defect}


def pixel_metrics(samples, images, maps) -> dict:
    """Pixel AUROC and AUPRO of ``maps`` (each at its image's original size), and pixel AUROC per defect type
    (that type's images and all good images, as core.scores.evaluate counts it)."""
    masks = [load_mask(s.mask_path, im.shape[:2]) if s.mask_path else np.zeros(im.shape[:2], bool)
             for s, im in zip(samples, images, strict=True)]

    def auroc(keep: list[int]) -> float:
        return metrics.roc_auc(np.concatenate([masks[i].ravel() for i in keep]),
                               np.concatenate([np.asarray(maps[i]).ravel() for i in keep]))

    defects = [s.defect for s in samples]
    per_defect = {d: auroc([i for i, x in enumerate(defects) if x in (d, GOOD)])
                  for d in sorted(set(defects) - {GOOD})}
    return {"pixel_auroc": auroc(list(range(len(samples)))), "aupro": metrics.aupro(masks, maps),
            "per_defect_pixel_auroc": per_defect}


def evaluate_predictions(samples, images, preds) -> dict:
    return {**image_metrics(samples, [p.score for p in preds]),
            **pixel_metrics(samples, images, [p.anomaly_map for p in preds])}


def run_one(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    data = load_category(DATA, "magnetic_tile")
    train = [load_image(s.path) for s in data.train]
    test_samples = list(data.test)
    test = [load_image(s.path) for s in test_samples]
    cfg = PatchCoreConfig(height=args.size, width=args.size, input_mode=args.mode, coreset_ratio=args.ratio,
                          batch_size=1 if args.mode == "native" else 16,
                          search="auto" if args.variant == "ours" else "stock",
                          runtime="onnx" if args.variant == "ours" else "torch")
    model = PatchCore(cfg)
    t0 = time.perf_counter()
    if args.variant == "ours":
        report = model.fit(train)
        embed_s, coreset_s, n_patches = report.embed_seconds, report.coreset_seconds, report.num_patches
    else:
        pm = model.model
        pm.train()
        for _, batch in batches(train, cfg.input_spec, cfg.batch_size):
            pm(batch)
        embed_s = time.perf_counter() - t0
        n_patches = sum(int(e.shape[0]) for e in pm.embedding_store)
        t1 = time.perf_counter()
        with torch.no_grad():
            pm.subsample_embedding(args.ratio)
        coreset_s = time.perf_counter() - t1
        pm.eval()
        model.set_memory_bank(pm.memory_bank)
    t_index = time.perf_counter()
    if args.variant == "ours":
        model.search_index()  # HNSW is built here for large banks (part of making the model ready)
        coreset_s += time.perf_counter() - t_index
    fit_s = time.perf_counter() - t0
    t2 = time.perf_counter()
    preds = predict_in_batches(model.forward, test, cfg.input_spec, cfg.batch_size)
    folder_s = time.perf_counter() - t2
    # batch-1 latency, median over 60 images (after 3 warm-up images)
    for im in test[:3]:
        model.forward(to_tensor([im], cfg.input_spec))
    lat = []
    for im in test[3:63]:
        x = to_tensor([im], cfg.input_spec)
        s = time.perf_counter()
        model.forward(x)
        lat.append((time.perf_counter() - s) * 1000)
    search = resolve(cfg.search, int(model.memory_bank.shape[0])) if args.variant == "ours" else "exhaustive"
    result = {"variant": args.variant, "mode": args.mode, "size": args.size, "ratio": args.ratio, "search": search,
              "patches": n_patches, "bank": int(model.memory_bank.shape[0]), "embed_s": embed_s,
              "coreset_s": coreset_s, "fit_s": fit_s, "peak_rss_mb": peak_rss_mb(),
              "latency_ms_b1": statistics.median(lat), "folder_images_per_s": len(test) / folder_s}
    result.update(evaluate_predictions(test_samples, test, preds))
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", choices=("ours", "stock"))
    parser.add_argument("--ratio", type=float, default=0.001)
    parser.add_argument("--mode", choices=("squash", "native"), default="squash")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plan", default="squash:256:0.001:stock,squash:256:0.001:ours,squash:256:0.01:ours,"
                                          "native:0:0.01:ours,squash:256:1.0:ours")
    args = parser.parse_args()
    if not (DATA / "magnetic_tile").is_dir():
        print(f"skipped: no magnetic_tile under {DATA}", file=sys.stderr)
        return 0
    if args.variant:
        print(json.dumps(run_one(args), default=float))
        return 0
    rows = []
    for item in args.plan.split(","):
        mode, size, ratio, variant = item.split(":")
        print(f"running {item}", file=sys.stderr, flush=True)
        rows.append(run_variant(Path(__file__), ["--variant", variant, "--ratio", ratio, "--mode", mode,
                                                 "--size", size or "256"], timeout=5400))
        print(json.dumps(rows[-1], default=float), file=sys.stderr, flush=True)
    lines = [f"Machine: {machine()}.", "",
             "| pipeline | input | coreset | patches → bank | search | embed s | coreset (+ HNSW build) s | peak RSS MB | image AUROC | "
             "pixel AUROC | AUPRO | F1-max | ms/image (batch 1) | images/s (folder) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| failed: {r['error']} |")
            continue
        inp = "native aspect, scale 1" if r["mode"] == "native" else f"{r['size']}x{r['size']} squashed"
        search = "HNSW + exact maximum" if r.get("search") == "hnsw" else r.get("search", "")
        lines.append(f"| {r['variant']} | {inp} | {r['ratio']:.1%} | {r['patches']:,} → {r['bank']:,} | {search} | "
                     f"{r['embed_s']:.0f} | {r['coreset_s']:.1f} | {r['peak_rss_mb']:.0f} | {fmt(r['image_auroc'])} | "
                     f"{fmt(r['pixel_auroc'])} | {fmt(r['aupro'])} | {fmt(r['f1_max'])} | {r['latency_ms_b1']:.0f} | "
                     f"{r['folder_images_per_s']:.1f} |")
    per_defect = [r for r in rows if "error" not in r]
    if per_defect:
        defects = sorted(per_defect[0]["per_defect_image_auroc"])
        lines += ["", "Image AUROC per defect type (each defect against all good test images):", "",
                  "| pipeline | input | coreset | " + " | ".join(defects) + " |", "|---|---|---|" + "---|" * len(defects)]
        for r in per_defect:
            inp = "native" if r["mode"] == "native" else f"{r['size']}² squash"
            lines.append(f"| {r['variant']} | {inp} | {r['ratio']:.1%} | "
                         + " | ".join(fmt(r["per_defect_image_auroc"][d]) for d in defects) + " |")
    stock = next((r for r in rows if r.get("variant") == "stock"), None)
    ours = next((r for r in rows if r.get("variant") == "ours" and stock and r["ratio"] == stock["ratio"]
                 and r["mode"] == stock["mode"]), None)
    if stock and ours and "error" not in stock:
        lines += ["", f"Same settings ({stock['ratio']:.1%} coreset, {stock['size']}² input): coreset "
                      f"{stock['coreset_s'] / ours['coreset_s']:.1f}x faster, whole fit (features + coreset) "
                      f"{stock['fit_s'] / ours['fit_s']:.1f}x faster; image AUROC {ours['image_auroc'] - stock['image_auroc']:+.4f}, "
                      f"pixel AUROC {ours['pixel_auroc'] - stock['pixel_auroc']:+.4f}; batch-1 latency "
                      f"{stock['latency_ms_b1'] / ours['latency_ms_b1']:.2f}x."]
    lines += ["", "Command: `python benchmarks/bench_patchcore.py` (about 30 minutes on this machine)."]
    write_section("patchcore", "## PatchCore on magnetic_tile: ours vs stock anomalib\n\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
