"""Model store: numbered versions, a current pointer, atomic writes, clear errors, old models still load."""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.files import atomic_write_json
from core.store import lifecycle as det
from core.store.model_store import ModelRef, ModelStore, ModelStoreError

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture()
def store_copy(trained_store: Path, tmp_path: Path) -> ModelStore:
    shutil.copytree(trained_store, tmp_path / "models")
    return ModelStore(tmp_path / "models")


def test_listing_trained_models(store_copy: ModelStore) -> None:
    records = store_copy.list_models()
    assert {(r.category, r.kind) for r in records} == {("demo_metal", "patchcore"), ("demo_metal", "efficientad")}
    assert all(r.ok for r in records)
    for r in records:
        assert r.ref is not None and r.ref.version == 1 and r.num_versions == 1
        files = {p.name for p in r.path.iterdir()}
        assert {"manifest.json", "weights.pt", "calibration.json", "evaluation.json", "eval_images.csv",
                "eval_pixels.npz"} <= files
        assert not any(name.endswith(".tmp") for name in files)
        assert set(r.manifest["metrics"]) >= {"image_auroc", "pixel_auroc", "aupro", "f1_max", "latency_ms_mean"}
        assert r.manifest["reason"] == "trained" and r.manifest["parent"] is None


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: (p / "weights.pt").write_bytes(b"\x00garbage"), "damaged data"),
        (lambda p: (p / "weights.pt").unlink(), "found no file"),
        (lambda p: (p / "manifest.json").write_text("{ half a json"), "valid JSON"),
        (lambda p: (p / "manifest.json").unlink(), "expected a JSON file"),
        (lambda p: (p / "calibration.json").write_text("[]"), "JSON object"),
        (lambda p: atomic_write_json(p / "manifest.json", {"kind": "patchcore"}), "expected keys"),
    ],
)
def test_corrupt_model_gives_clear_error_and_spares_others(store_copy: ModelStore, damage, message: str) -> None:
    ref = store_copy.current("demo_metal", "patchcore")
    damage(store_copy.path(ref))
    with pytest.raises(ModelStoreError, match=message) as info:
        det.load(ref)
    assert "patchcore" in str(info.value)
    other = det.load(store_copy.current("demo_metal", "efficientad"))  # the other model still loads
    assert other.kind == "efficientad"


def test_weights_of_wrong_shape(store_copy: ModelStore) -> None:
    ref = store_copy.current("demo_metal", "patchcore")
    path = store_copy.path(ref) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["settings"]["layers"] = ["blocks.4"]  # bank has 152 dims, settings now say 112
    path.write_text(json.dumps(manifest))
    with pytest.raises(ModelStoreError, match="expected memory-bank features of 112 dims.*found 152"):
        det.load(ref)


def test_broken_folder_listed_with_error(store_copy: ModelStore) -> None:
    (store_copy.root / "demo_metal" / "halfwritten" / "v1").mkdir(parents=True)
    records = {r.kind: r for r in store_copy.list_models("demo_metal")}
    assert not records["halfwritten"].ok and "expected a JSON file" in records["halfwritten"].error
    assert records["patchcore"].ok and records["efficientad"].ok


def test_hidden_temp_folders_ignored(store_copy: ModelStore) -> None:
    (store_copy.root / "demo_metal" / ".patchcore.tmp-123").mkdir()
    (store_copy.root / "demo_metal" / "patchcore" / ".tmp-abc").mkdir()
    assert {r.kind for r in store_copy.list_models()} == {"patchcore", "efficientad"}
    assert store_copy.version_numbers("demo_metal", "patchcore") == [1]


def _manifest(cat: str) -> dict:
    return {"category": cat, "kind": "patchcore", "backbone": "b", "settings": {}, "versions": {}}


def test_versions_pointer_and_shared_files(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    v1 = store.create_version("cat", "patchcore", _manifest("cat"), {"a": 1}, reason="trained", weights={"x": 1})
    v2 = store.create_version("cat", "patchcore", _manifest("cat"), {"a": 2}, reason="thresholds saved", parent=v1)
    assert (v1.version, v2.version) == (1, 2) and store.current("cat", "patchcore") == v2
    assert store.read_calibration(v1) == {"a": 1} and store.read_calibration(v2) == {"a": 2}
    assert store.weights_stamp(v1) == store.weights_stamp(v2)  # shared (hard link), loaded once by the app
    assert store.read_manifest(v2)["parent"] == 1 and store.read_manifest(v2)["reason"] == "thresholds saved"
    assert store.use(v1) == v1 and store.current("cat", "patchcore") == v1  # undo: a pointer move
    v3 = store.create_version("cat", "patchcore", _manifest("cat"), {"a": 3}, reason="trained", weights={"x": 3})
    assert v3.version == 3 and store.read_weights(v3) == {"x": 3} and store.read_weights(v1) == {"x": 1}
    assert [i.ref.version for i in store.list_versions("cat", "patchcore") if i.current] == [3]
    with pytest.raises(ModelStoreError, match=r"expected one of the versions \[1, 2, 3\].*found 7"):
        store.ref("cat", "patchcore", 7)


def test_damaged_pointer_names_the_fix(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.create_version("cat", "patchcore", _manifest("cat"), {}, reason="trained", weights={"x": 1})
    atomic_write_json(tmp_path / "cat" / "patchcore" / "current.json", {"version": 9})
    with pytest.raises(ModelStoreError, match=r"expected one of the versions \[1\], found 9.*--use N"):
        store.current("cat", "patchcore")


def _make_versions(root: str, count: int, queue: mp.Queue) -> None:
    store = ModelStore(root)
    made = [store.create_version("cat", "patchcore", _manifest("cat"), {"n": i}, reason="trained",
                                 weights={"x": i}).version for i in range(count)]
    queue.put(made)


def test_two_writers_never_share_a_version_number(tmp_path: Path) -> None:
    queue: mp.Queue = mp.get_context("fork").Queue()
    procs = [mp.get_context("fork").Process(target=_make_versions, args=(str(tmp_path), 8, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    made = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    numbers = sorted(made[0] + made[1])
    assert numbers == list(range(1, 17))  # 16 distinct numbers, none reused, none lost
    store = ModelStore(tmp_path)
    assert all(i.ok for i in store.list_versions("cat", "patchcore"))
    assert not [p for p in (tmp_path / "cat" / "patchcore").iterdir() if p.name.startswith(".tmp")]


def test_model_saved_before_versions_loads_as_version_1(tmp_path: Path) -> None:
    """A folder written by commit 3d9b59b (files directly in <kind>/) loads with identical scores."""
    shutil.copytree(FIXTURES / "legacy_store", tmp_path / "models")
    store = ModelStore(tmp_path / "models")
    expected = json.loads((FIXTURES / "legacy_expected.json").read_text())
    ref = store.current("demo_metal", "patchcore")
    assert ref == ModelRef(str(store.root), "demo_metal", "patchcore", 1)
    model = det.load(ref)
    score = model.detector.predict([np.load(FIXTURES / "legacy_probe.npy")])[0].score
    assert score == pytest.approx(expected["score"], rel=1e-5)
    assert model.calibration.image_threshold == pytest.approx(expected["image_threshold"])
    # a new version lives beside it; the old files are not moved and v1 stays loadable
    v2 = det.save_calibration(model, model.calibration.with_thresholds(1.0, model.calibration.pixel_threshold, "user"))
    assert v2.version == 2 and store.current("demo_metal", "patchcore") == v2
    assert det.load(v2).calibration.image_threshold == 1.0
    assert det.load(store.ref("demo_metal", "patchcore", 1)).calibration.image_threshold == pytest.approx(
        expected["image_threshold"])


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", " padded"])
def test_unsafe_names_refused(store_copy: ModelStore, name: str) -> None:
    with pytest.raises(ModelStoreError, match="expected a plain category name"):
        store_copy.current(name, "patchcore")


def test_missing_model_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelStoreError, match="found nothing there"):
        det.load(ModelStore(tmp_path).current("nope", "patchcore"))


def test_feedback_log_damage_is_reported_with_its_line(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.create_version("cat", "patchcore", _manifest("cat"), {}, reason="trained", weights={"x": 1})
    store.append_feedback("cat", "patchcore", {"action": "mark_ok"})
    log = tmp_path / "cat" / "patchcore" / "feedback.jsonl"
    log.write_text(log.read_text() + "{not json\n")
    before = log.read_bytes()
    with pytest.raises(ModelStoreError, match="line 2: expected one JSON object per line"):
        store.read_feedback("cat", "patchcore")
    assert log.read_bytes() == before  # nothing lost


def test_version_files_and_folders_are_fsynced_around_the_rename(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 22 row 9: every file of a new version and its temp folder are fsynced before the rename; the kind
    folder after it and after current.json is replaced (else a power loss can lose a version or the pointer)."""
    import os

    store = ModelStore(tmp_path)
    v1 = store.create_version("cat", "patchcore", _manifest("cat"), {"a": 1}, reason="trained", weights={"x": 1})
    events: list[tuple[str, str]] = []
    real_fsync, real_rename, real_replace = os.fsync, os.rename, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src: str | Path, dst: str | Path) -> None:
        events.append(("rename", str(dst)))
        real_rename(src, dst)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)
    base = tmp_path / "cat" / "patchcore"
    v2 = store.create_version("cat", "patchcore", _manifest("cat"), {"a": 2}, reason="trained", weights={"x": 2},
                              parent=v1, feedback={"action": "mark_ok", "version_before": 1})
    assert v2.version == 2
    moved = events.index(("rename", str(base / "v2")))
    before, after = events[:moved], events[moved + 1:]
    synced_before = {Path(p).name for kind, p in before if kind == "fsync" and Path(p).parent.name.startswith(".tmp-")}
    assert synced_before == {"weights.pt", "calibration.json", "manifest.json"}
    assert any(kind == "fsync" and Path(p).name.startswith(".tmp-") for kind, p in before)  # the temp folder
    pointer = after.index(("replace", str(base / "current.json")))
    assert ("fsync", str(base)) in after[:pointer]  # the rename is durable before the pointer names v2
    assert ("fsync", str(base)) in after[pointer + 1:]  # and so is the pointer's replace
    assert ("fsync", str(base / "feedback.jsonl")) in after[pointer + 1:]


def test_atomic_writes_fsync_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    atomic_write_json(tmp_path / "x.json", {"a": 1})
    assert synced[-1] == str(tmp_path) and json.loads((tmp_path / "x.json").read_text()) == {"a": 1}


def test_stale_temp_folders_are_removed_at_start_and_live_ones_kept(tmp_path: Path) -> None:
    """A dead writer's `.tmp-*` folder and `.*.tmp` file (older than STALE_TEMP_S) go when a process first
    opens the store; a live writer's (recent) stay; nothing else is touched."""
    import os
    import time

    from core.store.model_store import STALE_TEMP_S

    made = ModelStore(tmp_path / "made")
    made.create_version("cat", "patchcore", _manifest("cat"), {"a": 1}, reason="trained", weights={"x": 1})
    shutil.copytree(tmp_path / "made", tmp_path / "models")  # a store this process has not opened yet
    base = tmp_path / "models" / "cat" / "patchcore"
    old = time.time() - STALE_TEMP_S - 60
    for name in (".tmp-dead", ".tmp-live"):
        (base / name).mkdir()
        (base / name / "weights.pt").write_bytes(b"x")
    (base / ".current.json.abc.tmp").write_text("{}")
    for path in (base / ".tmp-dead" / "weights.pt", base / ".tmp-dead", base / ".current.json.abc.tmp"):
        os.utime(path, (old, old))
    store = ModelStore(tmp_path / "models")
    left = sorted(p.name for p in base.iterdir())
    assert left == [".lock", ".tmp-live", "current.json", "v1"]
    assert store.current("cat", "patchcore").version == 1 and all(i.ok for i in store.list_versions("cat", "patchcore"))
    assert store.recover(max_age_s=0)  # explicitly, e.g. from a maintenance script: the live one too
    assert not (base / ".tmp-live").exists()
