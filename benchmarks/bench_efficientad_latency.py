"""EfficientAD latency and folder throughput: the product's default (``lite``) beside anomalib's TorchInferencer
on the stock PDN-S EfficientAd, and our fast path on the same PDN-S, all in one run.

    python benchmarks/bench_efficientad_latency.py

Latency does not depend on training, so each model is trained for a few steps only. Latency: uint8 image in
memory -> score + map (resized to the original size on our side), batch 1, median over 40 magnetic_tile test
images, median of 3 passes; folder: every test image read from disk and scored (ours in batches, the
inferencer one file at a time). The stock PDN-S numbers are anomalib's own model exported with ``to_torch``.
Written to the ``efficientad_latency`` section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import (
    folder_throughput,
    per_image_ms,
    stock_efficientad,
    stock_inferencer,
)
from common import DATA, machine, write_section

from core.dataset import load_category
from core.efficientad import EfficientAD, EfficientADConfig
from core.imageio import load_image


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not (DATA / "magnetic_tile").is_dir():
        print(f"skipped: no magnetic_tile under {DATA}", file=sys.stderr)
        return 0
    torch.set_num_threads(args.threads)
    data = load_category(DATA, "magnetic_tile")
    train = [load_image(s.path) for s in data.train[:60]]
    paths = [s.path for s in data.test]
    images = [load_image(p) for p in paths[::max(1, len(paths) // 40)][:40]]
    pdn = EfficientAD(EfficientADConfig(steps=5, structure="pdn_s", lr=1e-4))
    pdn.fit(train[:-10], train[-10:])
    lite = EfficientAD(EfficientADConfig(steps=5))
    lite.fit(train[:-10], train[-10:])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        stock = stock_inferencer(stock_efficientad(pdn), Path(tmp) / "pdn")
        stock_ms = per_image_ms(stock.predict, images)
        for name, model in (("ours, lite (product default)", lite), ("ours, pdn_s (stock structure)", pdn)):
            ms = per_image_ms(lambda im, m=model: m.predict([im])[0], images)
            ips, stock_ips = folder_throughput(model, stock, paths)
            rows.append((name, ms, ips, stock_ips))
    lines = [f"Machine: {machine()}. 256x256 model input; magnetic_tile test images.", "",
             "| model | ms/image (batch 1) | vs TorchInferencer PDN-S | folder images/s | TorchInferencer PDN-S folder images/s |",
             "|---|---|---|---|---|",
             f"| anomalib TorchInferencer, stock PDN-S EfficientAd | {stock_ms:.1f} | 1.00x | | |"]
    for name, ms, ips, stock_ips in rows:
        lines.append(f"| {name} | {ms:.1f} | {stock_ms / ms:.2f}x faster | {ips:.1f} | {stock_ips:.1f} |")
    lines += ["", "Command: `python benchmarks/bench_efficientad_latency.py`."]
    write_section("efficientad_latency", "## EfficientAD latency vs anomalib's TorchInferencer\n\n" + "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
