"""Export bundle: the zip runs with numpy, pillow and onnxruntime only, and scores like the app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from core import detector as det
from core.cli import main
from core.imageio import load_image
from core.store import ModelStore

ROOT = Path(__file__).resolve().parents[1]
BLOCK_HEAVY = ("import sys\n"
               "class _Block:\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] in ('torch', 'anomalib', 'timm', 'core', 'lightning'):\n"
               "            raise ImportError(f'the bundle must not need {name}')\n"
               "sys.meta_path.insert(0, _Block())\n")


@pytest.mark.parametrize(("kind", "rtol"), [("patchcore", 1e-4), ("efficientad", 1e-4)])
def test_bundle_scores_equal_the_apps(trained_store: Path, demo_root: Path, tmp_path: Path, kind: str,
                                      rtol: float) -> None:
    store = ModelStore(trained_store)
    ref = store.current("demo_metal", kind)
    out = tmp_path / "bundle.zip"
    assert main(["export", "--store", str(trained_store), "--category", "demo_metal", "--model", kind,
                 "--out", str(out)]) == 0
    folder = tmp_path / "bundle"
    with zipfile.ZipFile(out) as bundle:
        names = set(bundle.namelist())
        bundle.extractall(folder)
    assert {"model.onnx", "params.json", "calibration.json", "manifest.json", "runner.py", "README.txt"} <= names
    params = json.loads((folder / "params.json").read_text())
    assert params["runtime"] in params["runtime_ms_at_export"]  # chosen by measuring on this machine
    assert params["runtime"] == min(params["runtime_ms_at_export"], key=params["runtime_ms_at_export"].get)
    images = sorted((demo_root / "demo_metal" / "test").rglob("*.png"))[:6]
    app = [p.score for p in det.load(ref).detector.predict([load_image(p) for p in images])]
    script = BLOCK_HEAVY + "import runner\nrunner.main(sys.argv[1:])\n"
    proc = subprocess.run([sys.executable, "-c", script, *map(str, images)], cwd=folder, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(folder)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split(",") for line in proc.stdout.strip().splitlines()[1:]]
    bundle_scores = [float(r[1]) for r in rows]
    assert np.allclose(bundle_scores, app, rtol=rtol, atol=1e-5), (bundle_scores, app)
    threshold = store.read_calibration(ref)["image_threshold"]
    assert [r[3] for r in rows] == ["DEFECT" if s >= threshold else "OK" for s in app]


def test_bundle_maps_match(trained_store: Path, demo_root: Path, tmp_path: Path) -> None:
    from core.export import export_bundle

    ref = ModelStore(trained_store).current("demo_metal", "patchcore")
    out = export_bundle(ref, tmp_path / "b.zip")
    with zipfile.ZipFile(out) as bundle:
        bundle.extractall(tmp_path / "b")
    sys.path.insert(0, str(tmp_path / "b"))
    try:
        import runner
        from PIL import Image

        path = next((demo_root / "demo_metal" / "test" / "scratch").glob("*.png"))
        _score, amap = runner.Bundle(tmp_path / "b").score(Image.open(path))
    finally:
        sys.path.remove(str(tmp_path / "b"))
        sys.modules.pop("runner", None)
    pred = det.load(ref).detector.predict([load_image(path)])[0]
    assert amap.shape == pred.anomaly_map.shape
    assert np.allclose(amap, pred.anomaly_map, rtol=1e-3, atol=1e-3 * float(np.abs(pred.anomaly_map).max()))


def test_unexportable_model_says_why(demo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "m"
    assert main(["train", "--data", str(demo_root), "--category", "demo_metal", "--store", str(store),
                 "--input-mode", "tiles", "--tile", "32", "--coreset-ratio", "0.1"]) == 0
    capsys.readouterr()
    assert main(["export", "--store", str(store), "--category", "demo_metal", "--out", str(tmp_path / "x.zip")]) == 2
    assert "expected a model with squashed input to export, found input_mode 'tiles'" in capsys.readouterr().err
    assert not (tmp_path / "x.zip").exists()
