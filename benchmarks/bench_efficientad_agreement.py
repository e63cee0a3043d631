"""Why EfficientAD's graph-runtime scores differ from fp32 torch by more than 1e-4 relative (issue 25).

    python benchmarks/bench_efficientad_agreement.py [--steps 3] [--images 40]

The model of ``bench_inference.py --cpu-speed`` (default settings, ``--steps`` training steps on 40 magnetic_tile
goods, quantiles from 20 more), scored on ``--images`` test images (pre-processed once, so every path sees the same
input) by: torch fp32 with anomalib's eval forward (the reference path), torch fp64 (the same weights in double: the
exact answer to within 1e-12), torch fp32 with the fused forward of the graph, and each graph runtime (fp32). For each
path: the largest score difference relative to the score (the figure bench_inference reports), relative to the
score's *unnormalised* size (the normalisation subtracts ``0.1 qa / (qb - qa)`` from both maps, so a score near
zero is a small difference of large numbers), and in units of the spread (standard deviation) of the scores. Prints
the rows; writes nothing.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, machine

from core.data.dataset import load_category
from core.data.imageio import load_image
from core.models.efficientad import EfficientAD, EfficientADConfig, _reference_forward, _ScoresAndMaps
from core.models.preprocess import to_tensor
from core.models.runtime import BACKENDS, available, export_onnx


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--weights", default="", help="a trained state saved as {'settings', 'state'} (torch.save)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = load_category(DATA, "magnetic_tile")
    train = [load_image(s.path) for s in data.train[:60]]
    paths = [s.path for s in data.test]
    images = [load_image(p) for p in paths[::max(1, len(paths) // args.images)][:args.images]]
    if args.weights:
        saved = torch.load(args.weights, weights_only=False)
        detector = EfficientAD(EfficientADConfig.from_dict({**saved["settings"], "runtime": "torch"}))
        detector.load_state(saved["state"])
    else:
        detector = EfficientAD(EfficientADConfig(steps=args.steps, runtime="torch", precision="fp32"))
        detector.fit(train[:40], train[40:60])
    model = detector.model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.cat([to_tensor([im], detector.config.input_spec) for im in images])
    q = {k: float(v) for k, v in model.quantiles.items()}
    offset = 0.05 * q["qa_st"] / (q["qb_st"] - q["qa_st"]) + 0.05 * q["qa_ae"] / (q["qb_ae"] - q["qa_ae"])
    with torch.inference_mode():
        ref = torch.cat([_reference_forward(model, x[i:i + 1])[0].reshape(-1) for i in range(len(x))]).double()
        m64 = copy.deepcopy(model).double()
        exact = torch.cat([_reference_forward(m64, x[i:i + 1].double())[0].reshape(-1) for i in range(len(x))])
        paths_out = {"torch fp32, anomalib forward (reference)": ref,
                     "torch fp32, fused forward": torch.cat(
                         [_ScoresAndMaps(model)(x[i:i + 1])[0].reshape(-1) for i in range(len(x))]).double()}
    model_bytes = export_onnx(_ScoresAndMaps(model), x.shape[2], x.shape[3], 2)
    for runtime in available():
        run = BACKENDS[runtime](model_bytes, 2)
        paths_out[f"{runtime} fp32, fused graph"] = torch.tensor(
            [float(run(x[i:i + 1].numpy())[0].reshape(-1)[0]) for i in range(len(x))], dtype=torch.float64)
    spread = float(exact.std())
    print(f"Machine: {machine()}. {len(x)} magnetic_tile test images, model trained {args.steps} steps"
          f"{' (' + args.weights + ')' if args.weights else ''}. Quantiles {q}; normalisation offset "
          f"{offset:.3f}; scores: min {float(exact.min()):.4f}, median {float(exact.median()):.4f}, max "
          f"{float(exact.max()):.4f}, std {spread:.4f}.")
    print("| path | vs fp32 torch: max |d|/|score| | vs fp64: max |d|/|score| | vs fp64: max |d|/(|score| + offset) "
          "| vs fp64: max |d| / score std |")
    print("|---|---|---|---|---|")
    for name, s in paths_out.items():
        d_ref, d_exact = (s - ref).abs(), (s - exact).abs()
        print(f"| {name} | {float((d_ref / ref.abs()).max()):.1e} | {float((d_exact / exact.abs()).max()):.1e} | "
              f"{float((d_exact / (exact.abs() + offset)).max()):.1e} | {float(d_exact.max()) / spread:.1e} |")
    worst = int(np.argmax((paths_out[next(iter(paths_out))] - exact).abs().numpy() / exact.abs().numpy()))
    print(f"smallest |score|: {float(exact.abs().min()):.4f}; image with the worst fp32 error: score "
          f"{float(exact[worst]):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
