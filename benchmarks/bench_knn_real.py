"""Exact vs HNSW search on REAL patch features: time per image and the AUROC cost, as the memory bank grows.

    python benchmarks/bench_knn_real.py [--sizes 30000,100000,300000,779264] [--test-images 100]

Features: tf_efficientnet_lite0 blocks.2+4 at 256x256 (our PatchCore defaults) of magnetic_tile's 761 good
training images (779,264 patches). Banks of each size are uniform random subsets of those patches (a k-center
coreset of 300k+ entries is not what anyone would build; a random subset has the same density of near
neighbours). Test: every k-th test image (good and defective), scored with anomalib's re-weighted image score
and the blurred map. Reported per bank size: ms/image of the search (1,024 queries: a 32x32 grid), HNSW build time, image and
pixel AUROC with exact search and with HNSW at several efSearch values, and the largest relative image-score
change. This is what sets ``AUTO_EXACT_LIMIT`` and ``HNSW_EF_SEARCH`` in core/models/knn.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, machine, write_section

from core.data.dataset import load_category
from core.data.imageio import load_image, load_mask
from core.models.knn import AUTO_EXACT_LIMIT, HNSW_EF_SEARCH, HNSW_M, build_index
from core.models.mapsmooth import MapSmoother
from core.models.patchcore import PatchCore, PatchCoreConfig
from core.models.preprocess import batches
from core.scores import metrics


def embed_all(model: PatchCore, images: list[np.ndarray]) -> torch.Tensor:
    """Patch features ``[N_images, h*w, D]``."""
    out = []
    for _, batch in batches(images, model.config.input_spec, 16):
        emb = model.embed(batch)
        out.append(emb.permute(0, 2, 3, 1).reshape(emb.shape[0], -1, emb.shape[1]))
    return torch.cat(out)


def score(model: PatchCore, index, test: torch.Tensor, grid: int,
          refine: bool) -> tuple[np.ndarray, list[np.ndarray], float]:
    """Image scores ``[T]``, maps (256x256 each) and the median search time per image (ms)."""
    scores, maps, times = [], [], []
    smoother = MapSmoother(model.model.anomaly_map_generator)
    for feats in test:
        t0 = time.perf_counter()
        if refine or index.hnsw is None:  # the product's path: exact search, or HNSW + exact maximum
            dist, loc = index.patch_search(feats, 1)
        else:
            dist, loc = index.search(feats)
        times.append((time.perf_counter() - t0) * 1000)
        with torch.inference_mode():
            s = model.model.compute_anomaly_score(dist[None], loc[None], feats)
            m = smoother(dist.reshape(1, 1, grid, grid), (256, 256))
        scores.append(float(s.reshape(-1)[0]))
        maps.append(m[0, 0].numpy())
    return np.array(scores), maps, float(np.median(times))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="30000,100000,300000,779264")
    parser.add_argument("--test-images", type=int, default=100)
    parser.add_argument("--ef", default="16,64,256")
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = load_category(DATA, "magnetic_tile")
    model = PatchCore(PatchCoreConfig())
    train = embed_all(model, [load_image(s.path) for s in data.train])
    pool = train.reshape(-1, train.shape[-1])
    del train
    step = max(1, len(data.test) // args.test_images)
    samples = list(data.test)[::step][:args.test_images]
    test_images = [load_image(s.path) for s in samples]
    test = embed_all(model, test_images)
    grid = int(round(test.shape[1] ** 0.5))
    labels = np.array([s.label for s in samples])
    masks = [np.asarray(load_mask(s.mask_path, (256, 256))) if s.mask_path else np.zeros((256, 256), bool) for s in samples]
    truth = np.concatenate([m.ravel() for m in masks])
    efs = [int(e) for e in args.ef.split(",")]
    rng = np.random.default_rng(0)
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        n = min(n, pool.shape[0])
        bank = pool[torch.from_numpy(np.sort(rng.choice(pool.shape[0], n, replace=False)))].contiguous()
        model.set_memory_bank(bank)
        exact = build_index(bank, "exact")
        ref_scores, ref_maps, ref_ms = score(model, exact, test, grid, False)

        def result(name: str, ms: float, s: np.ndarray, maps: list[np.ndarray], build_s: float) -> dict:
            return {"n": n, "search": name, "ms": ms, "build_s": build_s, "image": metrics.roc_auc(labels, s),
                    "pixel": metrics.roc_auc(truth, np.concatenate([m.ravel() for m in maps])),
                    "score_err": float(np.max(np.abs(s - ref_scores) / np.maximum(ref_scores, 1e-9)))}

        rows.append(result("exact", ref_ms, ref_scores, ref_maps, 0.0))
        t0 = time.perf_counter()
        hnsw = build_index(bank, "hnsw")
        build_s = time.perf_counter() - t0
        for ef in efs:
            hnsw.hnsw.hnsw.efSearch = ef  # NearestNeighbourIndex -> faiss IndexHNSWFlat -> HNSW
            for refine in (False, True):
                s, maps, ms = score(model, hnsw, test, grid, refine)
                rows.append(result(f"HNSW ef={ef}" + (" + exact maximum" if refine else ""), ms, s, maps, build_s))
                print(rows[-1], file=sys.stderr, flush=True)
        del hnsw, exact, bank
    lines = [f"Machine: {machine()}. Real features: magnetic_tile, tf_efficientnet_lite0 blocks.2+4, 256x256 "
             f"({pool.shape[0]:,} training patches, {pool.shape[1]} dims); banks are random subsets; "
             f"{len(samples)} test images ({int(labels.sum())} defective), {test.shape[1]:,} patches (queries) each. HNSW M={HNSW_M}.", "",
             "| bank | search | ms/image (search) | build s | image AUROC | pixel AUROC | max image-score change vs exact |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['n']:,} | {r['search']} | {r['ms']:.0f} | {r['build_s']:.0f} | {r['image']:.4f} | "
                     f"{r['pixel']:.4f} | {r['score_err']:.2%} |")
    lines += ["", f"core/models/knn.py at the time of this run: `search=\"auto\"` = exact up to {AUTO_EXACT_LIMIT:,} entries, "
                  f"HNSW (efSearch {HNSW_EF_SEARCH}) + exact maximum above.", "",
              "Command: `python benchmarks/bench_knn_real.py`."]
    write_section("knn_real", "## Exact vs HNSW on real features: speed and AUROC cost\n\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
