"""PatchCore nearest-neighbour search as the memory bank grows: exact (blocked matrix products) vs HNSW.

    python benchmarks/bench_knn_scaling.py [--sizes 10000,30000,100000,300000,1000000]

Banks are synthetic (a 152-d Gaussian mixture shaped like tf_efficientnet_lite0 blocks.2+4 patch features);
queries are the 1,024 patches of one 256x256 image (32x32 grid). Reported: index build time, query time per
image, resident memory added by the index, and the accuracy of HNSW (relative error of the nearest distance,
and of the image score = max patch distance, without and with the exact re-check of the largest patches).
The product's ``search="auto"`` limit comes from the real-feature study, benchmarks/bench_knn_real.py.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_section

from core.models.knn import AUTO_EXACT_LIMIT, HNSW_EF_SEARCH, HNSW_M, build_index

DIM = 152
QUERIES = 1024


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def synthetic(n: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    idx = rng.integers(0, len(centres), n)
    return (centres[idx] + rng.normal(0, 1.0, (n, DIM))).astype(np.float32)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,30000,100000,300000,1000000")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3.0, (64, DIM))
    queries = torch.from_numpy(synthetic(QUERIES, rng, centres) + rng.normal(0, 0.3, (QUERIES, DIM)).astype(np.float32))
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        bank = torch.from_numpy(synthetic(n, rng, centres))
        row = {"n": n}
        for kind in ("exact", "hnsw"):
            gc.collect()
            before = rss_mb()
            t0 = time.perf_counter()
            index = build_index(bank, kind)
            row[f"{kind}_build_s"] = time.perf_counter() - t0
            index.search(queries[:256])  # warm-up
            times = []
            for _ in range(3):
                t1 = time.perf_counter()
                dist, _ = index.patch_search(queries, 1) if kind == "exact" else index.search(queries)
                times.append((time.perf_counter() - t1) * 1000)
            row[f"{kind}_ms"] = float(np.median(times))
            row[f"{kind}_mem_mb"] = rss_mb() - before
            row[f"{kind}_dist"] = dist.numpy()
            if kind == "hnsw":
                times = []
                for _ in range(3):
                    t1 = time.perf_counter()
                    refined, _ = index.exact_maximum(queries, *index.search(queries), 1)
                    times.append((time.perf_counter() - t1) * 1000)
                row["refined_ms"] = float(np.median(times))
                row["refined_max"] = float(refined.max())
            del index
        exact, approx = row.pop("exact_dist"), row.pop("hnsw_dist")
        row["nn_rel_err"] = float(np.mean((approx - exact) / np.maximum(exact, 1e-9)))
        row["score_rel_err"] = float((approx.max() - exact.max()) / exact.max())
        row["refined_rel_err"] = float((row.pop("refined_max") - exact.max()) / exact.max())
        rows.append(row)
        print(row, file=sys.stderr, flush=True)
        del bank
    lines = [f"Machine: {machine()}. Bank: synthetic {DIM}-d patch features; query: {QUERIES:,} patches (one 256² image's 32x32 grid); exact = the product's exact path (distances for every patch, neighbour index for the largest). "
             f"HNSW: M={HNSW_M}, efSearch={HNSW_EF_SEARCH}.", "",
             "| bank size | exact build s | exact ms/image | exact MB | HNSW build s | HNSW ms/image | HNSW MB | "
             "HNSW mean NN-distance error | HNSW image-score error | HNSW + exact maximum ms/image | its image-score error |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['n']:,} | {r['exact_build_s']:.2f} | {r['exact_ms']:.0f} | {r['exact_mem_mb']:.0f} | "
                     f"{r['hnsw_build_s']:.1f} | {r['hnsw_ms']:.0f} | {r['hnsw_mem_mb']:.0f} | "
                     f"{r['nn_rel_err']:+.2%} | {r['score_rel_err']:+.2%} | {r['refined_ms']:.0f} | "
                     f"{r['refined_rel_err']:+.2%} |")
    lines += ["", f"`search=\"auto\"` uses exact search up to {AUTO_EXACT_LIMIT:,} bank entries and HNSW above. "
                  "HNSW over-estimates distances slightly (it can miss the true nearest neighbour), so scores only grow. "
                  "The image score is the maximum over 1,024 patches, so a single badly missed neighbour shows up in "
                  "the image-score column even when the mean error is tiny; re-checking the largest patches exactly "
                  "(core/models/knn.py ``exact_maximum``) removes that error.",
              "", "Command: `python benchmarks/bench_knn_scaling.py`."]
    write_section("knn", "## Nearest-neighbour search vs memory-bank size\n\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
