"""Which runtime for the export bundle: ONNX Runtime (the bundle's), OpenVINO (fp32, and bf16 where the CPU has
it) and the PyTorch path, on the same exported network, batch 1, one run.

    pip install openvino   # optional: without it the OpenVINO rows are left out
    python benchmarks/bench_export.py [--store DIR] [--repeats 50]

Networks: PatchCore's feature extractor and EfficientAD's whole network, as `core.line.export` writes them, at
256x256 (demo models are trained first unless --store). Median ms of ``--repeats`` runs after 5 warm-up runs;
max relative difference of the outputs against ONNX Runtime fp32. Written to the ``export`` section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, write_section


def timed(fn, x: np.ndarray, repeats: int) -> tuple[float, np.ndarray]:
    for _ in range(5):
        out = fn(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(x)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", type=Path)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    import onnxruntime as ort
    import torch

    from core.line.export import export_bundle
    from core.store import lifecycle as det
    from core.store.model_store import ModelStore

    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        store = args.store
        if store is None:
            store = tmp / "models"
            for argv in (["demo", "--out", str(tmp / "data")],
                         ["train", "--data", str(tmp / "data"), "--category", "demo_metal", "--store", str(store)],
                         ["train", "--data", str(tmp / "data"), "--category", "demo_metal", "--store", str(store),
                          "--model", "efficientad", "--steps", "100"]):
                subprocess.run([sys.executable, "-m", "core", *argv], cwd=ROOT, check=True, capture_output=True)
        try:
            import openvino as ov

            core = ov.Core()
            caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        except ImportError:
            ov, core, caps = None, None, []
        for kind in ("patchcore", "efficientad"):
            ref = ModelStore(store).current("demo_metal", kind)
            folder = tmp / kind
            with zipfile.ZipFile(export_bundle(ref, tmp / f"{kind}.zip")) as bundle:
                bundle.extractall(folder)
            x = np.random.default_rng(0).random((1, 3, 256, 256), dtype=np.float32)
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            sess = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
            ms, ref_out = timed(lambda a: sess.run(None, {"input": a})[-1], x, args.repeats)
            rows.append((kind, "ONNX Runtime fp32", ms, 0.0))
            model = det.load(ref, "stock").detector
            torch_fn = ((lambda a: model._embedder(torch.from_numpy(a)).numpy()) if kind == "patchcore"
                        else (lambda a: model.model(torch.from_numpy(a)).anomaly_map.numpy()))
            with torch.inference_mode():
                ms, out = timed(torch_fn, x, args.repeats)
            rows.append((kind, "PyTorch fp32 (anomalib's module)", ms, _rel(out, ref_out)))
            if core is not None:
                for precision in ["f32"] + (["bf16"] if "BF16" in caps else []):
                    compiled = core.compile_model(str(folder / "model.onnx"), "CPU",
                                                  {"INFERENCE_PRECISION_HINT": precision})
                    ms, out = timed(lambda a, c=compiled: c(a)[c.outputs[-1]], x, args.repeats)
                    rows.append((kind, f"OpenVINO {ov.__version__.split('-')[0]} {precision}", ms, _rel(out, ref_out)))
            for row in rows[-4:]:
                print(row, file=sys.stderr, flush=True)
    lines = [f"Machine: {machine()}; OpenVINO CPU capabilities: {', '.join(caps) or 'not installed'}.", "",
             "| network | runtime | ms (batch 1, 256²) | max relative difference vs ONNX Runtime |", "|---|---|---|---|"]
    lines += [f"| {k} | {r} | {ms:.1f} | {d:.1e} |" for k, r, ms, d in rows]
    lines += ["", "Command: `python benchmarks/bench_export.py`."]
    write_section("export", "## Export bundle: which runtime on this CPU\n\n" + "\n".join(lines))
    return 0


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


if __name__ == "__main__":
    raise SystemExit(main())
