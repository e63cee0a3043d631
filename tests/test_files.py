"""core/files.py, the one file-writing helper (issue 23 item 7): JSONL appends under a lock, the half-line crash
hook, locks beside a file, atomic replacement and its mode; and that every module writes through it."""

from __future__ import annotations

import ast
import errno
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from core import files

ROOT = Path(__file__).resolve().parents[1]

_APPENDER = """
import sys, time
from pathlib import Path
from core import files
path, who, n, lock = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
for i in range(n):
    files.append_line(path, {"who": who, "i": i, "pad": who * 2000}, lock=lock, between=lambda: time.sleep(0.002))
"""


def _append_from_two_processes(path: Path, lock: bool, n: int = 40) -> list[str]:
    procs = [subprocess.Popen([sys.executable, "-c", _APPENDER, str(path), who, str(n), "1" if lock else "0"],
                              cwd=ROOT) for who in "ab"]
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    return path.read_text().splitlines()


def test_appends_from_two_processes_never_interleave(tmp_path: Path) -> None:
    """Each append writes its line in two halves with a pause between them (the crash-test hook): under the
    lock no other process's line lands between the halves."""
    lines = _append_from_two_processes(tmp_path / "log.jsonl", lock=True)
    records = [json.loads(line) for line in lines]  # every line is one whole record
    for who in "ab":
        assert [r["i"] for r in records if r["who"] == who] == list(range(40))
        assert all(r["pad"] == who * 2000 for r in records if r["who"] == who)


def test_the_interleaving_check_can_fail_without_the_lock(tmp_path: Path) -> None:
    """The same two writers with ``lock=False``: their halves interleave, so the test above does check the lock."""
    lines = _append_from_two_processes(tmp_path / "log.jsonl", lock=False)
    damaged = 0
    for line in lines:
        try:
            json.loads(line)
        except json.JSONDecodeError:
            damaged += 1
    assert damaged > 0


def test_a_line_cut_by_a_crash_does_not_swallow_the_next_record(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "log.jsonl"
    files.append_line(path, {"n": 1})

    class Crash(Exception):
        pass

    def crash() -> None:
        raise Crash

    halves: list[str] = []
    with pytest.raises(Crash):
        files.append_line(path, {"n": 2, "text": "x" * 50}, between=lambda: (halves.append(path.read_text()), crash()))
    cut = path.read_text()
    assert cut == halves[0] and not cut.endswith("\n")  # half of the line is on disk, as after a kill
    files.append_line(path, {"n": 3})
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"n": 1} and json.loads(lines[-1]) == {"n": 3}
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[1])  # the cut line stays one damaged line, which readers skip
    assert len(lines) == 3


def test_a_crash_half_way_through_a_line_in_another_process(tmp_path: Path) -> None:
    """The hook as the watch folder's kill tests use it: the process dies with half of the line fsynced."""
    path = tmp_path / "log.jsonl"
    code = ("import os, sys; from pathlib import Path; from core import files; "
            "files.append_line(Path(sys.argv[1]), {'n': 1}); "
            "files.append_line(Path(sys.argv[1]), {'n': 2}, between=lambda: os._exit(77))")
    assert subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, timeout=60).returncode == 77
    assert path.read_text().startswith('{"n": 1}\n{"n"') and not path.read_text().endswith("\n")
    files.append_line(path, {"n": 3})
    assert path.read_text().splitlines()[-1] == '{"n": 3}'


def test_write_synced_writes_everything_with_or_without_the_hook(tmp_path: Path) -> None:
    calls: list[bytes] = []
    path = tmp_path / "rows.csv"
    with open(path, "ab") as handle:
        files.write_synced(handle, b"a,b\r\n")
        files.write_synced(handle, b"1,2\r\n", between=lambda: calls.append(path.read_bytes()))
    assert path.read_bytes() == b"a,b\r\n1,2\r\n" and calls == [b"a,b\r\n1,"]


def test_locked_excludes_other_threads_and_uses_a_lock_file_beside(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    files.atomic_write_json(target, {"n": 0})

    def bump() -> None:
        for _ in range(10):
            with files.locked(target):
                n = json.loads(target.read_text())["n"]
                time.sleep(0.001)
                files.atomic_write_json(target, {"n": n + 1})

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert json.loads(target.read_text()) == {"n": 40}  # no read-modify-write lost
    assert (tmp_path / ".state.json.lock").is_file()


def test_locked_excludes_another_process(tmp_path: Path) -> None:
    target = tmp_path / "users.json"
    code = ("import sys, time; from pathlib import Path; from core import files\n"
            "with files.locked(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(1.0)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    start = time.monotonic()
    with files.locked(target):
        waited = time.monotonic() - start
    proc.wait(timeout=30)
    assert waited > 0.5


def test_lock_file_mode(tmp_path: Path) -> None:
    with files.locked(tmp_path / "users.json", mode=0o600):
        pass
    assert stat.S_IMODE((tmp_path / ".users.json.lock").stat().st_mode) == 0o600


def test_atomic_replace_keeps_the_old_content_when_the_write_raises(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "calibration.json"
    files.atomic_write_json(path, {"old": True})

    def broken_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "disk on fire")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk on fire"):
        files.atomic_write_json(path, {"new": True})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration.json"]  # no temp file left behind


def test_atomic_replace_stopped_before_the_rename_keeps_the_old_content(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.bin"
    files.atomic_write_bytes(path, b"old")

    def stop(name: str) -> None:
        if name.startswith("temp file"):
            raise KeyboardInterrupt

    monkeypatch.setattr(files, "STEP_HOOK", stop)
    with pytest.raises(KeyboardInterrupt):
        files.atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_atomic_write_mode_is_set_before_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "users.json"
    seen: list[int] = []

    def look(name: str) -> None:
        if name.startswith("temp file"):
            seen.extend(stat.S_IMODE(p.stat().st_mode) for p in tmp_path.glob(".users.json.*.tmp"))

    monkeypatch.setattr(files, "STEP_HOOK", look)
    files.atomic_write_bytes(path, b"{}", mode=0o600)
    assert seen == [0o600] and stat.S_IMODE(path.stat().st_mode) == 0o600
    files.atomic_write_bytes(path, b"{}")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_folder_fsync_the_file_system_cannot_do_is_not_an_error(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.fsync

    def no_dir_fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        real(fd)

    monkeypatch.setattr(os, "fsync", no_dir_fsync)
    files.atomic_write_bytes(tmp_path / "a.txt", b"a")  # a network share: the file is fsynced, the folder cannot be
    assert (tmp_path / "a.txt").read_bytes() == b"a"

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="I/O error"):
        files.fsync_dir(tmp_path)


def test_png_writes_go_through_the_atomic_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.data.imageio import load_image, save_png_atomic

    steps: list[str] = []
    monkeypatch.setattr(files, "STEP_HOOK", steps.append)
    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    path = save_png_atomic(image, tmp_path / "deep" / "m.png")
    assert steps == ["temp file of m.png written", "m.png replaced"]  # fsynced, renamed, folder fsynced
    assert np.array_equal(load_image(path), image)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # readable like every other file the product writes


def test_copy_durable(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"png")
    files.copy_durable(tmp_path / "a.png", tmp_path / ".b.part")
    assert (tmp_path / ".b.part").read_bytes() == b"png"


# Modules that write files through core/files.py only: none of them fsyncs, locks or makes temp files itself.
_WRITERS = ["core/data/imageio.py", "core/line/results_log.py", "core/line/watch.py", "core/access.py",
            "core/store/model_store.py"]
_OWN_DURABILITY = {("os", "fsync"), ("fcntl", "flock"), ("tempfile", "mkstemp"), ("shutil", "copy2")}


@pytest.mark.parametrize("module", _WRITERS)
def test_writers_use_the_one_helper(module: str) -> None:
    tree = ast.parse((ROOT / module).read_text())
    own = sorted(f"{node.value.id}.{node.attr} (line {node.lineno})" for node in ast.walk(tree)
                 if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                 and (node.value.id, node.attr) in _OWN_DURABILITY)
    assert own == [], f"expected {module} to write through core/files.py, found its own {', '.join(own)}"
