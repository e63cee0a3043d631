"""Export bundle: one zip a line PC can run with numpy, pillow and onnxruntime only.

    python -m core export --category C --model K [--version N] --out FILE.zip

Contents: ``model.onnx`` (+ PatchCore's ``bank.npy``, ``map_h.npy``, ``map_w_t.npy``), ``params.json`` (input
size, normalisation, kind), ``calibration.json`` and ``manifest.json`` of the version, ``runner.py``
(core/bundle_runner.py) and a README. Written to a temp file and renamed.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

from core import detector as det
from core.store import CALIBRATION, MANIFEST, ModelRef, ModelStore, atomic_write_bytes

RUNNER = Path(__file__).resolve().parent / "bundle_runner.py"
README = """Inspector export bundle: {label}

    pip install numpy pillow onnxruntime
    python runner.py IMAGE [IMAGE ...]      # CSV on stdout: path, score, threshold, verdict

Thresholds are in calibration.json (image_threshold: DEFECT at or above). The model's manifest is in
manifest.json (category, kind, backbone, settings, metrics, versions).
"""


def export_bundle(ref: ModelRef, out: Path) -> Path:
    """Write the bundle of model version ``ref`` to ``out`` (a .zip); returns ``out``.

    Raises:
        ModelStoreError: the version is missing or damaged.
        ValueError: the model cannot be exported (e.g. native-size or tiled input).
    """
    store = ModelStore(ref.store)
    model = det.load(ref)
    files, params = model.detector.export_parts()
    params = {**params, "category": ref.category, "version": ref.version}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for name, data in files.items():
            bundle.writestr(name, data)
        bundle.writestr("params.json", json.dumps(params, indent=2))
        # the version's own files, under the names they have in the store
        bundle.writestr(CALIBRATION, json.dumps(store.read_calibration(ref), indent=2))
        bundle.writestr(MANIFEST, json.dumps(store.read_manifest(ref), indent=2, default=float))
        bundle.writestr("runner.py", RUNNER.read_text())
        bundle.writestr("README.txt", README.format(label=ref.label))
    return atomic_write_bytes(Path(out), buffer.getvalue())
