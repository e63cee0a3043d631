"""One verdict pipeline (issue 23, item 2): the export bundle's runner, core.verdict.inspection (the CLI, the
service, the watch folder) and the dashboard's cached path give the same verdicts and scores for every verdict
kind the product has.

Verdict kinds (core/portable.py ``Rules``): OK and DEFECT (familiar), OK or DEFECT flagged unfamiliar by the map
median, flagged by the aspect range, NO VERDICT below the minimum side, and a calibration without the guard
(familiar unknown) or without an aspect range.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from core.data.imageio import load_image
from core.scores.calibration import Calibration
from core.store import lifecycle as det
from core.store.model_store import ModelRef, ModelStore
from core.verdict.inspection import NO_VERDICT, Inspection, inspect

RTOL = 1e-4


@pytest.fixture()
def store(trained_store: Path, tmp_path: Path) -> ModelStore:
    """A copy of the trained store (the calibrations are rewritten here)."""
    return ModelStore(shutil.copytree(trained_store, tmp_path / "models"))


@pytest.fixture()
def bundle_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder on the import path for an extracted bundle, so ``import runner`` imports the bundle's runner.py
    with its own portable.py (both dropped from sys.modules afterwards)."""
    folder = tmp_path / "bundle"
    folder.mkdir()
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    for name in ("runner", "portable"):
        sys.modules.pop(name, None)


def _images(demo_root: Path) -> dict[str, np.ndarray]:
    """Regular images (two good, two scratched), another product, a tiny crop and a wide strip."""
    test = demo_root / "demo_metal" / "test"
    good = [load_image(p) for p in sorted((test / "good").glob("*.png"))[:2]]
    scratch = [load_image(p) for p in sorted((test / "scratch").glob("*.png"))[:2]]
    board = (((np.arange(64)[:, None] // 8) + (np.arange(64)[None, :] // 8)) % 2 * 255).astype(np.uint8)
    return {"good0": good[0], "good1": good[1], "scratch0": scratch[0], "scratch1": scratch[1],
            "board": np.dstack([board, 255 - board, board]),
            "tiny": scratch[0][:12, :12].copy(),  # below the minimum side (16 px for 64 px training images)
            "wide": np.tile(good[0], (1, 3, 1))[:, :160].copy()}  # 64 x 160: outside the aspect range


REGULAR = ("good0", "good1", "scratch0", "scratch1")
BAND: dict[str, float] = {}  # review band widths that put the middle two regular images in REVIEW (_calibrate)


def _calibrate(store: ModelStore, ref: ModelRef, images: dict[str, np.ndarray]) -> ModelRef:
    """A version whose threshold splits the regular images two and two and whose guard limit lies between the
    regular images' map medians and the other product's, so every verdict kind occurs."""
    model = det.load(ref)
    found = dict(zip(images, inspect(model, list(images.values())), strict=True))
    scores = sorted(float(found[n].score) for n in REGULAR)  # type: ignore[arg-type]
    typical = {n: float(found[n].typical_anomaly) for n in (*REGULAR, "board", "wide")}  # type: ignore[arg-type]
    regular_top = max(typical[n] for n in (*REGULAR, "wide"))
    assert typical["board"] > regular_top, typical  # the other product's map is unlike the training images'
    threshold = (scores[1] + scores[2]) / 2
    data = {**store.read_calibration(ref), "image_threshold": threshold,
            "familiarity_limit": (regular_top + typical["board"]) / 2,
            "review_below": 0.0, "review_above": 0.0}  # two verdicts; the band is a case of its own below
    global BAND  # noqa: PLW0603 - the band case needs these scores
    BAND = {"review_below": threshold - (scores[0] + scores[1]) / 2, "review_above": (scores[2] + scores[3]) / 2 - threshold}
    return det.save_calibration(model, Calibration.from_dict(data))


def _same(app: Inspection, bundle: object, name: str) -> list[str]:
    """What differs between the app's and the bundle's answer for one image (empty: the same)."""
    problems = []
    for field in ("verdict", "familiar", "note"):
        a, b = getattr(app, field), getattr(bundle, field)
        if field == "note":
            a, b = _words(a), _words(b)
        if a != b:
            problems.append(f"{name}.{field}: app {a!r}, bundle {b!r}")
    for field in ("score", "typical_anomaly"):
        a, b = getattr(app, field), getattr(bundle, field)
        if (a is None) != (b is None) or (a is not None and not np.isclose(a, b, rtol=RTOL, atol=1e-6)):
            problems.append(f"{name}.{field}: app {a!r}, bundle {b!r}")
    return problems


def _words(note: str) -> str:
    """A note without its numbers (3 significant figures may round apart at float-rounding distance)."""
    return re.sub(r"-?\d[\d.e+-]*", "#", note)


@pytest.mark.parametrize("kind", ["patchcore", "efficientad"])
def test_bundle_and_inspection_give_the_same_verdict_of_every_kind(store: ModelStore, demo_root: Path,
                                                                  bundle_dir: Path, kind: str) -> None:
    from core.line.export import export_bundle

    images = _images(demo_root)
    ref = _calibrate(store, store.current("demo_metal", kind), images)
    with zipfile.ZipFile(export_bundle(ref, bundle_dir.parent / "b.zip")) as archive:
        archive.extractall(bundle_dir)
    import runner as bundle_runner  # type: ignore[import-not-found]

    cases = {"with the guard": None,
             "with a review band": BAND,  # the middle two regular images in it: REVIEW
             "without the guard": {**BAND, "familiarity_limit": None},
             "without an aspect range": {"aspect_min": None, "aspect_max": None}}
    seen: set[tuple[str, bool | None, str]] = set()
    problems: list[str] = []
    for case, change in cases.items():
        if change is not None:  # the same edit in the store and in the bundle's calibration.json
            data = {**store.read_calibration(ref), **change}
            store.write_calibration(ref, data)
            (bundle_dir / "calibration.json").write_text(json.dumps(data))
        app = dict(zip(images, inspect(det.load(ref), list(images.values())), strict=True))
        bundle = bundle_runner.Bundle(bundle_dir)
        for name, image in images.items():
            found = bundle.inspect(image)
            problems += _same(app[name], found, f"{case}: {name}")
            kind_of = ("aspect" if "aspect ratio" in app[name].note else
                       "median" if "unlike the training images" in app[name].note else "")
            seen.add((app[name].verdict, app[name].familiar, kind_of))
    assert not problems, problems
    assert {("OK", True, ""), ("DEFECT", True, ""), ("REVIEW", True, ""),  # familiar verdicts
            (NO_VERDICT, None, ""),  # too small
            ("OK", None, ""), ("DEFECT", None, ""),  # no guard in the calibration
            } <= seen, seen
    assert any(v in ("OK", "DEFECT") and f is False and k == "median" for v, f, k in seen), seen
    assert any(v in ("OK", "DEFECT") and f is False and k == "aspect" for v, f, k in seen), seen
    assert app["tiny"].verdict == NO_VERDICT and "too small" in app["tiny"].note


def test_the_dashboard_judges_as_the_service_also_above_the_display_size(trained_store: Path,
                                                                          demo_root: Path) -> None:
    """The dashboard scores through its cache (maps kept at display size, at most 1600 px) and judges with the
    pipeline the service uses: the guard's statistic is the full-size map's, as the service's is."""
    from ui import cache
    from ui.inspect_view import score_image

    ref = ModelStore(trained_store).current("demo_metal", "patchcore")
    model = det.load(ref)
    image = np.kron(load_image(next((demo_root / "demo_metal" / "test" / "scratch").glob("*.png"))),
                    np.ones((27, 27, 1), np.uint8))  # 1728 px: above the display size
    cache.clear_model_caches()
    try:
        service = inspect(model, [image])[0]
        shown = score_image("fast", model, "big.png", image).inspection
    finally:
        cache.clear_model_caches()
    assert shown.verdict == service.verdict and shown.familiar == service.familiar
    assert shown.score == pytest.approx(service.score, rel=RTOL)
    assert shown.typical_anomaly == pytest.approx(service.typical_anomaly, rel=1e-6)
    assert shown.note == service.note
