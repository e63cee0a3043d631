"""Batch re-inspection and train-all on a REAL local Ray cluster: a head and a second node on this machine
(``ray start --block``, one CPU and a small object store each), stopped by their process ids afterwards.

No mock of Ray or of the database: an actor's process is killed with SIGKILL mid-batch, and the results database
must still hold every image exactly once."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from core.data.imageio import load_image, save_png_atomic
from core.line import batch
from core.store.history import History
from core.store.model_store import ModelStore

ray = pytest.importorskip("ray", reason="Ray tests skipped: ray is not installed (requirements.txt pins it)")

CATEGORY, KIND = "demo_metal", "patchcore"
OBJECT_STORE = "100000000"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes], marker: str) -> None:
    """Stop a ``ray start --block`` we started (its process group), then every process still in the session it
    leads or naming our temp folder (Ray's daemons and workers): by process id, nobody else's."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is None:
            with _quiet():
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                continue
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit() or int(pid_dir.name) == os.getpid():
            continue
        with _quiet():
            pid = int(pid_dir.name)
            if os.getsid(pid) == proc.pid or marker in (pid_dir / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(pid, signal.SIGKILL)


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, *_: object) -> bool:
        return kind is not None and issubclass(kind, OSError)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """A head and a second node on this machine (1 CPU each); yields the head's address, with this process
    connected to it as the driver."""
    ray_bin = Path(sys.executable).parent / "ray"
    if not ray_bin.is_file():
        pytest.skip(f"Ray tests skipped: no ray command beside {sys.executable}")
    temp = Path(tempfile.mkdtemp(prefix="rayt-", dir="/tmp"))  # short: Ray's socket paths must fit 107 characters
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus=1", f"--object-store-memory={OBJECT_STORE}", "--disable-usage-stats", "--block"]
    auth = {"RAY_AUTH_MODE": "disabled"}  # a test cluster on 127.0.0.1 only, gone when the session ends
    saved = {name: os.environ.get(name) for name in auth}
    os.environ.update(auth)  # this process is the driver: it needs the same token
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    logs = [open(temp / name, "wb") for name in ("head.log", "node.log")]  # noqa: SIM115 (closed below)
    head = subprocess.Popen([str(ray_bin), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                             "--include-dashboard=false", f"--temp-dir={temp}", *common], stdout=logs[0],
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
    procs = [head]
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and head.poll() is None:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        else:
            pytest.skip(f"Ray tests skipped: the head did not start: {(temp / 'head.log').read_text()[-800:]}")
        procs.append(subprocess.Popen([str(ray_bin), "start", f"--address={address}", "--node-ip-address=127.0.0.1",
                                       *common], stdout=logs[1], stderr=subprocess.STDOUT, env=env,
                                      start_new_session=True))
        ray.init(address=address, logging_level="WARNING", log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": env["PYTHONPATH"]}})
        while time.monotonic() < deadline and ray.cluster_resources().get("CPU", 0) < 2:
            time.sleep(0.5)
        nodes = [n for n in ray.nodes() if n["Alive"]]
        if len(nodes) < 2:
            pytest.skip(f"Ray tests skipped: the second node did not join: {(temp / 'node.log').read_text()[-800:]}")
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for proc in reversed(procs):
            _stop(proc, str(temp))
        for handle in logs:
            handle.close()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def many_images(demo_root: Path, tmp_path: Path) -> list[Path]:
    """40 distinct images (the demo's test images, each with one pixel changed per copy)."""
    sources = sorted((demo_root / CATEGORY / "test").rglob("*.png"))
    out = []
    for i in range(40):
        image = load_image(sources[i % len(sources)]).copy()
        image[0, 0] = np.array([i, i // 7, 255 - i], dtype=np.uint8)
        out.append(save_png_atomic(image, tmp_path / "archive" / f"{i:03d}.png"))
    return out


def _rows_per_image(history: History, ref: object) -> Counter[str]:
    rows = history.results(category=CATEGORY, kind=KIND, source=batch.SOURCE, limit=None)
    return Counter(r.image_sha1 or "" for r in rows)


def test_two_nodes_are_up(ray_cluster: str) -> None:
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    assert ray.cluster_resources()["CPU"] == 2


def test_batch_survives_a_killed_worker(ray_cluster: str, store: ModelStore, many_images: list[Path],
                                        tmp_path: Path) -> None:
    from core.line.ray_cluster import RayRunner

    ref = store.current(CATEGORY, KIND)
    runner = RayRunner(ref, "fast", ray_cluster)
    assert runner.workers == 2
    before = runner.pids()
    killed: list[int] = []
    at_kill: list[batch.BatchProgress] = []

    def kill_one(progress: batch.BatchProgress) -> None:
        if not killed:  # after the first chunk is written: the other actor is mid-chunk, both have more queued
            os.kill(before[1], signal.SIGKILL)
            killed.append(before[1])
            at_kill.append(progress)

    try:
        with History(f"sqlite:///{tmp_path / 'ray.sqlite3'}") as history:
            summary = batch.run_batch(ref, many_images, runner, history, chunk_size=2, progress=kill_one)
            rows = _rows_per_image(history, ref)
            after = runner.pids()
            again = batch.run_batch(ref, many_images, runner, history, chunk_size=2)
            rows_again = _rows_per_image(history, ref)
    finally:
        runner.close()
    assert killed and killed[0] not in after  # the actor's process died and Ray started a new one
    # mid-batch: one chunk of 2 written, 38 images still to judge, each actor holding chunks it was sent (IN_FLIGHT)
    assert at_kill[0].done == 2 and at_kill[0].total == len(many_images), at_kill
    assert len(rows) == len(many_images) and set(rows.values()) == {1}  # nothing lost, nothing recorded twice
    assert summary.judged == len(many_images) and summary.skipped == 0
    assert (again.judged, again.skipped) == (0, len(many_images))  # the rerun skips what is done
    assert rows_again == rows
    hosts = {r.extra.get("judged_on") for r in History(f"sqlite:///{tmp_path / 'ray.sqlite3'}").results(limit=None)}
    assert hosts and None not in hosts


def test_cli_batch_on_the_cluster(ray_cluster: str, store: ModelStore, many_images: list[Path],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    from core.cli import main

    argv = ["batch", "--store", str(store.root), "--category", CATEGORY, "--model", KIND, "--ray", ray_cluster,
            "--chunk", "4", str(many_images[0].parent)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "on 2 worker(s)" in err and f"{len(many_images)} judged" in err and "img/s" in err
    with History.open(store.root) as history:
        assert set(_rows_per_image(history, None).values()) == {1}
    assert ray.is_initialized()  # the test's own connection is left alone


def test_train_all_on_the_cluster(ray_cluster: str, demo_root: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    from core.cli import main
    from core.line import train_all

    data = tmp_path / "data"
    shutil.copytree(demo_root / CATEGORY, data / "alpha")
    shutil.copytree(demo_root / CATEGORY, data / "beta")
    (data / "broken" / "train" / "good").mkdir(parents=True)
    (data / "broken" / "train" / "good" / "0.png").write_bytes(b"not an image")
    store = tmp_path / "models"
    code = main(["train-all", "--data", str(data), "--store", str(store), "--model", KIND, "--image-size", "64",
                 "64", "--coreset-ratio", "0.1", "--ray", ray_cluster])
    captured = capsys.readouterr()
    assert code == 1, captured.err  # one category failed, the others were trained
    assert "broken/patchcore: FAILED" in captured.err
    assert ModelStore(store).version_numbers("alpha", KIND) == [1] and ModelStore(store).version_numbers("beta", KIND) == [1]
    records = {r.category: r for r in train_all.read_jobs(store)}
    assert {c: r.state for c, r in records.items()} == {"alpha": "done", "beta": "done", "broken": "failed"}
    assert all(r.host and r.started and r.finished for r in records.values())
    assert "broken" in (records["broken"].error or "") or "image" in (records["broken"].error or "")
