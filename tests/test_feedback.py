"""The feedback loop in core: Mark as OK (PatchCore learns the image as a new version), Mark as defect, undo,
and refusals that change nothing."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.data.imageio import load_image
from core.store import lifecycle as det
from core.store.model_store import LOG_ENTRY, ModelStore, ModelStoreError, StaleParentError
from core.verdict import feedback
from tests.conftest import rgb


@pytest.fixture()
def setup(trained_store: Path, demo_root: Path, tmp_path: Path) -> tuple[ModelStore, Path]:
    shutil.copytree(trained_store, tmp_path / "models")
    shutil.copytree(demo_root, tmp_path / "data")
    return ModelStore(tmp_path / "models"), tmp_path / "data"


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_mark_ok_adds_the_image_to_the_bank_as_a_new_version(setup: tuple[ModelStore, Path]) -> None:
    store, data = setup
    model = det.load(store.current("demo_metal", "patchcore"))
    image = load_image(data / "demo_metal" / "test" / "good" / "001.png")
    other = load_image(data / "demo_metal" / "test" / "good" / "000.png")
    result = feedback.mark_ok(model, image, "001.png")
    assert (result.before.version, result.after.version) == (1, 2)
    assert store.current("demo_metal", "patchcore") == result.after
    assert result.score_after < 0.5 * result.score_before  # its own patches are in the bank now
    new = det.load(result.after)
    assert new.detector.memory_bank.shape[0] == model.detector.memory_bank.shape[0] + 64  # 8x8 patches at 64 px
    assert new.calibration == model.calibration  # thresholds kept
    # other images can only score lower or equal (a larger bank)
    assert new.detector.predict([other])[0].score <= model.detector.predict([other])[0].score + 1e-4
    manifest = store.read_manifest(result.after)
    assert manifest["reason"] == "feedback: 001.png marked OK" and manifest["parent"] == 1
    log = store.read_feedback("demo_metal", "patchcore")
    assert log[0]["action"] == "mark_ok" and log[0]["sha1"] == feedback.image_sha1(image)
    assert "undone" in feedback.undo(store, "demo_metal", "patchcore")
    assert store.current("demo_metal", "patchcore").version == 1
    with pytest.raises(feedback.FeedbackError, match="nothing to undo"):
        feedback.undo(store, "demo_metal", "patchcore")


@pytest.mark.parametrize(
    ("kind", "image", "message"),
    [
        ("efficientad", rgb(64, 64), "EfficientAD cannot learn from a single marked image yet"),
        ("patchcore", rgb(8, 8), "too small for a verdict"),
        ("patchcore", rgb(64, 400), "does not look like this product's images"),
    ],
)
def test_refused_marks_change_nothing(setup: tuple[ModelStore, Path], kind: str, image: np.ndarray,
                                      message: str) -> None:
    store, _ = setup
    before = _files(store.root)
    with pytest.raises(feedback.FeedbackError, match=message):
        feedback.mark_ok(det.load(store.current("demo_metal", kind)), image, "x.png")
    assert _files(store.root) == before


def test_damaged_log_stops_feedback_and_loses_nothing(setup: tuple[ModelStore, Path]) -> None:
    store, data = setup
    model = det.load(store.current("demo_metal", "patchcore"))
    log = store.kind_folder("demo_metal", "patchcore") / "feedback.jsonl"
    log.write_text('{"action": "mark_ok"}\n[truncated\n')
    before = _files(store.root)
    image = load_image(data / "demo_metal" / "test" / "good" / "000.png")
    with pytest.raises(ModelStoreError, match="line 2: expected one JSON object per line"):
        feedback.mark_ok(model, image, "000.png")
    with pytest.raises(ModelStoreError, match="line 2"):
        feedback.mark_defect(model, image, "000.png", data, "crack")
    with pytest.raises(ModelStoreError, match="line 2"):
        feedback.undo(store, "demo_metal", "patchcore")
    assert _files(store.root) == before
    assert not (data / "demo_metal" / "test" / "crack").exists()


@pytest.mark.parametrize("defect", ["good", "../escape", ".hidden", ""])
def test_defect_names_that_are_not_plain_folders_are_refused(setup: tuple[ModelStore, Path], defect: str) -> None:
    store, data = setup
    model = det.load(store.current("demo_metal", "patchcore"))
    with pytest.raises(feedback.FeedbackError, match="defect name|found 'good'"):
        feedback.mark_defect(model, rgb(64, 64), "x.png", data, defect)


def test_the_same_image_marked_twice_stays_until_both_marks_are_undone(setup: tuple[ModelStore, Path]) -> None:
    store, data = setup
    model = det.load(store.current("demo_metal", "patchcore"))
    first = feedback.mark_defect(model, rgb(64, 64, seed=4), "a.png", data, "crack")
    second = feedback.mark_defect(model, rgb(64, 64, seed=4), "a.png", data, "crack")
    assert first.filed_as == second.filed_as and first.filed_as.is_file()
    feedback.undo(store, "demo_metal", "patchcore")
    assert first.filed_as.is_file()
    feedback.undo(store, "demo_metal", "patchcore")
    assert not first.filed_as.exists()


# -- Mark as OK far above the threshold needs a deliberate confirmation ------------------------------------------

@pytest.mark.parametrize(
    ("score", "threshold", "median_defect", "needed"),
    [
        (63.5, 28.8, None, True),     # the reported case: 2.2x the threshold
        (43.2, 28.8, None, True),     # exactly 1.5x
        (40.0, 28.8, None, False),    # 1.39x, no evaluation
        (40.0, 28.8, 35.0, True),     # above the evaluation's median defect score
        (30.0, 28.8, 35.0, False),    # above the threshold, below the median defect score
        (20.0, 28.8, 10.0, False),    # below the threshold: the model already calls it OK
    ],
)
def test_the_far_above_rule(score: float, threshold: float, median_defect: float | None, needed: bool) -> None:
    far = feedback.far_above(score, threshold, median_defect)
    assert (far is not None) == needed
    if far is not None:
        assert far.ratio == pytest.approx(score / threshold)


def _far_defect(store: ModelStore, data: Path) -> tuple[det.LoadedModel, np.ndarray, float]:
    """The current PatchCore model and the familiar test defect image it scores highest (far above its
    threshold; an unfamiliar one would be refused for that reason first)."""
    from core.verdict.inspection import inspect

    model = det.load(store.current("demo_metal", "patchcore"))
    paths = sorted(p for p in (data / "demo_metal" / "test").rglob("*.png") if p.parent.name != "good")
    images = [load_image(p) for p in paths]
    judged = inspect(model, images)
    familiar = [i for i, j in enumerate(judged) if j.familiar is not False and j.score is not None]
    best = max(familiar, key=lambda i: float(judged[i].score))  # type: ignore[arg-type]
    return model, images[best], float(judged[best].score)  # type: ignore[arg-type]


def test_mark_ok_far_above_the_threshold_is_refused_without_confirmation(setup: tuple[ModelStore, Path]) -> None:
    store, data = setup
    model, image, score = _far_defect(store, data)
    median = feedback.median_defect_score(model.ref)
    assert median is not None and score > median  # the saved evaluation's median defect score is used
    before = _files(store.root)
    with pytest.raises(feedback.NeedsConfirmation) as caught:
        feedback.mark_ok(model, image, "scratch.png")
    message = str(caught.value)
    threshold = model.calibration.image_threshold
    assert f"{score:.4g}" in message and f"{threshold:.4g}" in message and f"{score / threshold:.2f}x" in message
    assert caught.value.far.score == pytest.approx(score, rel=1e-5)
    assert _files(store.root) == before  # nothing taught, nothing logged
    result = feedback.mark_ok(model, image, "scratch.png", confirm_far_above=True)
    assert result.after.version == 2 and result.score_after < result.score_before


def test_cli_feedback_needs_force_far_above_the_threshold(setup: tuple[ModelStore, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    from core.cli import main

    store, data = setup
    _, image, _ = _far_defect(store, data)
    path = tmp_path / "far.png"
    Image.fromarray(image).save(path)
    base = ["feedback", "--store", str(store.root), "--category", "demo_metal", "--model", "patchcore"]
    assert main([*base, str(path)]) == 1
    err = capsys.readouterr().err
    assert "--force" in err and "threshold" in err
    assert store.current("demo_metal", "patchcore").version == 1
    assert main([*base, "--force", str(path)]) == 0
    assert "marked OK" in capsys.readouterr().out
    assert store.current("demo_metal", "patchcore").version == 2


# -- two Mark as OK started from the same version: the second builds on the first --------------------------------

def _good(data: Path, name: str) -> np.ndarray:
    return load_image(data / "demo_metal" / "test" / "good" / name)


def test_create_version_refuses_a_parent_that_is_no_longer_current(setup: tuple[ModelStore, Path]) -> None:
    store, _ = setup
    v1 = store.current("demo_metal", "patchcore")
    manifest, calibration = store.read_manifest(v1), store.read_calibration(v1)
    v2 = store.create_version("demo_metal", "patchcore", manifest, calibration, "a", parent=v1,
                              require_parent_current=True)
    before = _files(store.root)
    with pytest.raises(StaleParentError, match="v1 .*no longer current.* v2") as caught:
        store.create_version("demo_metal", "patchcore", manifest, calibration, "b", parent=v1,
                             require_parent_current=True)
    assert caught.value.current == v2
    assert _files(store.root) == before and store.current("demo_metal", "patchcore") == v2
    assert not [p for p in store.kind_folder("demo_metal", "patchcore").iterdir() if p.name.startswith(".tmp-")]


def test_two_marks_from_the_same_version_keep_both_images(setup: tuple[ModelStore, Path]) -> None:
    store, data = setup
    v1 = store.current("demo_metal", "patchcore")
    first, second = det.load(v1), det.load(v1)  # two tabs that both show v1
    bank = first.detector.memory_bank.shape[0]
    a = feedback.mark_ok(first, _good(data, "000.png"), "000.png")
    b = feedback.mark_ok(second, _good(data, "001.png"), "001.png")
    assert (a.before.version, a.after.version) == (1, 2)
    assert (b.before.version, b.after.version) == (2, 3) and "built on v2" in b.message
    final = det.load(store.current("demo_metal", "patchcore"))
    assert final.version == 3 and final.detector.memory_bank.shape[0] == bank + 128
    marked = store.read_manifest(final.ref)["feedback"]["marked_ok"]
    assert [m["image"] for m in marked] == ["000.png", "001.png"]
    log = store.read_feedback("demo_metal", "patchcore")
    assert [(e["version_before"], e["version_after"]) for e in log] == [(1, 2), (2, 3)]
    feedback.undo(store, "demo_metal", "patchcore")  # undo takes back only the second image
    assert store.current("demo_metal", "patchcore").version == 2


_MARK_IN_A_PROCESS = """
import sys, time
from pathlib import Path
from core.store import lifecycle as det
from core.verdict import feedback
from core.data.imageio import load_image
from core.store.model_store import ModelStore
store, image, barrier, me = ModelStore(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
model = det.load(store.ref("demo_metal", "patchcore", 1))
(barrier / me).touch()
deadline = time.monotonic() + 120
while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:  # both have loaded v1
    time.sleep(0.01)
print(feedback.mark_ok(model, load_image(image), image.name).message)
"""


def test_two_processes_marking_from_the_same_version_keep_both_images(setup: tuple[ModelStore, Path],
                                                                      tmp_path: Path) -> None:
    store, data = setup
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    root = Path(__file__).resolve().parents[1]
    names = ("000.png", "001.png")
    procs = [subprocess.Popen([sys.executable, "-c", _MARK_IN_A_PROCESS, str(store.root),
                               str(data / "demo_metal" / "test" / "good" / name), str(barrier), name],
                              cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in names]
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-2000:]
        assert "marked OK" in out
    final = store.current("demo_metal", "patchcore")
    assert final.version == 3
    marked = store.read_manifest(final)["feedback"]["marked_ok"]
    assert sorted(m["image"] for m in marked) == sorted(names)
    bank = det.load(store.ref("demo_metal", "patchcore", 1)).detector.memory_bank.shape[0]
    assert det.load(final).detector.memory_bank.shape[0] == bank + 128
    log = store.read_feedback("demo_metal", "patchcore")
    assert sorted((e["version_before"], e["version_after"]) for e in log) == [(1, 2), (2, 3)]


# -- crash recovery (issue 22 row 9): "new version + feedback log line" survives a kill at any step -----------

_CRASHER = """
import os, sys
from core import files
from core.store import model_store as S
target, names = int(sys.argv[2]), []
def hook(name):
    names.append(name)
    if len(names) == target:
        os._exit(70)
files.STEP_HOOK = hook
st = S.ModelStore(sys.argv[1])
v1 = st.ref("cat", "patchcore", 1)
entry = {"time": files.now_iso(), "action": "mark_ok", "image": "a.png", "sha1": "0" * 40, "version_before": 1,
         "score_before": 3.0, "score_after": 1.0}
st.create_version("cat", "patchcore", st.read_manifest(v1), st.read_calibration(v1), "feedback: a.png marked OK",
                  parent=v1, require_parent_current=True, feedback=entry)
print("\\n".join(names))
"""


def _base_store(root: Path) -> ModelStore:
    store = ModelStore(root)
    store.create_version("cat", "patchcore", {"category": "cat", "kind": "patchcore", "backbone": "b",
                                              "settings": {}, "versions": {}}, {"a": 1}, reason="trained",
                         weights={"x": 1})
    return store


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])


def test_a_kill_at_any_step_of_a_mark_leaves_a_store_undo_can_settle(tmp_path: Path) -> None:
    """Kill (os._exit) the writer at every step boundary of create_version + feedback log line; after a
    restart the store is consistent: either no new version and nothing logged, or the new version current
    with its log line, which Undo undoes; no temp folder or file is left."""
    import os
    import time

    from core.store.model_store import STALE_TEMP_S

    _base_store(tmp_path / "base")
    shutil.copytree(tmp_path / "base", tmp_path / "dry")
    dry = _run("-c", _CRASHER, str(tmp_path / "dry"), "0")
    assert dry.returncode == 0, dry.stderr
    steps = dry.stdout.splitlines()
    assert len(steps) >= 10 and steps.index("renamed into place") < steps.index("feedback logged")
    made_at = steps.index("renamed into place") + 1  # crashing at this step or later: the version exists
    for number, step in enumerate(steps, start=1):
        root = tmp_path / f"crash{number}"
        shutil.copytree(tmp_path / "base", root)
        crashed = _run("-c", _CRASHER, str(root), str(number))
        assert crashed.returncode == 70, (step, crashed.stderr)
        base = root / "cat" / "patchcore"
        old = time.time() - STALE_TEMP_S - 60  # the restart comes later than a live writer could take
        for path in base.rglob(".*"):
            os.utime(path, (old, old))
        restarted = _run("-c", "import sys; from core.store.model_store import ModelStore; ModelStore(sys.argv[1])", str(root))
        assert restarted.returncode == 0, (step, restarted.stderr)
        assert not [p.name for p in base.iterdir() if p.name.startswith(".tmp-") or p.name.endswith(".tmp")], step
        store = ModelStore(root)
        assert all(i.ok for i in store.list_versions("cat", "patchcore")), step
        log = feedback.history(store, "cat", "patchcore")
        if number < made_at:
            assert store.version_numbers("cat", "patchcore") == [1], step
            assert store.current("cat", "patchcore").version == 1 and log == [], step
            with pytest.raises(feedback.FeedbackError, match="nothing to undo"):
                feedback.undo(store, "cat", "patchcore")
        else:
            assert store.version_numbers("cat", "patchcore") == [1, 2], step
            assert store.current("cat", "patchcore").version == 2, step
            assert [(e["action"], e["version_before"], e["version_after"]) for e in log] == [("mark_ok", 1, 2)], step
            assert "v1 is current again" in feedback.undo(store, "cat", "patchcore"), step
            assert store.current("cat", "patchcore").version == 1, step
            assert [e["action"] for e in feedback.history(store, "cat", "patchcore")] == ["mark_ok", "undo"], step
        again = store.create_version("cat", "patchcore", store.read_manifest(store.ref("cat", "patchcore", 1)), {},
                                     "trained", weights={"x": 2})
        assert again.version == max(store.version_numbers("cat", "patchcore")) and LOG_ENTRY not in \
            store.read_manifest(again), step


def test_reading_the_log_recovers_the_entry_of_a_writer_that_stopped_after_the_rename(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a restart (the app's process kept running): the next read of the log finds the version's
    entry, makes the version current (its pointer still named the parent) and logs it, so Undo can undo it."""
    from core import files

    store = _base_store(tmp_path)

    class Stop(Exception):
        pass

    def hook(name: str) -> None:
        if name == "renamed into place":
            raise Stop(name)

    monkeypatch.setattr(files, "STEP_HOOK", hook)
    v1 = store.ref("cat", "patchcore", 1)
    with pytest.raises(Stop):
        store.create_version("cat", "patchcore", store.read_manifest(v1), {}, "feedback: a.png marked OK", parent=v1,
                             feedback={"action": feedback.MARK_OK, "image": "a.png", "version_before": 1})
    monkeypatch.setattr(files, "STEP_HOOK", None)
    assert store.version_numbers("cat", "patchcore") == [1, 2] and store.current("cat", "patchcore").version == 1
    log = store.read_feedback("cat", "patchcore")
    assert [(e["action"], e["version_after"]) for e in log] == [("mark_ok", 2)]
    assert store.current("cat", "patchcore").version == 2
    assert store.read_feedback("cat", "patchcore") == log  # logged once, not at every read
    assert "v1 is current again" in feedback.undo(store, "cat", "patchcore")


def test_an_undo_stopped_between_the_pointer_move_and_its_log_line_can_be_repeated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _base_store(tmp_path)
    v1 = store.ref("cat", "patchcore", 1)
    store.create_version("cat", "patchcore", store.read_manifest(v1), {}, "feedback: a.png marked OK", parent=v1,
                         feedback={"action": feedback.MARK_OK, "image": "a.png", "version_before": 1})
    real = ModelStore.append_feedback

    def dies(self: ModelStore, category: str, kind: str, entry: dict) -> None:
        raise OSError("killed")

    monkeypatch.setattr(ModelStore, "append_feedback", dies)
    with pytest.raises(OSError):
        feedback.undo(store, "cat", "patchcore")
    monkeypatch.setattr(ModelStore, "append_feedback", real)
    assert store.current("cat", "patchcore").version == 1  # the pointer moved, the log does not say so yet
    assert "v1 is current again" in feedback.undo(store, "cat", "patchcore")
    assert [e["action"] for e in store.read_feedback("cat", "patchcore")] == ["mark_ok", "undo"]
    with pytest.raises(feedback.FeedbackError, match="nothing to undo"):
        feedback.undo(store, "cat", "patchcore")
