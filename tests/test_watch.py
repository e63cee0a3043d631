"""The watch folder: images judged once and moved by verdict, files still being written waited for,
unreadable files rejected with the reason, and a crash between judging and moving loses nothing."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.model_cache import ModelCache
from core.store import ModelStore
from core.watch import JOURNAL, WatchConfig, Watcher

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def setup(trained_store: Path, demo_root: Path, tmp_path: Path) -> tuple[WatchConfig, ModelCache, Path]:
    incoming = tmp_path / "in"
    incoming.mkdir()
    config = WatchConfig(incoming, tmp_path / "ok", tmp_path / "defect", tmp_path / "rejected", tmp_path / "log.csv",
                         settle=0.0, poll=0.05)
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
    assert (config.defect_dir / "s.png").is_file()
    assert (config.ok_dir / "g.png").is_file() or (config.defect_dir / "g.png").is_file()
    assert (config.rejected_dir / "broken.png").is_file()
    assert (config.rejected_dir / "broken.png.reason.txt").read_text().strip()
    assert sorted(p.name for p in config.in_dir.iterdir()) == [JOURNAL, "notes.txt"]
    rows = _rows(config.log)
    assert sorted(r["file"] for r in rows) == ["broken.png", "g.png", "s.png"]
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

    watcher._move = crash  # the process dies right after the result is journalled
    with pytest.raises(KeyboardInterrupt):
        watcher.run(once=True)
    assert len(calls) == 1 and len(list(config.in_dir.glob("*.png"))) == 3
    restarted = Watcher(config, model)
    restarted.run(once=True)
    assert len(calls) == 3  # g0 finished from the journal, not scored again; g1 and g2 scored once each
    rows = _rows(config.log)
    assert sorted(r["file"] for r in rows) == ["g0.png", "g1.png", "g2.png"]
    assert not list(config.in_dir.glob("*.png"))


def test_cli_watch_killed_mid_batch_then_restarted(trained_store: Path, demo_root: Path, tmp_path: Path) -> None:
    incoming = tmp_path / "in"
    incoming.mkdir()
    sources = sorted((demo_root / "demo_metal" / "test").rglob("*.png"))
    count = 60  # enough that the kill lands mid-batch even on a fast, idle machine
    for i in range(count):
        shutil.copy(sources[i % len(sources)], incoming / f"img{i:02d}.png")
    argv = [sys.executable, "-m", "core", "watch", "--store", str(trained_store), "--category", "demo_metal",
            "--in", str(incoming), "--ok", str(tmp_path / "ok"), "--defect", str(tmp_path / "defect"),
            "--settle", "0", "--once"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "INSPECT_LINE_LOG": str(tmp_path / "line.jsonl")}
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    journal = incoming / JOURNAL
    deadline = time.time() + 120
    while time.time() < deadline and (not journal.exists() or journal.read_text().count('"done"') < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-batch
    proc.wait(timeout=30)
    done_before = journal.read_text().count('"done"')
    assert 3 <= done_before < count
    subprocess.run(argv, cwd=ROOT, env=env, check=True, timeout=300, capture_output=True)
    moved = sorted(p.name for folder in ("ok", "defect") for p in (tmp_path / folder).glob("*.png"))
    assert moved == [f"img{i:02d}.png" for i in range(count)]  # nothing lost
    rows = _rows(tmp_path / "results.csv")
    assert sorted(r["file"] for r in rows) == moved  # each logged exactly once
    scored = [json.loads(line)["file"] for line in journal.read_text().splitlines() if '"scored"' in line]
    assert sorted(scored) == moved  # each judged exactly once
