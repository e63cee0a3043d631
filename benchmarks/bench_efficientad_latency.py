"""EfficientAD latency and folder throughput: the product's default (``lite``) beside anomalib's TorchInferencer
on the stock PDN-S EfficientAd, and our fast path on the same PDN-S, all in one run per category.

    python benchmarks/bench_efficientad_latency.py [--categories magnetic_tile,juice_bottle_loco]

Latency does not depend on training, so each model is trained for a few steps only. Latency: uint8 image in
memory -> score + map (resized to the original size on our side), batch 1, median over 40 of the category's test
images, median of 3 passes; folder: every test image read from disk and scored (ours in batches, the inferencer
one file at a time), so image size and decoding count there. The stock PDN-S numbers are anomalib's own model
exported with ``to_torch``. Rows are kept per category in benchmarks/results/latency_efficientad_<category>.json
(committed) and written to the ``efficientad_latency`` section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
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

from core.data.dataset import load_category
from core.data.imageio import load_image
from core.files import atomic_write_json
from core.models.efficientad import EfficientAD, EfficientADConfig

ROWS = Path(__file__).resolve().parent / "results"
STOCK = "anomalib TorchInferencer, stock PDN-S EfficientAd"


def rows_path(category: str) -> Path:
    return ROWS / f"latency_efficientad_{category}.json"


def measure_category(category: str) -> dict:
    """One category's rows: the stock inferencer's latency, then ours (lite, pdn_s) with folder throughput."""
    data = load_category(DATA, category)
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
        rows.append({"model": STOCK, "ms": per_image_ms(stock.predict, images)})
        for name, model in (("ours, lite (product default)", lite), ("ours, pdn_s (stock structure)", pdn)):
            ms = per_image_ms(lambda im, m=model: m.predict([im])[0], images)
            ips, stock_ips = folder_throughput(model, stock, paths)
            rows.append({"model": name, "ms": ms, "ips": ips, "stock_ips": stock_ips})
            print(category, rows[-1], file=sys.stderr, flush=True)
    return {"category": category, "machine": machine(), "num_test": len(paths),
            "image_size": f"{images[0].shape[1]}x{images[0].shape[0]}", "rows": rows}


def write_table() -> None:
    lines = ["256x256 model input. Latency: batch 1, median per image over 40 test images, median of 3 passes. "
             "Folder: every test image of the category read from disk and scored (decoding included).", "",
             "| category | model | ms/image (batch 1) | vs TorchInferencer PDN-S | folder images/s | "
             "TorchInferencer PDN-S folder images/s | machine |",
             "|---|---|---|---|---|---|---|"]
    for path in sorted(ROWS.glob("latency_efficientad_*.json")):
        saved = json.loads(path.read_text())
        stock_ms = next(r["ms"] for r in saved["rows"] if r["model"] == STOCK)
        for r in saved["rows"]:
            ratio = "1.00x" if r["model"] == STOCK else f"{stock_ms / r['ms']:.2f}x faster"
            folder = f"{r['ips']:.1f} | {r['stock_ips']:.1f}" if "ips" in r else " | "
            lines.append(f"| {saved['category']} ({saved['num_test']} test images, e.g. {saved['image_size']}) | "
                         f"{r['model']} | {r['ms']:.1f} | {ratio} | {folder} | {saved['machine']} |")
    lines += ["", "Command: `python benchmarks/bench_efficientad_latency.py --categories C1,C2`."]
    write_section("efficientad_latency", "## EfficientAD latency vs anomalib's TorchInferencer\n\n" + "\n".join(lines))
    print("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--categories", default="magnetic_tile,juice_bottle_loco")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for category in args.categories.split(","):
        if not (DATA / category).is_dir():
            print(f"skipped: no {category} under {DATA}", file=sys.stderr)
            continue
        atomic_write_json(rows_path(category), measure_category(category))
    write_table()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
