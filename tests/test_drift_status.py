"""Drift status over the results database (core.verdict.drift_status): hand-made histories in a temporary SQLite
file, a hand-made calibration (good scores mean 10, std 1)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest

from core.scores.calibration import calibrate
from core.scores.drift import DriftRule
from core.store.history import History
from core.store.lifecycle import LoadedModel
from core.store.model_store import ModelRef
from core.types import Prediction
from core.verdict.drift_status import DriftWatch, drift_status
from tests.test_history import new_database

RULE = DriftRule(window=5, allowance=0.5, limit=4.0)


def _model(tmp_path: Path, version: int = 1) -> LoadedModel:
    goods = [Prediction(s, np.full((4, 4), s, dtype=np.float32), 1.0) for s in (9.0, 11.0) * 10]  # mean 10, std 1
    cal = calibrate(goods, "hand-made")
    assert (cal.good_score_mean, cal.good_score_std) == (10.0, 1.0)
    return LoadedModel(ModelRef(str(tmp_path / "models"), "cat", "patchcore", version), detector=None,  # type: ignore[arg-type]
                       manifest={}, calibration=cal)


@pytest.fixture()
def history(tmp_path: Path):
    with History(f"sqlite:///{tmp_path / 'h.sqlite3'}") as opened:
        yield opened


def _judge(history: History, scores: list[float], version: int = 1, start: float = 1000.0,
           verdict: str = "OK") -> None:
    for i, score in enumerate(scores):
        history.record_result(time=start + i, source="watch", category="cat", kind="patchcore", version=version,
                              verdict=verdict, score=score, threshold=13.0, journal_id=f"v{version}-{start}-{i}")


def test_calm_scores_raise_no_alarm(history: History, tmp_path: Path) -> None:
    _judge(history, [10.0, 10.5, 9.5, 10.2, 9.8] * 8)  # medians near 0 spreads: S stays 0
    status = drift_status(history, _model(tmp_path), RULE)
    assert status.report.n == 40 and status.report.cusum == 0.0
    assert not status.alarm and not status.recorded and history.alarms() == []
    assert status.answer()["alarm"] is False and status.answer()["median_z"] == pytest.approx(0.0)


def test_a_shift_records_one_alarm(history: History, tmp_path: Path) -> None:
    # refused and NO VERDICT rows are not read; 5 calm images, then good parts 2 spreads up
    history.record_result(time=999.0, source="service", category="cat", kind="patchcore", version=1,
                          verdict="NO VERDICT", score=100.0)
    _judge(history, [10.0] * 5 + [12.0] * 6)
    model = _model(tmp_path)
    # hand-computed: medians of 5 from image 5: 0,0,0,2(t=7: 10,10,12,12,12 -> 2),2,2,2 ... S = 1.5 at t=7,
    # 3.0 at t=8, 4.5 at t=9 > 4: alarm at index 9; at t=10 S = 6.0
    first = drift_status(history, model, RULE)
    assert first.report.alarm_at == 9 and first.report.cusum == pytest.approx(6.0)
    assert first.alarm and first.recorded
    [alarm] = history.alarms()
    assert (alarm.category, alarm.kind, alarm.version, alarm.rule) == ("cat", "patchcore", 1, "cusum")
    assert alarm.statistic == pytest.approx(6.0) and alarm.limit == 4.0 and "DRIFT" in alarm.message
    again = drift_status(history, model, RULE)  # still alarming: no second row
    assert again.alarm and not again.recorded and again.open_alarm == alarm
    assert len(history.alarms()) == 1
    # resolved by a person: the run starts again after the resolution, calm from there
    history.resolve_alarm(alarm.id, "qe", time=2000.0)
    _judge(history, [10.0] * 6, start=2001.0)
    fresh = drift_status(history, model, RULE)
    assert fresh.since == 2000.0 and fresh.report.n == 6 and not fresh.alarm and len(history.alarms()) == 1


def test_a_new_version_starts_fresh(history: History, tmp_path: Path) -> None:
    _judge(history, [14.0] * 10, version=1)
    assert drift_status(history, _model(tmp_path, 1), RULE).recorded
    _judge(history, [10.0] * 3, version=2, start=5000.0)
    second = drift_status(history, _model(tmp_path, 2), RULE)
    assert second.report.n == 3 and not second.alarm and second.open_alarm is None
    assert [a.version for a in history.alarms()] == [1]


def test_drift_watch_computes_at_most_once_per_interval(history: History, tmp_path: Path) -> None:
    now = [0.0]
    refreshed: list[int] = []
    watch = DriftWatch(lambda: history, RULE, interval_s=5.0, refresh=lambda h: refreshed.append(1),
                       clock=lambda: now[0])
    model = _model(tmp_path)
    assert watch.answer(model)["n"] == 0
    _judge(history, [14.0] * 10)
    now[0] = 4.9
    assert watch.answer(model)["n"] == 0 and len(refreshed) == 1  # reused: not per request
    now[0] = 5.0
    answer = watch.answer(model)
    assert answer["n"] == 10 and answer["alarm"] is True and len(refreshed) == 2
    assert [s.version for s in watch.latest()] == [1]


def test_drift_watch_in_the_background_answers_the_stale_status_at_once(history: History, tmp_path: Path) -> None:
    import time

    now = [0.0]
    watch = DriftWatch(lambda: history, RULE, interval_s=5.0, clock=lambda: now[0], background=True)
    model = _model(tmp_path)
    assert watch.answer(model)["n"] == 0  # the first status: computed by the caller
    _judge(history, [14.0] * 10)
    now[0] = 6.0
    assert watch.answer(model)["n"] == 0  # stale: answered at once, a thread computes the next
    for _ in range(200):
        if watch.answer(model)["n"] == 10:
            break
        time.sleep(0.05)
    assert watch.answer(model)["n"] == 10 and watch.answer(model)["alarm"] is True


def test_drift_watch_says_when_the_database_cannot_be_read(tmp_path: Path) -> None:
    def broken() -> History:
        raise OSError("disk gone")

    answer = DriftWatch(broken, RULE).answer(_model(tmp_path))
    assert answer["alarm"] is False and answer["median_z"] is None
    assert answer["message"] == "drift watch unavailable: disk gone"


# -- the surfaces: the service's answers and /metrics, the watch folder's log -----------------------------------


@pytest.fixture()
def store(trained_store: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(trained_store, tmp_path / "models")
    return tmp_path / "models"


def _shifted_rows(store: Path, log: Path, kind: str, n: int, spreads: float, source: str = "service") -> None:
    """``n`` line-log rows of the current ``kind`` version of demo_metal, ``spreads`` calibration spreads up."""
    from core.line import results_log as line_log
    from core.store import lifecycle
    from core.store.model_store import ModelStore

    ref = ModelStore(store).current("demo_metal", kind)
    cal = lifecycle.read_calibration(ref)
    score = cal.good_score_mean + spreads * max(cal.good_score_std, 1e-6)
    for i in range(n):
        line_log.append(log, {"time": 1000.0 + i, "source": source, "category": "demo_metal", "name": f"{i}.png",
                              "score": score, "threshold": cal.image_threshold, "verdict": "REVIEW",
                              "model": kind, "version": ref.version, "latency_ms": 1.0, "reason": ""})


def test_service_answers_and_metrics_carry_the_drift_watch(store: Path, tmp_path: Path, demo_root: Path) -> None:
    import time

    from fastapi.testclient import TestClient

    from core.line.service import ServiceConfig, create_app

    log = tmp_path / "line.jsonl"
    _shifted_rows(store, log, "patchcore", 40, 3.0)  # 40 images 3 spreads up: the default rule alarms
    app = create_app(ServiceConfig(store, line_log=log))
    good = (demo_root / "demo_metal" / "test" / "good" / "000.png").read_bytes()
    with TestClient(app) as client:
        for _ in range(600):
            if client.get("/ready").status_code == 200:
                break
            time.sleep(0.1)
        answer = client.post("/v1/inspect/demo_metal", content=good, headers={"Content-Type": "image/png"}).json()
        drift = answer["drift"]
        assert drift["alarm"] is True and drift["median_z"] == pytest.approx(3.0, abs=0.01)
        assert drift["message"].startswith("DRIFT") and drift["n"] >= 40
        calm = client.post("/v1/inspect/demo_metal?model=efficientad", content=good,
                           headers={"Content-Type": "image/png"}).json()["drift"]
        assert calm["alarm"] is False and calm["n"] == 1
        metrics = client.get("/metrics").text
    assert 'inspect_drift_alarm{category="demo_metal",model="patchcore"} 1.0' in metrics
    assert 'inspect_drift_alarm{category="demo_metal",model="efficientad"} 0.0' in metrics
    assert 'inspect_drift_cusum{category="demo_metal",model="patchcore"}' in metrics
    with History.open(store, line_log=log) as history:
        assert [(a.category, a.kind) for a in history.alarms()] == [("demo_metal", "patchcore")]  # once


def test_watch_folder_warns_once_per_drift_alarm(store: Path, tmp_path: Path, demo_root: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import shutil

    from core.line.watch import WatchConfig, Watcher
    from core.store.model_cache import ModelCache
    from core.store.model_store import ModelStore

    log = tmp_path / "line.jsonl"
    _shifted_rows(store, log, "patchcore", 40, 3.0, source="watch")
    folder = tmp_path / "in"
    folder.mkdir()
    config = WatchConfig(folder, tmp_path / "ok", tmp_path / "defect", tmp_path / "rejected", tmp_path / "r.csv",
                         settle=0.0, poll=0.0, line_log=log)
    cache = ModelCache(ModelStore(store))
    watcher = Watcher(config, lambda: cache.current("demo_metal", "patchcore"))
    good = demo_root / "demo_metal" / "test" / "good"
    with caplog.at_level(logging.WARNING, logger="core.line.watch"):
        for name in ("000.png", "001.png"):
            shutil.copy(good / name, folder / name)
            watcher.run(once=True)
            assert watcher.drift is not None  # built over the store's database at the first check
            watcher.drift.interval_s = 0.0  # the next check computes again and finds the same open alarm
    warned = [r.getMessage() for r in caplog.records if r.name == "core.line.watch" and "DRIFT" in r.getMessage()]
    assert len(warned) == 1 and "demo_metal/patchcore" in warned[0]


# -- issue 24 gap 3: one alarm per episode across processes (the database decides, not a lock of the process) -----


def _stale_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every process checks for an open alarm before any records one (the race two hosts run at the same
    instant): the check for open alarms finds none."""
    real = History.alarms

    def stale(self: History, **filters):
        return [] if filters.get("open_only") else real(self, **filters)

    monkeypatch.setattr(History, "alarms", stale)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_processes_alarming_at_once_record_one_alarm_per_episode(
        backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    with contextlib.ExitStack() as stack:
        url = (f"sqlite:///{tmp_path / 'h.sqlite3'}" if backend == "sqlite"
               else stack.enter_context(new_database(request.getfixturevalue("postgres_server"))))
        _race_once(url, tmp_path, monkeypatch)


def _race_once(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model(tmp_path)
    with History(url, host="a") as a, History(url, host="b") as b:
        _judge(a, [14.0] * 10)
        _stale_check(monkeypatch)
        first, second = drift_status(a, model, RULE), drift_status(b, model, RULE)
        assert first.recorded and not second.recorded  # the second finds the episode's alarm in the database
        assert second.open_alarm == first.open_alarm and second.alarm
        [alarm] = a.alarms()
        # resolved: a new episode, whose alarm is recorded once again
        monkeypatch.undo()
        a.resolve_alarm(alarm.id, "qe", time=2000.0)
        _judge(a, [14.0] * 10, start=2001.0)
        _stale_check(monkeypatch)
        third, fourth = drift_status(b, model, RULE), drift_status(a, model, RULE)
        assert third.recorded and not fourth.recorded and third.open_alarm == fourth.open_alarm
        assert len(a.alarms()) == 2 and len(a.alarms(open_only=False)) == 2


def test_threads_of_two_histories_racing_record_one_alarm(tmp_path: Path) -> None:
    import threading

    url = f"sqlite:///{tmp_path / 'h.sqlite3'}"
    model = _model(tmp_path)
    histories = [History(url, host=f"h{i}") for i in range(4)]
    try:
        _judge(histories[0], [14.0] * 10)
        go = threading.Barrier(len(histories))
        found: list[bool] = []

        def check(history: History) -> None:
            go.wait()
            found.append(drift_status(history, model, RULE).recorded)

        threads = [threading.Thread(target=check, args=(h,)) for h in histories]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(found) == [False, False, False, True] and len(histories[0].alarms()) == 1
    finally:
        for history in histories:
            history.close()


def test_a_defect_counts_at_its_threshold(history: History, tmp_path: Path) -> None:
    """Issue 24 gap 5: a DEFECT verdict's score is read at most at the threshold it was judged against (13.0 =
    3 spreads), so a burst of defects moves the windowed median no further than the threshold; OK and REVIEW
    scores count as they are. Hand-computed: six DEFECT rows scoring 30 read as z = 3: S = 2.5 at the fifth,
    5.0 at the sixth (alarm there); uncapped, z = 20 would give S = 19.5, 39.0."""
    _judge(history, [30.0] * 6, verdict="DEFECT")
    status = drift_status(history, _model(tmp_path), RULE)
    assert status.report.cusum_trace == pytest.approx((0, 0, 0, 0, 2.5, 5.0))
    assert status.report.alarm_at == 5 and status.report.median_z == pytest.approx(3.0)
    _judge(history, [15.0] * 5, verdict="REVIEW", start=2000.0)  # not capped: z = 5
    assert drift_status(history, _model(tmp_path), RULE).report.median_z == pytest.approx(5.0)


def test_recalibration_fits_from_spot_checks_when_there_are_enough(history: History, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 24 gap 2: the goods confirmed in the queue from REVIEW/DEFECT verdicts are the high-scoring ones; the
    recalibration takes the confirmed spot checks (OK verdicts sent to the queue by image hash) once there are
    MIN_CONFIRMED, else every confirmed good, and says which it used."""
    from PIL import Image

    from core.verdict import drift_status as ds

    monkeypatch.setenv("INSPECT_SPOT_CHECK", "1")  # every OK verdict with a hash is a spot check
    model = _model(tmp_path)

    def confirm(verdict: str, value: int, i: int) -> None:
        path = tmp_path / "line" / f"{verdict}-{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)
        made = history.record_line_record({"time": 1000.0 + i, "source": "watch", "id": f"r-{i}", "sha1": f"{i:040x}",
                                           "category": "cat", "model": "patchcore", "version": 1, "verdict": verdict,
                                           "score": 11.0, "threshold": 13.0, "path": str(path)})
        assert made is not None
        history.record_review(made.id, "OK", "qe", time=2000.0 + i)

    seen: list[int] = []

    def measure(images):
        seen[:] = [int(im.mean()) for im in images]
        return [Prediction(10.0, np.zeros((4, 4), np.float32), 1.0) for _ in images]

    monkeypatch.setattr(ds, "recalibrate_from_line", lambda loaded, predictions: loaded.ref)
    monkeypatch.setattr(ds, "read_calibration", lambda ref: model.calibration)
    for i in range(12):
        confirm("REVIEW", 200, i)
    for i in range(ds.MIN_CONFIRMED - 1):
        confirm("OK", 50, 100 + i)
    few = ds.recalibrate_from_history(history, model, measure, by="qe")
    assert few.images == ds.RECALIBRATE_FROM and sorted(set(seen)) == [50, 200]
    assert "biased toward high scores: only 9 spot checks confirmed, 10 needed" in few.describe()
    confirm("OK", 50, 200)
    enough = ds.recalibrate_from_history(history, model, measure, by="qe")
    assert enough.images == ds.MIN_CONFIRMED and set(seen) == {50}
    assert "10 spot checks of OK verdicts, an unbiased sample" in enough.describe()
