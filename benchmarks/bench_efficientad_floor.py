"""How fast can EfficientAD-S run on this CPU in fp32? Its multiply-adds against the machine's measured GEMM peak.

    python benchmarks/bench_efficientad_floor.py     # about a minute; writes the "efficientad_floor" section

Counts the multiply-adds of every convolution in one 256x256 eval forward pass (teacher, student, autoencoder;
the rest -- ReLU, pooling, the map arithmetic -- is a fraction of a percent), measures this machine's fp32 matrix
product peak (2,048 x 2,048 x 2,048, the threads used for inference), and times at batch 1:

- anomalib's torch model in eval mode as anomalib's TorchInferencer calls it (no ``no_grad``),
- the same in ``torch.inference_mode``,
- ours: the eval forward pass exported to ONNX Runtime (core.models.efficientad, runtime="onnx").

The floor is multiply-adds x 2 / GEMM peak: no fp32 implementation that does every multiply-add can be faster.
Weights do not matter for timing (an untrained student with our distilled teacher).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_section

from core.models.efficientad import EfficientAD, EfficientADConfig

GEMM = 2048


def conv_macs(model: torch.nn.Module, batch: torch.Tensor) -> dict[str, float]:
    """Multiply-adds of each convolution (by module name) in one forward pass of ``batch: [1, 3, H, W]``."""
    macs: dict[str, float] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            def hook(mod: torch.nn.Module, _inp: object, out: torch.Tensor, name: str = name) -> None:
                k = mod.kernel_size[0] * mod.kernel_size[1]
                macs[name] = macs.get(name, 0.0) + out.numel() * mod.in_channels * k / mod.groups
            hooks.append(module.register_forward_hook(hook))
    with torch.inference_mode():
        model(batch)
    for h in hooks:
        h.remove()
    return macs


def interleaved_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Wall times (ms) of each function, timed in turns (one call each per round) so that all of them see the
    same machine: on a shared 2-core VM the speed drifts by 20% or more within minutes."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1000)
    return times


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours = EfficientAD(EfficientADConfig())
    net = ours.model.eval()
    batch = torch.rand(1, 3, 256, 256)
    macs = conv_macs(net, batch)
    gflop = 2 * sum(macs.values()) / 1e9
    by_net = {part: 2 * sum(v for k, v in macs.items() if k.startswith(part)) / 1e9 for part in ("teacher", "student", "ae")}
    a, b = torch.randn(GEMM, GEMM), torch.randn(GEMM, GEMM)
    a16, b16 = a.bfloat16(), b.bfloat16()

    def inference_mode() -> None:
        with torch.inference_mode():
            net(batch)

    times = interleaved_ms({"gemm": lambda: a @ b, "gemm_bf16": lambda: a16 @ b16, "stock": lambda: net(batch),
                            "torch": inference_mode, "onnx": lambda: ours.forward(batch)}, args.repeats)
    ms = {name: statistics.median(t) for name, t in times.items()}
    gemm_gflops = [2 * GEMM ** 3 / (t / 1000) / 1e9 for t in times["gemm"]]
    peak = 2 * GEMM ** 3 / (ms["gemm"] / 1000) / 1e9
    bf16_peak = 2 * GEMM ** 3 / (ms["gemm_bf16"] / 1000) / 1e9
    stock_ms, torch_ms, onnx_ms = ms["stock"], ms["torch"], ms["onnx"]
    floor_ms = gflop / peak * 1000
    rows = [("anomalib torch model, eval mode (as TorchInferencer runs it)", stock_ms),
            ("anomalib torch model, torch.inference_mode", torch_ms),
            ("ours: ONNX Runtime (the default)", onnx_ms),
            ("fp32 floor: every multiply-add at the GEMM peak", floor_ms)]
    lines = [f"Machine: {machine()}. One 256x256 image, batch 1, {args.threads} threads; the GEMM and the three forward passes timed in turns, median of {args.repeats} rounds.", "",
             f"Convolutions per image: {gflop:.1f} GFLOP (teacher {by_net['teacher']:.1f}, student {by_net['student']:.1f}, "
             f"autoencoder {by_net['ae']:.1f}). Measured fp32 GEMM peak (2,048³ matrix product): {peak:.0f} GFLOP/s "
             f"(median; {min(gemm_gflops):.0f}-{max(gemm_gflops):.0f} over the rounds); the same product in bf16: "
             f"{bf16_peak:.0f} GFLOP/s.", "",
             "| forward pass (model only, no pre-/post-processing) | ms | GFLOP/s | share of GEMM peak |", "|---|---|---|---|"]
    for name, ms in rows:
        lines.append(f"| {name} | {ms:.0f} | {gflop / ms * 1000:.0f} | {gflop / ms * 1000 / peak:.0%} |")
    lines += ["", f"Half of the stock forward pass alone is {stock_ms / 2:.0f} ms; the fp32 floor is {floor_ms:.0f} ms, so "
                  f"a 2x speed-up with fp32 scores {'is not possible' if stock_ms / 2 < floor_ms else 'is possible'} "
                  "on this machine without doing fewer multiply-adds (Winograd/FFT convolutions) or using lower precision.",
              "", "Command: `python benchmarks/bench_efficientad_floor.py`."]
    write_section("efficientad_floor", "## EfficientAD-S: fp32 floor on this CPU\n\n" + "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
