"""Where EfficientAD's batch-1 latency goes (issue 25): each stage of ``EfficientAD.predict([image])`` timed alone.

    python benchmarks/bench_efficientad_profile.py [--student-width 64] [--images 20] [--weights FILE]

Default model (lite teacher, 256x256), its statistics and quantiles fitted on a few magnetic_tile goods (latency
does not depend on training; ``--weights`` loads a trained state saved as ``{"settings", "state"}``). Stages, each a
median ms per call over ``--images`` magnetic_tile test images at their original sizes (2 threads):

- pre-processing: ``to_tensor`` (PIL resize to 256x256, float, [0, 1]);
- the whole exported graph in each runtime (OpenVINO, ONNX Runtime) and in torch eager;
- its parts, each exported and compiled alone: teacher (mirror padding, trunk, pooling), student, autoencoder, and
  the map assembly (distances, channel means, upsampling to 256x256, quantile normalisation, border-less maximum);
- the Python around the graph: numpy <-> torch conversions, and ``resize_map`` of the 256x256 map back to the
  original size;
- the product call ``predict([image])`` end to end.

Prints a table (stdout) and writes nothing; run it through /tmp/quiet_bench.sh for figures worth quoting.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, machine

from core.data.dataset import load_category
from core.data.imageio import load_image
from core.models.efficientad import EfficientAD, EfficientADConfig
from core.models.preprocess import resize_map, to_tensor
from core.models.runtime import BACKENDS, available, export_onnx, median_ms


class _Part(nn.Module):
    """One stage of the eval forward pass as a module of the image batch (for export and timing)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, ...]]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return self.fn(x)


def _time_module(name: str, module: nn.Module, x: torch.Tensor, outputs: int, threads: int,
                 repeats: int) -> dict[str, float]:
    """ms per call of ``module(x)`` in torch eager and in every installed graph runtime."""
    row = {}
    with torch.inference_mode():
        row["torch"] = median_ms(lambda a: module(torch.from_numpy(a)), x.numpy(), repeats)
    model = export_onnx(module, int(x.shape[2]), int(x.shape[3]), outputs)
    for runtime in available():
        run = BACKENDS[runtime](model, threads)
        row[runtime] = median_ms(run, x.numpy(), repeats)
    print(f"{name}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in row.items()), file=sys.stderr, flush=True)
    return row


def profile(detector: EfficientAD, images: list[np.ndarray], threads: int, repeats: int) -> list[tuple[str, dict]]:
    model = detector.model
    for p in model.parameters():  # inference only: the parts below close over the weights as export constants
        p.requires_grad_(False)
    spec = detector.config.input_spec
    x = to_tensor(images[:1], spec)
    rows: list[tuple[str, dict]] = []
    rows.append(("pre-processing: to_tensor (PIL resize to 256², float)",
                 {"python": float(np.median([median_ms(lambda im: to_tensor([im], spec), im, 3, 1) for im in images]))}))
    from core.models.efficientad import _reference_forward, _ScoresAndMaps

    rows.append(("whole eval graph, anomalib's eval forward", _time_module(
        "anomalib forward", _Part(lambda a: _reference_forward(model, a)), x, 2, threads, repeats)))
    rows.append(("whole eval graph, fused (the product's graph)", _time_module("fused", _ScoresAndMaps(model), x, 2,
                                                                             threads, repeats)))
    teacher = _Part(lambda a: model._normalize_teacher(model.teacher(a)))
    rows.append(("teacher (pad, trunk, pooling, normalisation)", _time_module("teacher", teacher, x, 1, threads,
                                                                            repeats)))
    rows.append(("student", _time_module("student", _Part(model.student), x, 1, threads, repeats)))
    rows.append(("autoencoder", _time_module("ae", _Part(lambda a: model.ae(a, a.shape[-2:])), x, 1, threads, repeats)))
    with torch.inference_mode():
        t_out = teacher(x)
        s_out = model.student(x)
        a_out = model.ae(x, x.shape[-2:])
    c = model.teacher_out_channels

    q = model.quantiles
    b = model.score_border_cells * 8
    size = (int(x.shape[2]), int(x.shape[3]))

    class _Maps(nn.Module):
        """Map assembly from the three networks' outputs packed in one tensor (for export with one input):
        anomalib's (each map upsampled, then normalised with ``torch.where`` on the whole map) or the fused one of
        the graph (normalised and combined on the grid, upsampled once)."""

        def __init__(self, fused: bool) -> None:
            super().__init__()
            self.fused = fused

        def forward(self, packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            t, s, a = packed[:, :c], packed[:, c:3 * c], packed[:, 3 * c:]
            map_st = torch.mean((t - s[:, :c]) ** 2, dim=1, keepdim=True)
            map_stae = torch.mean((a - s[:, c:]) ** 2, dim=1, keepdim=True)
            is_set = model._is_set_tensor(q)
            if self.fused:
                amap = F.interpolate(0.05 / (q["qb_st"] - q["qa_st"]) * (map_st - q["qa_st"])
                                     + 0.05 / (q["qb_ae"] - q["qa_ae"]) * (map_stae - q["qa_ae"]), size=size,
                                     mode="bilinear")
            else:
                map_st = F.interpolate(map_st, size=size, mode="bilinear")
                map_stae = F.interpolate(map_stae, size=size, mode="bilinear")
                map_st = torch.where(is_set, 0.1 * (map_st - q["qa_st"]) / (q["qb_st"] - q["qa_st"]), map_st)
                map_stae = torch.where(is_set, 0.1 * (map_stae - q["qa_ae"]) / (q["qb_ae"] - q["qa_ae"]), map_stae)
                amap = 0.5 * map_st + 0.5 * map_stae
            return torch.amax(amap[..., b:amap.shape[-2] - b, b:amap.shape[-1] - b], dim=(-2, -1)), amap

    packed = torch.cat([t_out, s_out, a_out], dim=1).contiguous()
    rows.append(("map assembly, anomalib's (2 maps upsampled to 256², normalised there, max)",
                 _maps_row(_Maps(False), packed, threads, repeats)))
    rows.append(("map assembly, fused (normalised on the grid, upsampled once, max)",
                 _maps_row(_Maps(True), packed, threads, repeats)))
    graph = detector._inference_graph()
    assert graph is not None
    graph(x)
    run = graph._runner(int(x.shape[2]), int(x.shape[3]))
    rows.append(("graph runner alone (numpy in, numpy copies out)", {"python": median_ms(run, x.numpy(), repeats)}))
    rows.append(("OnnxGraph call (torch in, conversions, runner)", {"python": median_ms(graph, x, repeats)}))
    _, maps = detector.forward(x)
    rows.append(("resize_map 256² -> original size",
                 {"python": float(np.median([median_ms(lambda im: resize_map(maps[0], im.shape[:2]), im, 3, 1)
                                             for im in images]))}))
    rows.append(("predict([image]) end to end",
                 {"python": float(np.median([median_ms(lambda im: detector.predict([im]), im, 3, 1) for im in images]))}))
    return rows


def _maps_row(module: nn.Module, packed: torch.Tensor, threads: int, repeats: int) -> dict[str, float]:
    row = {}
    with torch.inference_mode():
        row["torch"] = median_ms(lambda a: module(torch.from_numpy(a)), packed.numpy(), repeats)
    frozen = module.eval()
    import io
    import warnings

    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(frozen, (packed,), buffer, dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["out0", "out1"])
    for runtime in available():
        run = BACKENDS[runtime](buffer.getvalue(), threads)
        row[runtime] = median_ms(run, packed.numpy(), repeats)
    print("maps: " + ", ".join(f"{k} {v:.2f} ms" for k, v in row.items()), file=sys.stderr, flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--student-width", type=int, default=EfficientADConfig().student_width)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--weights", default="", help="a trained state saved as {'settings', 'state'} (torch.save)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_category(DATA, "magnetic_tile")
    paths = [s.path for s in data.test]
    images = [load_image(p) for p in paths[::max(1, len(paths) // args.images)][:args.images]]
    if args.weights:
        saved = torch.load(args.weights, weights_only=False)
        detector = EfficientAD(EfficientADConfig.from_dict({**saved["settings"], "runtime": args.runtime}))
        detector.load_state(saved["state"])
    else:
        detector = EfficientAD(EfficientADConfig(student_width=args.student_width, runtime=args.runtime))
        train = [load_image(s.path) for s in data.train[:16]]
        detector.fit_teacher_statistics(train[:8])
        detector.fit_quantiles(train[8:])
    rows = profile(detector, images, args.threads, args.repeats)
    print(f"Machine: {machine()}; load {os.getloadavg()[0]:.2f}; config {json.dumps(detector.config.to_dict())}")
    names = sorted({k for _, r in rows for k in r})
    print("| stage | " + " | ".join(f"{n} ms" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for stage, r in rows:
        print(f"| {stage} | " + " | ".join(f"{r[n]:.2f}" if n in r else "" for n in names) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
