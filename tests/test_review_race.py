"""The review queue's decision happens once (issue 24 gap 1): two reviewers racing on the same part (threads on
SQLite and PostgreSQL, processes on PostgreSQL) make one decision and one action, and a decision killed at every
step boundary (core.files.STEP_HOOK) leaves the part decided with its action done once, or back in the queue with
nothing done. The model is a store version with stand-in weights: a DEFECT decision only files the image and logs
it, so no network is loaded."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.models.registry import spec
from core.store.history import History
from core.store.lifecycle import LoadedModel
from core.store.model_store import ModelRef, ModelStore
from core.verdict import feedback, review
from tests.test_history import new_database

ROOT = Path(__file__).resolve().parents[1]
CATEGORY, KIND = "cat", "patchcore"


def stand_in(ref: ModelRef) -> LoadedModel:
    """A loaded model without a network: what a DEFECT decision needs (its version, the store)."""
    return LoadedModel(ref, detector=None, manifest={}, calibration=None)  # type: ignore[arg-type]


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


def add_result(history: History, image: Path) -> int:
    recorded = history.record_line_record({"time": time.time(), "source": "watch", "id": uuid.uuid4().hex,
                                           "name": image.name, "category": CATEGORY, "model": KIND, "version": 1,
                                           "verdict": "REVIEW", "score": 1.0, "threshold": 1.0, "path": str(image)})
    assert recorded is not None
    return recorded.id


def actions(store: ModelStore) -> list[dict]:
    return [e for e in store.read_feedback(CATEGORY, KIND) if e.get("action") == feedback.MARK_DEFECT]


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'history.sqlite3'}"
        return
    with new_database(request.getfixturevalue("postgres_server")) as made:
        yield made


# -- two reviewers at once -----------------------------------------------------------------------------------------


def test_two_reviewers_in_threads_past_the_quick_check_make_one_decision(
        url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both reviewers pass the quick 'already reviewed?' check before either claims (a barrier where the image is
    read, between the check and the claim): the claim alone decides, 20 rounds."""
    store, data, image = make_line(tmp_path)
    histories = [History(url, host="a"), History(url, host="b")]
    real = review.stored_image
    barrier = threading.Barrier(2)

    def both_past_the_check(result):
        barrier.wait(timeout=600)
        return real(result)

    monkeypatch.setattr(review, "stored_image", both_past_the_check)
    try:
        for round_ in range(20):
            result_id = add_result(histories[0], image)
            outcomes: list[str] = []

            def decide(history: History, defect: str) -> None:
                row = history.result(result_id)
                assert row is not None
                try:
                    review.decide(history, store, data, row, "DEFECT", f"rev-{defect}", defect=defect, load=stand_in)
                    outcomes.append("acted")
                except review.ReviewError as exc:
                    assert "nothing done" in str(exc)
                    outcomes.append("refused")

            threads = [threading.Thread(target=decide, args=(h, d)) for h, d in zip(histories, ("dent", "scratch"),
                                                                                  strict=True)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(900)
            assert sorted(outcomes) == ["acted", "refused"], round_
            assert len(histories[0].reviews(result_id=result_id)) == 1, round_
            assert len(actions(store)) == round_ + 1, round_
    finally:
        for history in histories:
            history.close()


_RACER = """
import sys, time
from pathlib import Path
from core.models.registry import spec
from core.store.history import History
from core.store.model_store import ModelStore
from core.verdict import review
from tests.test_review_race import stand_in
url, store_root, data_root, result_id, defect, ready, me = sys.argv[1:8]
real = review.stored_image
def both_past_the_check(result):
    (Path(ready) / me).touch()
    deadline = time.time() + 600
    while len(list(Path(ready).iterdir())) < 2 and time.time() < deadline:
        time.sleep(0.005)
    return real(result)
review.stored_image = both_past_the_check
history = History(url, host=me)
row = history.result(int(result_id))
try:
    review.decide(history, ModelStore(store_root), Path(data_root), row, "DEFECT", me, defect=defect, load=stand_in)
    print("acted")
except review.ReviewError as exc:
    print("refused:", exc)
"""


def test_two_reviewer_processes_on_postgresql_make_one_decision(request: pytest.FixtureRequest,
                                                                tmp_path: Path) -> None:
    """Two processes (two hosts' dashboards) on one PostgreSQL server, both past the quick check: one acts."""
    store, data, image = make_line(tmp_path)
    with new_database(request.getfixturevalue("postgres_server")) as url, History(url) as history:
        for round_ in range(3):
            result_id = add_result(history, image)
            ready = tmp_path / f"ready-{round_}"
            ready.mkdir()
            procs = [subprocess.Popen([sys.executable, "-c", _RACER, url, str(store.root), str(data), str(result_id),
                                       defect, str(ready), me], cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
                     for me, defect in (("a", "dent"), ("b", "scratch"))]
            outputs = [p.communicate(timeout=1500) for p in procs]
            for proc, (_out, err) in zip(procs, outputs, strict=True):
                assert proc.returncode == 0, err[-2000:]
            said = sorted(out.split(":")[0].strip() for out, _ in outputs)
            assert said == ["acted", "refused"], outputs
            assert "nothing done" in next(out for out, _ in outputs if out.startswith("refused"))
            assert len(history.reviews(result_id=result_id)) == 1
            assert len(actions(store)) == round_ + 1


# -- killed at every step ------------------------------------------------------------------------------------------

_KILLED = """
import os, sys
from pathlib import Path
from core import files
from core.models.registry import spec
from core.store.history import History
from core.store.model_store import ModelStore
from core.verdict import review
from tests.test_review_race import stand_in
url, store_root, data_root, result_id, target = sys.argv[1:6]
names = []
def hook(name):
    names.append(name)
    print(name, flush=True)
    if len(names) == int(target):
        os._exit(70)
files.STEP_HOOK = hook
history = History(url)
row = history.result(int(result_id))
review.decide(history, ModelStore(store_root), Path(data_root), row, "DEFECT", "ana", defect="scratch", load=stand_in)
"""


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _KILLED, *args], capture_output=True, text=True, timeout=1500,
                          cwd=ROOT)


def test_a_decision_killed_at_any_step_is_done_once_or_back_in_the_queue(tmp_path: Path) -> None:
    """Kill (os._exit) the deciding process at every step boundary (claim committed, the image's temp file
    written, renamed, the action done, the note written); after the claim's lease the part is either decided
    with one action, or back in the queue with none, and answering it then makes exactly one action."""
    base = tmp_path / "base"
    make_line(base)
    with History(f"sqlite:///{base / 'history.sqlite3'}") as history:
        result_id = add_result(history, base / "line" / "part.png")
    shutil.copytree(base, tmp_path / "dry")
    dry = _run(f"sqlite:///{tmp_path / 'dry' / 'history.sqlite3'}", str(tmp_path / "dry" / "models"),
               str(tmp_path / "dry" / "data"), str(result_id), "0")
    assert dry.returncode == 0, dry.stderr
    steps = dry.stdout.splitlines()
    assert [s for s in steps if s in review.STEPS] == list(review.STEPS) and len(steps) >= 5, steps
    done_at = steps.index("review action done") + 1  # killed at this step or later: the action was logged
    kept_or_not = []
    for number, step in enumerate(steps, start=1):
        root = tmp_path / f"kill{number}"
        shutil.copytree(base, root)
        url = f"sqlite:///{root / 'history.sqlite3'}"
        killed = _run(url, str(root / "models"), str(root / "data"), str(result_id), str(number))
        assert killed.returncode == 70, (step, killed.stderr[-2000:])
        store, data = ModelStore(root / "models"), root / "data"
        with History(url) as history:
            assert review.settle_claims(history, store) == []  # within the lease: a live process may still act
            settled = review.settle_claims(history, store, now=time.time() + review.CLAIM_LEASE_S + 5)
            decided = history.reviews(result_id=result_id)
            logged = actions(store)
            if decided:
                assert len(decided) == 1 and decided[0].note != review.CLAIMED, step
                assert len(logged) == 1 and Path(logged[0]["filed_as"]).is_file(), step
                assert review.pending(history, CATEGORY, store=store) == [], step
            else:
                assert logged == [], step
                assert [r.id for r in review.pending(history, CATEGORY, store=store)] == [result_id], step
                row = history.result(result_id)
                assert row is not None
                review.decide(history, store, data, row, "DEFECT", "bo", defect="scratch", load=stand_in)
                assert len(history.reviews(result_id=result_id)) == 1 and len(actions(store)) == 1, step
            kept_or_not.append((step, bool(decided), [s.kept for s in settled]))
        assert (number >= done_at) == bool(decided), (step, kept_or_not)
    assert any(d for _, d, _ in kept_or_not) and any(not d for _, d, _ in kept_or_not)


def test_an_abandoned_claim_within_its_lease_keeps_the_part_out_of_the_queue(tmp_path: Path) -> None:
    store, _data, image = make_line(tmp_path)
    with History(f"sqlite:///{tmp_path / 'h.sqlite3'}") as history:
        result_id = add_result(history, image)
        history.record_review(result_id, "DEFECT", "ana", defect="scratch", note=review.CLAIMED, first=True)
        assert review.pending(history, CATEGORY, store=store) == []  # ana's process may still be filing it
        later = time.time() + review.CLAIM_LEASE_S + 1
        [settled] = review.settle_claims(history, store, now=later)
        assert not settled.kept and history.reviews(result_id=result_id) == []


def test_a_decision_stopped_at_any_step_in_process_is_done_once_or_back_in_the_queue(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kill test above without a new process per step (quicker): the deciding thread stops for good at the
    step (it never returns, so no handler of decide runs, as after a kill; at no step does it hold a transaction or
    a lock), then the part is checked as after a restart."""
    from core import files

    base = tmp_path / "base"
    make_line(base)
    with History(f"sqlite:///{base / 'history.sqlite3'}") as history:
        result_id = add_result(history, base / "line" / "part.png")
    steps: list[str] = []
    deciding: dict[str, object] = {}

    def hook(name: str) -> None:
        if threading.current_thread() is not deciding.get("thread"):
            return
        steps.append(name)
        if len(steps) == deciding["stop_at"]:
            stopped = deciding["stopped"]
            assert isinstance(stopped, threading.Event)
            stopped.set()
            threading.Event().wait()  # frozen for good: nothing after this step runs

    monkeypatch.setattr(files, "STEP_HOOK", hook)

    def run(root: Path, stop_at: int) -> bool:
        """Decide in a thread stopped at step ``stop_at`` (0: never); True when it was stopped."""
        history = History(f"sqlite:///{root / 'history.sqlite3'}")
        row = history.result(result_id)
        assert row is not None
        stopped = threading.Event()
        thread = threading.Thread(target=review.decide, daemon=True, args=(
            history, ModelStore(root / "models"), root / "data", row, "DEFECT", "ana"),
            kwargs={"defect": "scratch", "load": stand_in})
        deciding.update(thread=thread, stop_at=stop_at, stopped=stopped)
        steps.clear()
        thread.start()
        while thread.is_alive() and not stopped.wait(0.05):
            pass
        return stopped.is_set()

    shutil.copytree(base, tmp_path / "dry")
    assert not run(tmp_path / "dry", 0)
    names = list(steps)
    assert [s for s in names if s in review.STEPS] == list(review.STEPS) and len(names) >= 5, names
    done_at = names.index("review action done") + 1
    for number, step in enumerate(names, start=1):
        root = tmp_path / f"stop{number}"
        shutil.copytree(base, root)
        assert run(root, number), step
        store, data = ModelStore(root / "models"), root / "data"
        with History(f"sqlite:///{root / 'history.sqlite3'}") as history:
            review.settle_claims(history, store, now=time.time() + review.CLAIM_LEASE_S + 5)
            decided = history.reviews(result_id=result_id)
            assert (number >= done_at) == bool(decided), step
            if decided:
                assert decided[0].note != review.CLAIMED and len(actions(store)) == 1, step
            else:
                assert actions(store) == [], step
                row = history.result(result_id)
                assert row is not None and [r.id for r in review.pending(history, CATEGORY, store=store)] == [row.id]
                deciding["thread"] = None
                review.decide(history, store, data, row, "DEFECT", "bo", defect="scratch", load=stand_in)
            assert len(history.reviews(result_id=result_id)) == 1 and len(actions(store)) == 1, step
