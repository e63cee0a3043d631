"""Two reviewers deciding the same part at once, repeated: does the review queue ever act twice? (issue 24 gap 1)

    python benchmarks/bench_review_race.py [--sqlite-rounds 500] [--postgres-rounds 200]

Per round a new line result (one stored image) is answered by two reviewers at the same instant, each in its own
thread with its own ``History`` (its own database connections): one answers DEFECT "dent", the other DEFECT
"scratch". Both are let past the queue's quick "already reviewed?" check before either claims (a barrier where the
image is read, between the check and the claim), so every round is decided by the claim alone
(``History.record_review(first=True)``). Counted per round: decisions recorded (must be 1), feedback actions logged
(must be 1), reviewers that acted (must be 1; the other is refused with "nothing done"). SQLite is a file in a
temporary folder; PostgreSQL a throwaway server (``initdb`` + ``pg_ctl``, as the tests start one; skipped with the
reason when none can be started). The model is a store version with stand-in weights (a DEFECT decision files the
image and logs it; no network is loaded). Correctness only: the seconds shown are not a timing. Written to the
``review_race`` section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_section

from core.models.registry import spec
from core.store.history import History, ResultRow
from core.store.lifecycle import LoadedModel
from core.store.model_store import ModelRef, ModelStore
from core.verdict import feedback, review

CATEGORY, KIND = "cat", "patchcore"


def stand_in(ref: ModelRef) -> LoadedModel:
    """A loaded model without a network: what a DEFECT decision needs (its version, the store)."""
    return LoadedModel(ref, detector=None, manifest={}, calibration=None)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Tally:
    """What ``rounds`` races made: rounds with exactly one decision, one action and one reviewer acting
    (``clean``), and the rounds that broke each rule."""

    backend: str
    rounds: int
    clean: int
    double_decisions: int
    double_actions: int
    both_acted: int
    none_acted: int
    seconds: float


def postgres_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    majors = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                    key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return str(majors[-1]) if majors else None


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL server on a free local port (trust authentication), stopped and removed after.

    Raises:
        RuntimeError: none can be started (the reason).
    """
    initdb, pg_ctl = postgres_bin("initdb"), postgres_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise RuntimeError("no initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin")
    folder = Path(tempfile.mkdtemp(prefix="pg-race-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        prefix = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres")
    data, log = folder / "data", folder / "server.log"
    try:
        made = subprocess.run(prefix + [initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
                              capture_output=True, text=True, timeout=300)
        if made.returncode != 0:
            raise RuntimeError(f"initdb failed: {made.stderr.strip()[-300:]}")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        started = subprocess.run(prefix + [pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "120",
                                           "start"], capture_output=True, text=True, timeout=300)
        if started.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {log.read_text(errors='replace')[-300:] if log.exists() else ''}")
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run(prefix + [pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True,
                           timeout=300)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def make_line(root: Path) -> tuple[ModelStore, Path, Path]:
    """(a store with version 1 of cat/patchcore, the data root with the category's folder, a stored line image)."""
    spec(KIND)  # the kind table imported here, not by two racing threads at once
    store = ModelStore(root / "models")
    store.create_version(CATEGORY, KIND, {"category": CATEGORY, "kind": KIND, "backbone": "b", "settings": {},
                                          "versions": {}}, {"a": 1}, reason="trained", weights={"x": 1})
    data = root / "data"
    (data / CATEGORY).mkdir(parents=True)
    image = root / "line" / "part.png"
    image.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(image)
    return store, data, image


def race(url: str, backend: str, rounds: int, root: Path) -> Tally:
    store, data, image = make_line(root)
    histories = [History(url, host="a"), History(url, host="b")]
    real = review.stored_image
    barrier = threading.Barrier(2)

    def both_past_the_check(result: ResultRow):
        barrier.wait(timeout=600)
        return real(result)

    review.stored_image = both_past_the_check  # type: ignore[assignment]
    clean = double_decisions = double_actions = both = none = 0
    logged = 0
    start = time.perf_counter()
    try:
        for _ in range(rounds):
            made = histories[0].record_line_record({
                "time": time.time(), "source": "watch", "id": uuid.uuid4().hex, "name": image.name,
                "category": CATEGORY, "model": KIND, "version": 1, "verdict": "REVIEW", "score": 1.0,
                "threshold": 1.0, "path": str(image)})
            assert made is not None
            acted: list[str] = []

            def decide(history: History, defect: str, result_id: int = made.id) -> None:
                row = history.result(result_id)
                assert row is not None
                try:
                    review.decide(history, store, data, row, "DEFECT", f"rev-{defect}", defect=defect, load=stand_in)
                    acted.append(defect)
                except review.ReviewError as exc:
                    if "nothing done" not in str(exc):
                        raise

            threads = [threading.Thread(target=decide, args=(h, d))
                       for h, d in zip(histories, ("dent", "scratch"), strict=True)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(900)
            decisions = len(histories[0].reviews(result_id=made.id))
            now = sum(1 for e in store.read_feedback(CATEGORY, KIND) if e.get("action") == feedback.MARK_DEFECT)
            new_actions, logged = now - logged, now
            double_decisions += decisions > 1
            double_actions += new_actions > 1
            both += len(acted) > 1
            none += not acted
            clean += decisions == 1 and new_actions == 1 and len(acted) == 1
    finally:
        review.stored_image = real
        for history in histories:
            history.close()
    return Tally(backend, rounds, clean, double_decisions, double_actions, both, none, time.perf_counter() - start)


def load_line() -> str:
    return Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sqlite-rounds", type=int, default=500)
    parser.add_argument("--postgres-rounds", type=int, default=200)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    tallies: list[Tally] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="review-race-") as tmp:
        if args.sqlite_rounds:
            root = Path(tmp) / "sqlite"
            tallies.append(race(f"sqlite:///{root / 'history.sqlite3'}", "SQLite (WAL file)", args.sqlite_rounds,
                                root))
            print(tallies[-1], flush=True)
        if args.postgres_rounds:
            try:
                with postgres() as url:
                    tallies.append(race(url, "PostgreSQL (local server)", args.postgres_rounds, Path(tmp) / "pg"))
                    print(tallies[-1], flush=True)
            except RuntimeError as exc:
                notes.append(f"PostgreSQL skipped: {exc}.")
    lines = [f"Machine: {machine()}; load average {load_line()} at the end (correctness only: the seconds are not "
             "a timing).", "Command: `python benchmarks/bench_review_race.py "
             f"--sqlite-rounds {args.sqlite_rounds} --postgres-rounds {args.postgres_rounds}`.", "",
             "Per round two reviewers (two threads, each its own History and connections) answer the same new "
             "part DEFECT at once, both let past the quick check before either claims.", "",
             "| database | rounds | clean (1 decision, 1 action, 1 acted) | double decisions | double actions | "
             "both acted | none acted | seconds |", "|---|---|---|---|---|---|---|---|"]
    for t in tallies:
        lines.append(f"| {t.backend} | {t.rounds} | {t.clean} | {t.double_decisions} | {t.double_actions} | "
                     f"{t.both_acted} | {t.none_acted} | {t.seconds:.0f} |")
    lines += [""] + notes if notes else []
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("review_race", body)
    bad = sum(t.double_decisions + t.double_actions + t.both_acted + t.none_acted for t in tallies)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
