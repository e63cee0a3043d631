"""Inference latency at batch 1 and folder throughput: our fast path against anomalib's TorchInferencer, one run.

    python benchmarks/bench_inference.py            # writes the "inference" section of benchmarks/RESULTS.md

Same model on both sides: we fit our PatchCore (tf_efficientnet_lite0 blocks.2+4, 256x256, coreset 0.1% and 1%)
and train our EfficientAD (small PDN, our distilled teacher; only a few steps -- latency does not depend on
training, and the score check compares the same weights either way) on magnetic_tile's good images, then put
the very same memory bank / weights into anomalib's Lightning ``Patchcore`` / ``EfficientAd`` (pre-processing:
anomalib's default Resize (+ ImageNet Normalize for PatchCore); post-processing without normalisation, so raw
scores can be compared), export it with anomalib's ``to_torch`` and load it with ``TorchInferencer``
(``TRUST_REMOTE_CODE=1`` set only around that call).

- latency: uint8 RGB image in memory (original size) -> score + map, batch 1, 2 threads; median per image over
  the first ``--latency-images`` test images, three passes, median of the passes. Ours also resizes the map
  back to the original image size; the inferencer returns it at 256x256.
- identical scores: both paths on the same images pre-resized to 256x256 (so neither resizes): largest
  relative score difference and largest map difference relative to the map's range.
- folder throughput: every test image read from disk and scored; ours with ``detector.predict`` in batches of
  16, the inferencer with ``predict(path)`` one file at a time (the way it is used on a folder).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, machine, write_section

from core.data.dataset import load_category
from core.data.imageio import load_image, load_many
from core.models.efficientad import EfficientAD, EfficientADConfig
from core.models.patchcore import PatchCore, PatchCoreConfig


def stock_inferencer(lightning: torch.nn.Module, folder: Path):
    from anomalib.deploy import TorchInferencer

    path = lightning.to_torch(folder)
    before = os.environ.get("TRUST_REMOTE_CODE")
    os.environ["TRUST_REMOTE_CODE"] = "1"  # anomalib unpickles its own export; only here, never in the product
    try:
        return TorchInferencer(path=path, device="cpu")
    finally:
        if before is None:
            os.environ.pop("TRUST_REMOTE_CODE", None)
        else:
            os.environ["TRUST_REMOTE_CODE"] = before


def stock_patchcore(ours: PatchCore):
    from anomalib.models import Patchcore
    from anomalib.post_processing import PostProcessor

    cfg = ours.config
    lit = Patchcore(backbone=cfg.backbone, layers=list(cfg.layers), pre_trained=False,
                    coreset_sampling_ratio=cfg.coreset_ratio, num_neighbors=cfg.num_neighbors,
                    pre_processor=Patchcore.configure_pre_processor((cfg.height, cfg.width)),
                    post_processor=PostProcessor(enable_normalization=False, enable_thresholding=False),
                    evaluator=False, visualizer=False)
    lit.model.load_state_dict(ours.model.state_dict())
    lit.model.memory_bank = ours.memory_bank.clone()
    return lit.eval()


def stock_efficientad(ours: EfficientAD):
    from anomalib.models import EfficientAd
    from anomalib.post_processing import PostProcessor

    cfg = ours.config
    lit = EfficientAd(teacher_out_channels=ours.channels, model_size="small", padding=False, pad_maps=True,
                      pre_processor=EfficientAd.configure_pre_processor((cfg.height, cfg.width)),
                      post_processor=PostProcessor(enable_normalization=False, enable_thresholding=False),
                      evaluator=False, visualizer=False)
    lit.model.load_state_dict(ours.model.state_dict())
    return lit.eval()


def per_image_ms(run: Callable[[np.ndarray], object], images: list[np.ndarray], passes: int = 3) -> float:
    """Median over ``passes`` of the median per-image time (ms) of ``run`` over ``images`` (after a warm-up)."""
    for image in images[:3]:
        run(image)
    medians = []
    for _ in range(passes):
        times = []
        for image in images:
            t0 = time.perf_counter()
            run(image)
            times.append((time.perf_counter() - t0) * 1000.0)
        medians.append(statistics.median(times))
    return statistics.median(medians)


def compare(ours_run: Callable[[np.ndarray], tuple[float, np.ndarray]], stock, images: list[np.ndarray]) -> dict:
    score_err, map_err = 0.0, 0.0
    for image in images:
        square = np.asarray(Image.fromarray(image).resize((256, 256), Image.BILINEAR))
        score, amap = ours_run(square)
        out = stock.predict(square)
        ref_score = float(out.pred_score.detach().reshape(-1)[0])
        ref_map = out.anomaly_map.detach().reshape(256, 256).numpy()
        score_err = max(score_err, abs(score - ref_score) / max(abs(ref_score), 1e-12))
        map_err = max(map_err, float(np.abs(amap - ref_map).max() / max(np.ptp(ref_map), 1e-12)))
    return {"score_rel_err": score_err, "map_rel_err": map_err}


def folder_throughput(ours, stock, paths: list[Path]) -> tuple[float, float]:
    t0 = time.perf_counter()
    _, images, _ = load_many(paths)
    ours.predict(images)
    ours_ips = len(paths) / (time.perf_counter() - t0)
    t1 = time.perf_counter()
    for path in paths:
        stock.predict(path)
    return ours_ips, len(paths) / (time.perf_counter() - t1)


def measure(name: str, ours, lightning, images: list[np.ndarray], paths: list[Path], folder: Path) -> dict:
    stock = stock_inferencer(lightning, folder / name)

    def ours_one(image: np.ndarray) -> tuple[float, np.ndarray]:
        pred = ours.predict([image])[0]
        return pred.score, pred.anomaly_map

    row = {"name": name, **compare(ours_one, stock, images[:20])}
    row["stock_ms"] = per_image_ms(stock.predict, images)
    row["ours_ms"] = per_image_ms(ours_one, images)
    row["ours_ips"], row["stock_ips"] = folder_throughput(ours, stock, paths)
    print(row, file=sys.stderr, flush=True)
    return row


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f} (1 min) / {five:.1f} (5 min)"


def cpu_speed(images: list[np.ndarray], train: list[np.ndarray], folder: Path) -> list[str]:
    """Issue 25's inference rows: batch-1 latency before (ONNX Runtime, fp32 search: the fast path until then) and
    after (``runtime="auto"``, ``precision="auto"``), with the stock TorchInferencer in the same run, and the scores'
    largest relative difference from the fp32 reference path (torch runtime, fp32 search)."""
    from core.models.knn import build_index

    rows = []
    load_before = _load()
    pc = PatchCore(PatchCoreConfig(coreset_ratio=0.01, input_mode="squash", runtime="onnx"))
    report = pc.fit(train)
    after = PatchCore(PatchCoreConfig(coreset_ratio=0.01, input_mode="squash", runtime="auto"))
    after.load_state(pc.state())
    after.prepare()
    reference = PatchCore(PatchCoreConfig(coreset_ratio=0.01, input_mode="squash", runtime="torch"))
    reference.load_state(pc.state())
    pc._index = build_index(pc.memory_bank, "exact", precision="fp32")  # the path before: fp32 search
    stock = stock_inferencer(stock_patchcore(pc), folder / "pc")

    def one(model):
        return lambda image: model.predict([image])[0]

    ref_scores = [p.score for p in reference.predict(images)]
    ms = {"stock": per_image_ms(stock.predict, images), "before": per_image_ms(one(pc), images),
          "after": per_image_ms(one(after), images)}
    diff = max(abs(p.score - r) / abs(r) for p, r in zip(after.predict(images), ref_scores, strict=True))
    graph = after._graph
    runtime = ", ".join(f"{c.runtime} ({c.how})" for c in graph.choices.values()) if graph is not None else "torch"
    rows.append(f"| PatchCore latency, batch 1, 256², 1% bank ({report.memory_bank:,} entries), magnetic_tile: "
                f"<= 12 ms | {ms['before']:.1f} ms | **{ms['after']:.1f} ms** (runtime {runtime}, search "
                f"{after.search_index().precision}); TorchInferencer {ms['stock']:.1f} ms; scores within "
                f"{diff:.1e} of fp32 | `python benchmarks/bench_inference.py --cpu-speed` | {machine()} | "
                f"{load_before}, after {_load()} |")
    print(rows[-1], file=sys.stderr, flush=True)
    for width in (64, 128):
        base = EfficientAD(EfficientADConfig(steps=3, student_width=width, runtime="onnx"))
        base.fit(train[:40], train[40:60])
        fast = EfficientAD(EfficientADConfig(steps=3, student_width=width, runtime="auto"))
        fast.load_state(base.state())
        ref = EfficientAD(EfficientADConfig(steps=3, student_width=width, runtime="torch"))
        ref.load_state(base.state())
        ref_scores = [p.score for p in ref.predict(images)]
        load_before = _load()
        ms = {"before": per_image_ms(one(base), images), "after": per_image_ms(one(fast), images)}
        # relative to the scores' magnitude, as the runtime choice's AGREEMENT: the normalised scores cross zero, and
        # relative to a score near zero any fp32 rounding is large, torch's own too (bench_efficientad_agreement.py)
        diff = (max(abs(p.score - r) for p, r in zip(fast.predict(images), ref_scores, strict=True))
                / max(1e-12, *(abs(r) for r in ref_scores)))
        graph = fast._inference_graph()
        runtime = ", ".join(f"{c.runtime} ({c.how})" for c in graph.choices.values()) if graph is not None else ""
        default = " (the default at commit)" if EfficientADConfig().student_width == width else ""
        rows.append(f"| EfficientAD latency, batch 1, 256², lite, student width {width}{default}: <= 12 ms | "
                    f"{ms['before']:.1f} ms | **{ms['after']:.1f} ms** (runtime {runtime}); scores within {diff:.1e} "
                    f"of fp32 torch (relative to the largest score) | `python benchmarks/bench_inference.py "
                    f"--cpu-speed` | {machine()} | {load_before}, after {_load()} |")
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency-images", type=int, default=40)
    parser.add_argument("--efficientad-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny subset to check the script; writes nothing")
    parser.add_argument("--cpu-speed", action="store_true",
                        help="only issue 25's inference rows (RESULTS.md cpu_speed_inference)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_category(DATA, "magnetic_tile")
    train = [load_image(s.path) for s in data.train]
    paths = [s.path for s in data.test]
    if args.smoke:
        train, paths = train[:40], paths[::60]
    step = max(1, len(paths) // args.latency_images)
    images = [load_image(p) for p in paths[::step][:args.latency_images]]
    if args.cpu_speed:
        with tempfile.TemporaryDirectory() as tmp:
            rows = cpu_speed(images, train, Path(tmp))
        if not args.smoke:
            head = ["| target | before | after | command | CPU | load |", "|---|---|---|---|---|---|"]
            write_section("cpu_speed_inference", "### Inference rows\n\n" + "\n".join(head + rows))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for ratio in (0.001, 0.01):
            pc = PatchCore(PatchCoreConfig(coreset_ratio=ratio))
            report = pc.fit(train)
            rows.append({**measure(f"PatchCore, coreset {ratio:.1%} ({report.memory_bank:,} patches)", pc,
                                   stock_patchcore(pc), images, paths, Path(tmp)), "bank": report.memory_bank})
        ead = EfficientAD(EfficientADConfig(steps=args.efficientad_steps, structure="pdn_s", lr=1e-4))
        ead.fit(train[:-20], train[-20:])
        rows.append(measure("EfficientAD-S (152-ch teacher)", ead, stock_efficientad(ead), images, paths, Path(tmp)))
    if args.smoke:
        return 0
    lines = [f"Machine: {machine()}. magnetic_tile test set ({len(paths)} images of various sizes), 256x256 model input. "
             f"Latency: batch 1, median per image over {len(images)} test images, median of 3 passes. "
             "Throughput: every test image read from disk and scored.", "",
             "| model | TorchInferencer ms/image | ours ms/image | speed-up | max score difference | "
             "max map difference (of map range) | folder images/s: TorchInferencer | ours | speed-up |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['stock_ms']:.1f} | {r['ours_ms']:.1f} | {r['stock_ms'] / r['ours_ms']:.2f}x | "
                     f"{r['score_rel_err']:.1e} | {r['map_rel_err']:.1e} | {r['stock_ips']:.1f} | {r['ours_ips']:.1f} | "
                     f"{r['ours_ips'] / r['stock_ips']:.2f}x |")
    lines += ["", "Score differences are relative, on 20 test images pre-resized to 256x256 so that neither side "
                  "resizes (the two resize differently: PIL vs torchvision on float tensors).",
              "", "Command: `python benchmarks/bench_inference.py`."]
    write_section("inference", "## Inference latency vs anomalib's TorchInferencer\n\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
