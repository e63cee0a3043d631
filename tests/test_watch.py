"""The watch folder: images judged once and moved by verdict, files still being written waited for,
unreadable files rejected with the reason, and a crash between judging and moving loses nothing."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.data.imageio import load_image
from core.line import results_log as line_log
from core.line.watch import CLAIMS, CRASH_ENV, CRASH_EXIT, JOURNAL, STEPS, WatchConfig, Watcher
from core.store.model_cache import ModelCache
from core.store.model_store import ModelStore
from core.verdict.inspection import inspect

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def setup(trained_store: Path, demo_root: Path, tmp_path: Path) -> tuple[WatchConfig, ModelCache, Path]:
    incoming = tmp_path / "in"
    incoming.mkdir()
    config = WatchConfig(incoming, tmp_path / "ok", tmp_path / "defect", tmp_path / "rejected", tmp_path / "log.csv",
                         settle=0.0, poll=0.05, max_wait=0.0)
    return config, ModelCache(ModelStore(trained_store)), demo_root / "demo_metal" / "test"


def _rows(log: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(log.open())) if log.exists() else []


def test_images_are_judged_once_and_moved_by_verdict(setup) -> None:
    config, cache, test = setup
    shutil.copy(test / "good" / "000.png", config.in_dir / "g.png")
    shutil.copy(test / "scratch" / "000.png", config.in_dir / "s.png")
    (config.in_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut")
    (config.in_dir / "notes.txt").write_text("not an image: ignored")
    watcher = Watcher(config, lambda: cache.current("demo_metal", "patchcore"))
    assert watcher.run(once=True) == 3
    assert sorted(p.name for p in config.in_dir.iterdir()) == [CLAIMS, JOURNAL, "notes.txt"]
    assert not list((config.in_dir / CLAIMS).iterdir())  # every claimed file was stored
    rows = {r["file"]: r for r in _rows(config.log)}
    assert sorted(rows) == ["broken.png", "g.png", "s.png"]
    stored = {name: Path(row["moved_to"]) for name, row in rows.items()}
    assert stored["s.png"].parent == config.defect_dir and stored["s.png"].is_file()
    assert stored["g.png"].parent in (config.ok_dir, config.review_folder, config.defect_dir) and stored["g.png"].is_file()
    assert stored["broken.png"].parent == config.rejected_dir and stored["broken.png"].is_file()
    assert (config.rejected_dir / f"{stored['broken.png'].name}.reason.txt").read_text().strip()
    # a second watcher on the same folder judges nothing again
    assert Watcher(config, lambda: cache.current("demo_metal", "patchcore")).run(once=True) == 0
    assert len(_rows(config.log)) == 3


def test_a_file_still_being_written_is_waited_for(setup) -> None:
    config, cache, test = setup
    config = WatchConfig(**{**config.__dict__, "settle": 0.5})
    watcher = Watcher(config, lambda: cache.current("demo_metal", "patchcore"))
    target = config.in_dir / "slow.png"
    target.write_bytes((test / "good" / "000.png").read_bytes()[:100])  # the camera is still writing
    assert watcher.stable_files() == []
    assert watcher.stable_files() == []  # modified less than 0.5 s ago
    target.write_bytes((test / "good" / "000.png").read_bytes())
    time.sleep(0.6)
    assert watcher.stable_files() == []  # changed since the last poll
    assert watcher.stable_files() == [target]


def test_crash_after_judging_before_moving_loses_nothing_and_scores_nothing_twice(setup) -> None:
    config, cache, test = setup
    for i in range(3):
        shutil.copy(test / "good" / f"00{i}.png", config.in_dir / f"g{i}.png")
    calls = []

    def model():
        calls.append(1)
        return cache.current("demo_metal", "patchcore")

    watcher = Watcher(config, model)

    def crash(*_args) -> None:
        raise KeyboardInterrupt("power cut")

    watcher._place = crash  # the process dies right after the result is journalled
    with pytest.raises(KeyboardInterrupt):
        watcher.run(once=True)
    assert len(calls) == 1 and len(list(config.in_dir.glob("*.png"))) == 2  # g0 was claimed, nothing stored
    assert len(list((config.in_dir / CLAIMS).glob("*.png"))) == 1 and not _rows(config.log)
    restarted = Watcher(config, model)
    restarted.run(once=True)
    # g0 was journalled but not placed: its entry is not trusted (no row can exist yet), it is judged again from
    # its claimed file; g1 and g2 judged once each
    assert len(calls) == 4
    rows = _rows(config.log)
    assert sorted(r["file"] for r in rows) == ["g0.png", "g1.png", "g2.png"]
    assert not list(config.in_dir.glob("*.png"))


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _stored(config: WatchConfig) -> list[Path]:
    return sorted(p for d in (config.ok_dir, config.review_folder, config.defect_dir, config.rejected_dir) if d.is_dir()
                  for p in d.iterdir() if p.suffix == ".png" and not p.name.startswith("."))


def test_reused_camera_names_never_overwrite_and_the_row_names_the_stored_file(setup) -> None:
    config, cache, test = setup
    watcher = Watcher(config, lambda: cache.current("demo_metal", "patchcore"))
    sources = sorted(test.rglob("*.png"))[:12]
    assert len({_sha1(p) for p in sources}) == 12
    for source in sources:  # the camera writes every image as cam.png, each after the previous one was taken
        shutil.copy(source, config.in_dir / "cam.png")
        assert watcher.run(once=True) == 1
    stored = _stored(config)
    assert len(stored) == 12  # was 2: moves overwrote
    assert {_sha1(p) for p in stored} == {_sha1(p) for p in sources}
    rows = _rows(config.log)
    assert len(rows) == 12
    for row in rows:  # each row names the file that holds the image it judged
        assert row["file"] == "cam.png"
        assert Path(row["moved_to"]).is_file() and _sha1(Path(row["moved_to"])) == row["sha1"]
    assert len({row["moved_to"] for row in rows}) == 12


def test_the_same_name_and_content_again_gets_a_counter_not_an_overwrite(setup) -> None:
    config, cache, test = setup
    watcher = Watcher(config, lambda: cache.current("demo_metal", "patchcore"))
    for _ in range(3):  # judged once; the two copies dropped in again are kept in rejected/, side by side
        shutil.copy(test / "scratch" / "000.png", config.in_dir / "cam.png")
        watcher.run(once=True)
    rejected = sorted(p.name for p in config.rejected_dir.glob("*.png"))
    assert len(rejected) == 2 and rejected[0] != rejected[1]
    assert all((config.rejected_dir / f"{name}.reason.txt").is_file() for name in rejected)
    assert len(_stored(config)) == 3 and len(_rows(config.log)) == 1


def test_crafted_journal_entries_are_refused_and_logged(setup, caplog: pytest.LogCaptureFixture) -> None:
    config, cache, test = setup
    victim = config.in_dir.parent / "victim.txt"
    victim.write_text("not yours")
    outside = config.in_dir.parent / "elsewhere.png"
    shutil.copy(test / "good" / "000.png", outside)
    real = config.in_dir / "real.png"
    shutil.copy(test / "good" / "001.png", real)
    base = {"state": "scored", "time": 0.0, "category": "demo_metal", "model": "patchcore", "version": 1,
            "threshold": 1.0, "verdict": "OK", "score": 0.0, "latency_ms": 1.0, "note": ""}
    crafted = [
        {**base, "id": "a", "file": "../victim.txt", "sha1": _sha1(victim), "moved_to": str(config.ok_dir / "v.txt")},
        {**base, "id": "b", "file": str(outside), "sha1": _sha1(outside), "moved_to": str(config.ok_dir / "e.png")},
        {**base, "id": "c", "file": "real.png", "sha1": _sha1(real),
         "moved_to": str(config.in_dir.parent / "stolen.png")},  # a target outside the verdict folders
        {**base, "id": "d", "file": "real.png", "sha1": "0" * 40, "moved_to": str(config.ok_dir / "real.png")},
    ]
    (config.in_dir / JOURNAL).write_text("".join(json.dumps(e) + "\n" for e in crafted))
    with caplog.at_level(logging.INFO, logger="core.line.watch"):
        Watcher(config, lambda: cache.current("demo_metal", "patchcore")).run(once=True)
    assert victim.read_text() == "not yours" and outside.is_file()
    assert not (config.in_dir.parent / "stolen.png").exists()
    rows = _rows(config.log)
    assert [r["file"] for r in rows] == ["real.png"]  # judged on its own; no forged row
    assert rows[0]["id"] not in {"a", "b", "c", "d"} and Path(rows[0]["moved_to"]).name != "real.png"
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 3, refused  # a, b, c
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 1 and "entry d " in dropped[0], dropped  # its target does not exist: judged afresh


def test_a_camera_pausing_longer_than_the_settle_time_is_waited_for(setup) -> None:
    config, cache, test = setup
    config = WatchConfig(**{**config.__dict__, "max_wait": 0.8})
    watcher = Watcher(config, lambda: cache.current("demo_metal", "patchcore"))
    data = (test / "scratch" / "000.png").read_bytes()
    slow = config.in_dir / "slow.png"
    slow.write_bytes(data[: len(data) // 2])  # the camera pauses mid-file, longer than the settle time
    for _ in range(3):
        assert watcher.poll() == 0
    assert slow.is_file() and not _rows(config.log)  # not rejected on the first look
    with slow.open("ab") as handle:
        handle.write(data[len(data) // 2:])
    assert watcher.poll() == 0  # changed since the last poll
    assert watcher.poll() == 1
    assert [r["verdict"] for r in _rows(config.log)] == ["DEFECT"]
    (config.in_dir / "dead.png").write_bytes(data[:200])  # the camera never finishes this one
    watcher.poll()
    watcher.poll()
    assert (config.in_dir / "dead.png").is_file()
    time.sleep(0.9)
    assert watcher.poll() == 1
    row = _rows(config.log)[-1]
    assert row["verdict"] == "REJECTED" and "0.8 s" in row["note"] and "truncated" in row["note"]
    assert Path(row["moved_to"]).parent == config.rejected_dir


def test_killed_at_every_step_boundary_then_restarted(trained_store: Path, demo_root: Path, tmp_path: Path) -> None:
    """The watcher process os._exit()s at each step boundary in turn (the restart after each crash crashes at the
    next step, so crashes land in recovery too); the last run finishes. Every image is stored once, judged once,
    and has one CSV row and one line-log row."""
    incoming = tmp_path / "in"
    incoming.mkdir()
    test = demo_root / "demo_metal" / "test"
    sources = sorted(test.rglob("*.png"))[: len(STEPS) + 2]
    for i, source in enumerate(sources):
        shutil.copy(source, incoming / f"img{i:02d}.png")
    (incoming / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut")  # a rejected one, with its reason file
    expected = {_sha1(p) for p in incoming.glob("*.png")}
    line = tmp_path / "line.jsonl"
    argv = [sys.executable, "-m", "core", "watch", "--store", str(trained_store), "--category", "demo_metal",
            "--in", str(incoming), "--ok", str(tmp_path / "ok"), "--defect", str(tmp_path / "defect"),
            "--settle", "0", "--max-wait", "0", "--once"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "INSPECT_LINE_LOG": str(line)}
    for step in STEPS:
        run = subprocess.run(argv, cwd=ROOT, env={**env, CRASH_ENV: step}, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == CRASH_EXIT, (step, run.returncode, run.stderr[-2000:])  # it did crash there
    subprocess.run(argv, cwd=ROOT, env=env, check=True, timeout=300, capture_output=True)
    config = WatchConfig(incoming, tmp_path / "ok", tmp_path / "defect", tmp_path / "rejected",
                         tmp_path / "results.csv")
    stored = _stored(config)
    assert sorted(_sha1(p) for p in stored) == sorted(expected)  # nothing lost, nothing stored twice
    assert not list(incoming.glob("*.png"))
    rows = _rows(config.log)
    assert sorted(r["sha1"] for r in rows) == sorted(expected)  # one CSV row each
    assert all(_sha1(Path(r["moved_to"])) == r["sha1"] for r in rows)
    logged = [r for r in line_log.tail(line) if r.get("source") == "watch"]
    assert sorted(r["sha1"] for r in logged) == sorted(expected)  # one line-log row each
    journal = [json.loads(x) for x in (incoming / JOURNAL).read_text().splitlines() if x.startswith("{")
               and x.endswith("}")]
    dropped = {e["id"] for e in journal if e.get("state") == "dropped"}
    scored = [e["sha1"] for e in journal if e.get("state") == "scored" and e["id"] not in dropped]
    assert sorted(scored) == sorted(expected)  # each judged exactly once (a dropped judgement filed nothing)
    assert not list((incoming / CLAIMS).iterdir())
    assert (config.rejected_dir / (Path(next(r["moved_to"] for r in rows if r["file"] == "zz_broken.png")).name
                                   + ".reason.txt")).is_file()


def test_a_camera_rewriting_the_name_between_the_read_and_the_link(setup) -> None:
    """The file is claimed before it is read: the image the camera writes under the same name while the first
    is being judged is a new file, judged on its own, never stored under the first one's verdict or deleted."""
    config, cache, test = setup
    first, second = (test / "scratch" / "000.png").read_bytes(), (test / "good" / "000.png").read_bytes()
    cam = config.in_dir / "cam.png"
    cam.write_bytes(first)
    calls = []

    def model():
        calls.append(1)
        return cache.current("demo_metal", "patchcore")

    def camera(step: str) -> None:
        if step == "judged" and not calls[1:]:
            cam.write_bytes(second)  # the camera reuses the name while the first image is being judged

    assert Watcher(config, model, hook=camera).run(once=True) == 2
    assert len(calls) == 2  # each judged once
    rows = _rows(config.log)
    digests = {hashlib.sha1(first).hexdigest(), hashlib.sha1(second).hexdigest()}
    assert sorted(r["sha1"] for r in rows) == sorted(digests)
    current = cache.current("demo_metal", "patchcore")
    for row, data in zip(sorted(rows, key=lambda r: r["sha1"] != hashlib.sha1(first).hexdigest()),
                         (first, second), strict=True):
        stored = Path(row["moved_to"])
        assert stored.is_file() and _sha1(stored) == row["sha1"]  # the row names the file holding its image
        verdict = inspect(current, [load_image(data, name="cam.png")])[0].verdict
        assert row["verdict"] == verdict and stored.parent == {"OK": config.ok_dir, "REVIEW": config.review_folder,
                                                               "DEFECT": config.defect_dir}[verdict]
    assert {_sha1(p) for p in _stored(config)} == digests and not cam.exists()


@pytest.mark.parametrize("claimed", [False, True])
def test_a_forged_scored_entry_with_the_right_hash_is_judged_not_trusted(setup, claimed: bool) -> None:
    """A "scored" entry with the file's true hash, verdict OK and a target inside ok/ passes every check of the
    entry itself; its target does not exist, so no row can have been written: the file is judged."""
    config, cache, test = setup
    defect = test / "scratch" / "000.png"
    digest = _sha1(defect)
    forged = {"state": "scored", "id": "forged", "time": 0.0, "file": "cam.png", "sha1": digest,
              "category": "demo_metal", "model": "patchcore", "version": 1, "threshold": 1e9, "verdict": "OK",
              "score": 0.0, "latency_ms": 1.0, "note": "", "moved_to": str(config.ok_dir / f"cam-{digest[:8]}.png")}
    lines = [forged]
    if claimed:  # the forged entry names a claimed file, with a forged claim entry
        (config.in_dir / CLAIMS).mkdir()
        shutil.copy(defect, config.in_dir / CLAIMS / "c0ffee.png")
        lines = [{"state": "claimed", "id": "c0ffee", "file": "cam.png", "claim": "c0ffee.png"},
                 {**forged, "claim": "c0ffee.png", "claim_id": "c0ffee"}]
    else:
        shutil.copy(defect, config.in_dir / "cam.png")
    (config.in_dir / JOURNAL).write_text("".join(json.dumps(e) + "\n" for e in lines))
    calls = []

    def model():
        calls.append(1)
        return cache.current("demo_metal", "patchcore")

    Watcher(config, model).run(once=True)
    assert len(calls) == 1  # the model judged it
    rows = _rows(config.log)
    assert len(rows) == 1 and rows[0]["id"] != "forged" and rows[0]["sha1"] == digest
    assert rows[0]["verdict"] == "DEFECT" and Path(rows[0]["moved_to"]).parent == config.defect_dir
    assert not list(config.ok_dir.iterdir())  # no unjudged OK image
