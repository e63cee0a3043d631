"""Batch re-inspection without Ray (core/line/batch.py): sources, each image judged once per model version, a
rerun after a crash at any step continues where it stopped, the summary against the previous version."""

from __future__ import annotations

import csv
import dataclasses
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from core import files
from core.line import batch
from core.store import lifecycle
from core.store.history import History
from core.store.model_store import ModelRef, ModelStore

CATEGORY, KIND = "demo_metal", "patchcore"


class Crash(BaseException):
    """Stands for the process dying at a step (BaseException: nothing on the way may swallow it)."""


@pytest.fixture
def images(demo_root: Path) -> list[Path]:
    return sorted((demo_root / CATEGORY / "test").rglob("*.png"))


def _history(tmp_path: Path) -> History:
    return History(f"sqlite:///{tmp_path / 'batch.sqlite3'}")


def _rows_per_image(history: History, ref: ModelRef) -> Counter[str]:
    rows = history.results(category=ref.category, kind=ref.kind, version=ref.version, source=batch.SOURCE,
                           limit=None)
    return Counter(r.image_sha1 or "" for r in rows)


def test_sources_folders_globs_and_csv(demo_root: Path, images: list[Path], tmp_path: Path) -> None:
    test = demo_root / CATEGORY / "test"
    listing = tmp_path / "list.csv"
    with open(listing, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "note"])
        writer.writerow([str(images[0]), "first"])
        writer.writerow([str(images[1]), "second"])
    found = batch.expand_sources([str(test / "good"), str(test / "scratch" / "*.png"), str(listing)])
    assert found == sorted(set(found), key=found.index)  # no path twice
    assert set(found) == {*(test / "good").glob("*.png"), *(test / "scratch").glob("*.png"), images[0], images[1]}
    with pytest.raises(FileNotFoundError, match="expected images, folders, globs or a CSV of paths"):
        batch.expand_sources([str(tmp_path / "nothing_here")])


def test_each_image_once_and_a_rerun_skips(store: ModelStore, images: list[Path], tmp_path: Path) -> None:
    ref = store.current(CATEGORY, KIND)
    seen: list[batch.BatchProgress] = []
    with _history(tmp_path) as history:
        first = batch.run_batch(ref, images, batch.LocalRunner(ref), history, chunk_size=4, progress=seen.append)
        assert (first.total, first.judged, first.skipped) == (len(images), len(images), 0)
        assert seen[-1].done == len(images) and seen[-1].rate > 0 and seen[-1].remaining_s == 0
        assert set(_rows_per_image(history, ref).values()) == {1} and len(_rows_per_image(history, ref)) == len(images)
        again = batch.run_batch(ref, images, batch.LocalRunner(ref), history, chunk_size=4)
        assert (again.judged, again.skipped) == (0, len(images))
        assert set(_rows_per_image(history, ref).values()) == {1}
        # the same content under another name is the same image: judged once
        twin = tmp_path / "twin.png"
        shutil.copyfile(images[0], twin)
        third = batch.run_batch(ref, [twin], batch.LocalRunner(ref), history)
        assert (third.judged, third.skipped) == (0, 1)


def test_an_image_recorded_twice_is_one_row(store: ModelStore, images: list[Path], tmp_path: Path) -> None:
    """The database's unique key holds the content, not the time: a chunk judged twice (a retried Ray task, two
    runs at once) makes one row per image and version."""
    ref = store.current(CATEGORY, KIND)
    judged = batch.Judge(ref)([batch.Item(str(images[0]), "")])[0]
    later = dataclasses.replace(judged, time=judged.time + 60.0)
    with _history(tmp_path) as history:
        assert history.record_line_records([judged.record(ref)]) == 1
        assert history.record_line_records([later.record(ref)]) == 0
        assert len(history.results(source=batch.SOURCE, limit=None)) == 1


def test_unreadable_file_is_rejected_once(store: ModelStore, tmp_path: Path) -> None:
    ref = store.current(CATEGORY, KIND)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with _history(tmp_path) as history:
        summary = batch.run_batch(ref, [bad], batch.LocalRunner(ref), history)
        batch.run_batch(ref, [bad], batch.LocalRunner(ref), history)
        rows = history.results(source=batch.SOURCE, limit=None)
    assert summary.rejected == 1 and [r.verdict for r in rows] == ["REJECTED"]
    assert "no image decoder" in (rows[0].reason or "")


def test_summary_against_the_previous_version(store: ModelStore, images: list[Path], tmp_path: Path) -> None:
    v1 = store.current(CATEGORY, KIND)
    with _history(tmp_path) as history:
        batch.run_batch(v1, images, batch.LocalRunner(v1), history)
        model = lifecycle.load(v1)
        v2 = lifecycle.save_calibration(model, model.calibration.with_thresholds(1e-6, 1e-6, "test").with_review(
            1e-6, 1e-6), reason="everything a defect")
        summary = batch.run_batch(v2, images, batch.LocalRunner(v2), history)
        before = history.verdicts_by_hash(CATEGORY, KIND, v1.version, list(_rows_per_image(history, v1)))
    assert summary.previous_version == v1.version
    assert sum(summary.transitions.values()) == len(images)
    assert summary.transitions == Counter((verdict, "DEFECT") for verdict in before.values())
    assert f"v{v1.version} -> v{v2.version}" in summary.describe()


def _crash_points(store: ModelStore, images: list[Path], tmp_path: Path) -> list[str]:
    """Every step a whole run passes, in order (one name per boundary crossed)."""
    ref = store.current(CATEGORY, KIND)
    steps: list[str] = []
    files.STEP_HOOK = steps.append
    try:
        with History(f"sqlite:///{tmp_path / 'steps.sqlite3'}") as history:
            batch.run_batch(ref, images, batch.LocalRunner(ref), history, chunk_size=5)
    finally:
        files.STEP_HOOK = None
    return steps


def test_a_crash_at_every_step_loses_nothing_and_judges_nothing_twice(store: ModelStore, images: list[Path],
                                                                      tmp_path: Path) -> None:
    ref = store.current(CATEGORY, KIND)
    steps = _crash_points(store, images, tmp_path)
    assert any(s.startswith("batch:") for s in steps)
    runner = batch.LocalRunner(ref)  # one loaded model for every run here (a new process would load its own)
    for index, name in enumerate(steps):
        calls = [0]

        def hook(reached: str, stop: int = index) -> None:
            if calls[0] == stop:
                raise Crash(reached)
            calls[0] += 1

        with History(f"sqlite:///{tmp_path / f'crash{index}.sqlite3'}") as history:
            files.STEP_HOOK = hook
            try:
                with pytest.raises(Crash):
                    batch.run_batch(ref, images, runner, history, chunk_size=5)
            finally:
                files.STEP_HOOK = None
            kept = len(_rows_per_image(history, ref))
            rerun = batch.run_batch(ref, images, runner, history, chunk_size=5)
            rows = _rows_per_image(history, ref)
        assert set(rows.values()) == {1} and len(rows) == len(images), f"crash at step {index} ({name})"
        assert (rerun.skipped, rerun.judged) == (kept, len(images) - kept), f"crash at step {index} ({name})"


def test_cli_batch(store: ModelStore, demo_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from core.cli import main

    folder = demo_root / CATEGORY / "test"
    argv = ["batch", "--store", str(store.root), "--category", CATEGORY, "--model", KIND, str(folder)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "img/s" in err and "judged" in err
    assert main(argv) == 0
    assert "0 judged" in capsys.readouterr().err


def test_the_plain_path_never_imports_ray(store: ModelStore, images: list[Path], tmp_path: Path) -> None:
    code = ("import sys; from core.cli import main; "
            f"rc = main(['batch', '--store', {str(store.root)!r}, '--category', {CATEGORY!r}, {str(images[0])!r}]); "
            "print('RAY' if 'ray' in sys.modules else 'NO RAY', rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.stdout.split() == ["NO", "RAY", "0"], done.stderr[-2000:]
