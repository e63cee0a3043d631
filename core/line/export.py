"""Export bundle: one zip a line PC can run with numpy, pillow and onnxruntime only.

    python -m core export --category C --model K [--version N] --out FILE.zip

Contents: ``model.onnx`` (+ PatchCore's ``bank.npy``, ``map_h.npy``, ``map_w_t.npy``), ``params.json`` (input
size, normalisation, kind, whether its scores are 0 or more), ``calibration.json`` and ``manifest.json`` of the
version, ``runner.py`` (core/line/bundle_runner.py), ``portable.py`` (core/portable.py: the app's decoding and verdict
rules, so the bundle decodes and judges exactly as the app does) and a README. Written to a temp file and
renamed.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from core.files import atomic_write_bytes
from core.models.registry import spec
from core.store import lifecycle as det
from core.store.model_store import CALIBRATION, MANIFEST, ModelRef, ModelStore

RUNNER = Path(__file__).resolve().parent / "bundle_runner.py"
PORTABLE = Path(__file__).resolve().parents[1] / "portable.py"  # imported by the runner as ``portable``
README = """Inspector export bundle: {label}

    pip install numpy pillow onnxruntime
    python runner.py IMAGE [IMAGE ...]      # CSV on stdout: path, score, threshold, verdict, familiar, note

Images are decoded and judged exactly as the app does (portable.py is the app's own module): PNG, JPEG, BMP and
TIFF only; an image below the model's minimum side gets NO VERDICT (no score); DEFECT at or above the image
threshold, else OK; an image unlike the training images (map median above the guard's limit, or an aspect ratio
outside the training range) keeps its verdict with familiar = no and the reason in the note.

Thresholds, the guard's limit, the aspect range and the minimum side are in calibration.json. The model's
manifest is in manifest.json (category, kind, backbone, settings, metrics, versions).
"""


def export_bundle(ref: ModelRef, out: Path) -> Path:
    """Write the bundle of model version ``ref`` to ``out`` (a .zip); returns ``out``.

    Raises:
        ModelStoreError: the version is missing or damaged.
        ValueError: the model cannot be exported (native-size input: one network per image size).
    """
    from core.models.runtime import cpu_name

    store = ModelStore(ref.store)
    model = det.load(ref)
    files, params = model.detector.export_parts()
    ir = openvino_ir(files["model.onnx"])
    timing = time_runtimes(files["model.onnx"], ir, int(params["height"]), int(params["width"]))
    if ir is not None:
        files = {**files, "model.xml": ir[0], "model.bin": ir[1]}
    runtime = min(timing, key=timing.__getitem__)
    params = {**params, "category": ref.category, "version": ref.version, "runtime": runtime,
              "positive_scores": spec(ref.kind).positive_scores,
              "runtime_ms_at_export": timing, "machine": cpu_name()}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for name, data in files.items():
            bundle.writestr(name, data)
        bundle.writestr("params.json", json.dumps(params, indent=2))
        # the version's own files, under the names they have in the store
        # the calibration as the app reads it (a file saved before the review band gets the band the app
        # derives for it, so the bundle judges as the app does)
        bundle.writestr(CALIBRATION, json.dumps(det.read_calibration(ref).to_dict(), indent=2, default=float))
        bundle.writestr(MANIFEST, json.dumps(store.read_manifest(ref), indent=2, default=float))
        bundle.writestr("runner.py", RUNNER.read_text())
        bundle.writestr("portable.py", PORTABLE.read_text())
        bundle.writestr("README.txt", README.format(label=ref.label))
    return atomic_write_bytes(Path(out), buffer.getvalue())


def openvino_ir(onnx: bytes) -> tuple[bytes, bytes] | None:
    """The network as OpenVINO IR (xml, bin), or None when OpenVINO is not installed (it is optional)."""
    try:
        import openvino as ov
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as tmp:  # read_model, not convert_model: no telemetry sent (runtime.py)
        ov.save_model(ov.Core().read_model(onnx), str(Path(tmp) / "model.xml"), compress_to_fp16=False)
        return (Path(tmp) / "model.xml").read_bytes(), (Path(tmp) / "model.bin").read_bytes()


def time_runtimes(onnx: bytes, ir: tuple[bytes, bytes] | None, height: int, width: int,
                  repeats: int = 10) -> dict[str, float]:
    """Median ms per batch-1 run of each available runtime on THIS machine, fp32 (the bundle uses the fastest;
    bf16 is left out: 0.7-3.7% off on the networks measured in benchmarks/bench_export.py). Timed by
    :func:`core.models.runtime.time_runtimes`, the app's own runtime choice."""
    from core.models import runtime

    runs: dict[str, runtime.Runner] = {"onnxruntime": _ort_runner(onnx)}
    if ir is not None:
        import openvino as ov

        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "model.xml").write_bytes(ir[0])
            (Path(tmp) / "model.bin").write_bytes(ir[1])
            compiled = ov.Core().compile_model(str(Path(tmp) / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        outputs = list(compiled.outputs)
        runs["openvino"] = lambda a: _all_outputs(compiled(a), outputs)  # one run per call, every output
    return runtime.time_runtimes(onnx, height, width, repeats, runners=runs)


def _all_outputs(result: Any, outputs: list[Any]) -> list[np.ndarray]:
    """Every output of one OpenVINO run (``result``), in the network's order."""
    return [np.asarray(result[out]) for out in outputs]


def _ort_runner(onnx: bytes) -> Callable[[np.ndarray], list[np.ndarray]]:
    """ONNX Runtime as the bundle's runner uses it (its default threads)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
    return lambda a: [np.asarray(out) for out in session.run(None, {"input": a})]
