"""Export bundle: the zip runs with numpy, pillow and onnxruntime only, and scores like the app."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from core.cli import main
from core.data.imageio import load_image
from core.store import lifecycle as det
from core.store.model_store import ModelStore

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
    cal = store.read_calibration(ref)
    threshold, low, high = cal["image_threshold"], cal["image_threshold"] - cal["review_below"], \
        cal["image_threshold"] + cal["review_above"]
    assert low <= threshold <= high
    assert [r[3] for r in rows] == ["DEFECT" if s >= high else "REVIEW" if s >= low else "OK" for s in app]


def test_bundle_maps_match(trained_store: Path, demo_root: Path, tmp_path: Path) -> None:
    from core.line.export import export_bundle

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
        for name in ("runner", "portable"):
            sys.modules.pop(name, None)
    pred = det.load(ref).detector.predict([load_image(path)])[0]
    assert amap.shape == pred.anomaly_map.shape
    assert np.allclose(amap, pred.anomaly_map, rtol=1e-3, atol=1e-3 * float(np.abs(pred.anomaly_map).max()))


def test_unexportable_model_says_why(demo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "m"
    assert main(["train", "--data", str(demo_root), "--category", "demo_metal", "--store", str(store),
                 "--input-mode", "native", "--coreset-ratio", "0.1"]) == 0  # tiled models export (test_tiling.py)
    capsys.readouterr()
    assert main(["export", "--store", str(store), "--category", "demo_metal", "--out", str(tmp_path / "x.zip")]) == 2
    assert "found input_mode 'native': each image size would need a network of its own" in capsys.readouterr().err
    assert not (tmp_path / "x.zip").exists()


def _hostile_images(demo_root: Path, folder: Path) -> dict[str, Path]:
    """One file per rule the bundle must apply as the app does (all from the demo's own images)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    scratch = np.asarray(Image.open(next((demo_root / "demo_metal" / "test" / "scratch").glob("*.png"))).convert("RGB"))
    good = np.asarray(Image.open(next((demo_root / "demo_metal" / "test" / "good").glob("*.png"))).convert("RGB"))
    out = {}
    out["plain"] = folder / "plain.png"
    Image.fromarray(scratch).save(out["plain"])
    out["too_small"] = folder / "too_small.png"  # below the minimum side (16 px for 64 px training images)
    Image.fromarray(scratch[:12, :12]).save(out["too_small"])
    out["unfamiliar"] = folder / "unfamiliar.png"  # another "product": a coarse checkerboard
    board = (((np.arange(64)[:, None] // 8) + (np.arange(64)[None, :] // 8)) % 2 * 255).astype(np.uint8)
    Image.fromarray(np.dstack([board, 255 - board, board])).save(out["unfamiliar"])
    out["aspect"] = folder / "aspect.png"  # 64 x 160: far outside the square training images' aspect range
    Image.fromarray(np.tile(good, (1, 3, 1))[:, :160]).save(out["aspect"])
    out["gray16"] = folder / "gray16.tif"  # 16-bit: the app scales it to 8 bits (was 99.6% white in the bundle)
    Image.fromarray(good[:, :, 1].astype(np.uint16) * 257).save(out["gray16"])
    out["rgba"] = folder / "rgba.png"  # alpha dropped, colours kept
    alpha = np.linspace(0, 255, 64 * 64).reshape(64, 64).astype(np.uint8)
    Image.fromarray(np.dstack([scratch, alpha])).save(out["rgba"])
    out["exif"] = folder / "exif.jpg"  # stored 64 x 56, shown rotated 90 degrees (56 x 64)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(scratch[4:60]).save(out["exif"], exif=exif, quality=95)
    return out


def _shape_of_note(note: str) -> str:
    """A note with its numbers blanked (3 significant figures may round apart at float-rounding distance)."""
    return re.sub(r"-?\d[\d.e+-]*", "#", note)


@pytest.mark.parametrize("kind", ["patchcore", "efficientad"])
def test_bundle_judges_like_the_app(trained_store: Path, demo_root: Path, tmp_path: Path, kind: str) -> None:
    """Bundle parity: decoding (16-bit, RGBA, EXIF orientation) and the verdict rules (minimum size, the
    unfamiliar-image guard, the aspect range) give the app's verdicts and scores, in a process where torch and
    this package cannot be imported; an undocumented format is refused by both."""
    from core.line.export import export_bundle
    from core.verdict.inspection import NO_VERDICT, inspect

    ref = ModelStore(trained_store).current("demo_metal", kind)
    with zipfile.ZipFile(export_bundle(ref, tmp_path / "b.zip")) as bundle:
        assert "portable.py" in bundle.namelist()
        bundle.extractall(tmp_path / "b")
    images = _hostile_images(demo_root, tmp_path / "images")
    gif = tmp_path / "images" / "gif.png"
    from PIL import Image

    Image.new("RGB", (64, 64), (90, 90, 90)).save(gif, format="GIF")

    model = det.load(ref)
    app = dict(zip(images, inspect(model, [load_image(p) for p in images.values()]), strict=True))
    assert app["too_small"].verdict == NO_VERDICT
    assert app["aspect"].familiar is False and "aspect ratio" in app["aspect"].note
    if kind == "patchcore":  # the 3-step EfficientAD of the tests has no meaningful maps to judge by
        assert app["unfamiliar"].familiar is False and "unlike the training images" in app["unfamiliar"].note
    assert 100 < float(load_image(images["gray16"]).mean()) < 160  # scaled, not white

    script = BLOCK_HEAVY + "import runner\nsys.exit(runner.main(sys.argv[1:]))\n"
    proc = subprocess.run([sys.executable, "-c", script, *map(str, images.values()), str(gif)], cwd=tmp_path / "b",
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(tmp_path / "b")})
    rows = {Path(r["path"]).stem: r for r in csv.DictReader(io.StringIO(proc.stdout))}
    mismatches = {}
    for name, expected in app.items():
        want = {"verdict": expected.verdict, "familiar": {True: "yes", False: "no", None: ""}[expected.familiar],
                "note": _shape_of_note(expected.note)}
        row = rows.get(name, {})
        got = {"verdict": row.get("verdict"), "familiar": row.get("familiar"),
               "note": _shape_of_note(row.get("note") or "")}
        score = row.get("score")
        same_score = (score == "" if expected.score is None else
                      bool(score) and bool(np.isclose(float(score), expected.score, rtol=1e-4, atol=1e-5)))
        if got != want or not same_score:
            mismatches[name] = {"bundle": {**got, "score": score}, "app": {**want, "score": expected.score}}
    assert not mismatches, mismatches
    assert proc.returncode == 1, proc.stderr[-2000:]  # the GIF: named on stderr, the rest judged
    assert "gif.png: expected a PNG, JPEG, BMP or TIFF image, found GIF data" in proc.stderr
    assert "gif" not in rows


def test_bundle_maps_and_guard_statistic_match_at_any_size(trained_store: Path, demo_root: Path,
                                                           tmp_path: Path) -> None:
    """The bundle resizes maps as the app does (torch's bilinear, no antialiasing), so the guard's statistic
    (the map median) is the app's also for images smaller or larger than the model's input."""
    from core.line.export import export_bundle
    from core.verdict.inspection import inspect

    ref = ModelStore(trained_store).current("demo_metal", "efficientad")  # input 256: 64 px maps are downsized
    with zipfile.ZipFile(export_bundle(ref, tmp_path / "b.zip")) as bundle:
        bundle.extractall(tmp_path / "b")
    path = next((demo_root / "demo_metal" / "test" / "scratch").glob("*.png"))
    small, large = load_image(path), np.repeat(np.repeat(load_image(path), 5, axis=0), 5, axis=1)  # 64, 320 px
    model = det.load(ref)
    app = inspect(model, [small, large])
    sys.path.insert(0, str(tmp_path / "b"))
    try:
        import runner

        bundle = runner.Bundle(tmp_path / "b")
        found = [bundle.inspect(small), bundle.inspect(large)]
    finally:
        sys.path.remove(str(tmp_path / "b"))
        for name in ("runner", "portable"):
            sys.modules.pop(name, None)
    for a, b in zip(app, found, strict=True):
        assert a.anomaly_map is not None and b.anomaly_map is not None
        assert b.anomaly_map.shape == a.anomaly_map.shape
        scale = float(np.abs(a.anomaly_map).max())
        assert np.allclose(b.anomaly_map, a.anomaly_map, rtol=1e-4, atol=1e-4 * scale)
        assert a.typical_anomaly is not None and b.typical_anomaly is not None
        assert b.typical_anomaly == pytest.approx(a.typical_anomaly, rel=1e-4, abs=1e-4 * scale)


@pytest.mark.parametrize(("size_in", "size_out"), [((8, 8), (64, 64)), ((256, 256), (64, 64)), ((30, 17), (11, 40)),
                                                   ((5, 7), (5, 7)), ((1, 4), (3, 2))])
def test_portable_resize_is_torchs_bilinear(size_in: tuple[int, int], size_out: tuple[int, int]) -> None:
    from core.models.preprocess import resize_map as torch_resize
    from core.portable import resize_map

    amap = np.random.default_rng(0).normal(size=size_in).astype(np.float32)
    assert np.allclose(resize_map(amap, size_out), torch_resize(amap, size_out), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("kind", "field", "value"), [("patchcore", "image_threshold", 0.0),
                                                      ("patchcore", "pixel_threshold", -1.0),
                                                      ("efficientad", "image_threshold", float("nan"))])
def test_bundle_refuses_a_calibration_no_verdict_can_use(trained_store: Path, tmp_path: Path, kind: str,
                                                         field: str, value: float) -> None:
    from core.line.export import export_bundle

    ref = ModelStore(trained_store).current("demo_metal", kind)
    with zipfile.ZipFile(export_bundle(ref, tmp_path / "b.zip")) as bundle:
        bundle.extractall(tmp_path / "b")
    cal_file = tmp_path / "b" / "calibration.json"
    cal_file.write_text(json.dumps({**json.loads(cal_file.read_text()), field: value}))
    sys.path.insert(0, str(tmp_path / "b"))
    try:
        import runner

        with pytest.raises(ValueError, match=rf"calibration.json: expected a .*for {field}"):
            runner.Bundle(tmp_path / "b")
    finally:
        sys.path.remove(str(tmp_path / "b"))
        for name in ("runner", "portable"):
            sys.modules.pop(name, None)


def test_a_model_saved_before_the_review_band_exports_the_band_the_app_uses(trained_store: Path,
                                                                             tmp_path: Path) -> None:
    import shutil

    from core.line.export import export_bundle

    store_dir = tmp_path / "models"
    shutil.copytree(trained_store, store_dir)
    store = ModelStore(store_dir)
    ref = store.current("demo_metal", "patchcore")
    old = {k: v for k, v in store.read_calibration(ref).items() if k not in ("review_below", "review_above")}
    store.write_calibration(ref, old)  # as saved before the band existed
    app = det.read_calibration(ref)
    assert app.review is not None  # the app derives a band for it
    with zipfile.ZipFile(export_bundle(ref, tmp_path / "b.zip")) as bundle:
        exported = json.loads(bundle.read("calibration.json"))
    assert (exported["review_below"], exported["review_above"]) == pytest.approx((app.review_below, app.review_above))
