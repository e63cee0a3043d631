"""The Line page (AppTest) on the results database: filters, trends per hour and shift, the drift alarm banner,
*Recalibrate from the line*, and what the service and the watch folder rejected, shown with the reason."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.line import results_log as line_log
from core.scores.calibration import Calibration
from core.store import lifecycle
from core.store.history import History
from core.store.model_store import ModelStore

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def line_page(demo_root: Path, trained_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    store = tmp_path / "models"
    shutil.copytree(trained_store, store)
    monkeypatch.setenv("INSPECT_DATA_ROOT", str(demo_root))
    monkeypatch.setenv("INSPECT_MODEL_STORE", str(store))
    monkeypatch.setenv("INSPECT_LINE_LOG", str(tmp_path / "line.jsonl"))
    monkeypatch.delenv("QDRANT_URL", raising=False)

    def open_page() -> AppTest:
        at = AppTest.from_string((ROOT / "app.py").read_text(), default_timeout=120)
        at.run()
        at.switch_page(str(ROOT / "pages" / "line.py"))
        at.run()
        assert not at.exception, at.exception
        return at

    return open_page, tmp_path / "line.jsonl"


@pytest.fixture()
def history(line_page, tmp_path: Path):
    """The store's results database, as the page opens it (the line log imported)."""
    with History.open(tmp_path / "models", line_log=tmp_path / "line.jsonl") as opened:
        yield opened


def _current(tmp_path: Path, kind: str = "patchcore") -> tuple[int, Calibration]:
    ref = ModelStore(tmp_path / "models").current("demo_metal", kind)
    return ref.version, lifecycle.read_calibration(ref)


def _row(history: History, when: float, verdict: str, score: float, kind: str = "patchcore", version: int = 1,
         path: str | None = None, name: str = "x.png") -> int:
    return history.record_result(time=when, source="watch", category="demo_metal", kind=kind, version=version,
                                 verdict=verdict, score=score, threshold=1.0, name=name, path=path,
                                 journal_id=f"{kind}-{version}-{when}-{name}", latency_ms=5.0).id


def test_rejected_requests_and_files_are_shown_with_the_reason(line_page, tmp_path: Path) -> None:
    open_page, log = line_page
    now = time.time()
    for i in range(3):
        line_log.append(log, {"time": now - i, "source": "service", "category": "demo_metal", "name": f"{i}.png",
                              "score": 1.0, "threshold": 10.0, "verdict": "OK", "model": "patchcore", "version": 1,
                              "latency_ms": 10.0, "reason": ""})
    broken = tmp_path / "rejected" / "cam-0123abcd.png"  # a file the watch folder kept in rejected/
    broken.parent.mkdir()
    broken.write_bytes(b"\x89PNG\r\n\x1a\n cut")
    line_log.append(log, {"time": now, "source": "watch", "category": "demo_metal", "name": "cam.png",
                          "score": None, "threshold": 10.0, "verdict": "REJECTED", "model": "patchcore",
                          "version": 1, "latency_ms": None, "reason": "image data is damaged or truncated",
                          "path": str(broken)})
    line_log.append(log, {"time": now, "source": "service", "category": "nope", "name": "", "verdict": "REJECTED",
                          "status": 404, "reason": "expected a trained model for nope", "model": "patchcore"})
    line_log.append(log, {"time": now, "source": "service", "category": "demo_metal", "name": "big.png",
                          "verdict": "REJECTED", "status": 413, "reason": "expected at most 50 bytes",
                          "model": "patchcore"})
    at = open_page()
    values = {m.label: m.value for m in at.metric}
    assert values["Images (last 500)"] == "3" and values["Rejected (last 500)"] == "3"
    tables = [d.value for d in at.dataframe]
    rejected = next(t for t in tables if "status" in t.columns)
    assert len(rejected) == 3  # every category: a request for an unknown one is shown too
    assert set(rejected["reason"]) == {"image data is damaged or truncated", "expected a trained model for nope",
                                       "expected at most 50 bytes"}
    assert "nope" in set(rejected["category"])
    images = _table(at, "line_results")
    assert len(images) == 3 and set(images["verdict"]) == {"OK"}


def test_a_log_with_only_rejected_requests_still_draws(line_page) -> None:
    open_page, log = line_page
    line_log.append(log, {"time": time.time(), "source": "service", "category": "demo_metal", "name": "",
                          "verdict": "REJECTED", "status": 415, "reason": "expected images, found none"})
    at = open_page()
    assert {m.label: m.value for m in at.metric}["Rejected (last 500)"] == "1"
    assert [list(d.value["reason"]) for d in at.dataframe] == [["expected images, found none"]]


def _table(at: AppTest, which: str):
    """The page's table ``which``: ``line_results``, ``line_trend_hour`` or ``line_trend_shift`` (told apart by
    their columns and bucket labels)."""
    tables = [d.value for d in at.dataframe]
    if which == "line_results":
        return next(t for t in tables if "threshold" in t.columns)
    trends = [t for t in tables if "drift CUSUM" in t.columns]
    shift = which == "line_trend_shift"
    return next(t for t in trends if t["bucket"].str.contains("shift").all() == shift)


def test_filters_choose_the_rows(line_page, history: History, tmp_path: Path) -> None:
    open_page, _ = line_page
    version, _ = _current(tmp_path)
    now = time.time()
    for i, verdict in enumerate(["OK", "OK", "REVIEW", "DEFECT"]):
        _row(history, now - 60 * i, verdict, 0.1 * i, version=version, name=f"p{i}.png")
    _row(history, now - 3 * 86400, "OK", 0.1, version=version, name="old.png")  # outside the last 24 hours
    _row(history, now - 30, "REVIEW", 0.5, kind="efficientad", version=1, name="e.png")
    at = open_page()
    results = _table(at, "line_results")
    assert sorted(results["name"]) == ["p0.png", "p1.png", "p2.png", "p3.png"]  # demo_metal/patchcore, 24 h
    at.multiselect(key="line_verdicts").set_value(["REVIEW"]).run()
    assert list(_table(at, "line_results")["name"]) == ["p2.png"]
    at.selectbox(key="line_kind").set_value("efficientad").run()
    assert list(_table(at, "line_results")["name"]) == ["e.png"]
    at.selectbox(key="line_kind").set_value("patchcore").run()
    at.multiselect(key="line_verdicts").set_value(["OK"]).run()
    at.selectbox(key="line_range").set_value("Everything").run()
    assert not at.exception, at.exception
    assert sorted(_table(at, "line_results")["name"]) == ["old.png", "p0.png", "p1.png"]


def test_trends_per_hour_and_shift(line_page, history: History, tmp_path: Path) -> None:
    open_page, _ = line_page
    version, _ = _current(tmp_path)
    hour = (time.time() // 3600 - 2) * 3600  # two whole hours ago, one bucket of its own
    for i, verdict in enumerate(["OK", "OK", "REVIEW", "DEFECT"]):
        _row(history, hour + 60 * i, verdict, float(i), version=version, name=f"h{i}.png")
    at = open_page()
    per_hour = _table(at, "line_trend_hour")
    first = per_hour.iloc[0]
    assert first["images"] == 4 and first["REVIEW rate"] == pytest.approx(0.25)
    assert first["DEFECT rate"] == pytest.approx(0.25) and first["score median"] == pytest.approx(1.5)
    assert "drift CUSUM" in per_hour.columns  # 4 images: no window yet, CUSUM 0
    assert per_hour.iloc[0]["drift CUSUM"] == pytest.approx(0.0)
    per_shift = _table(at, "line_trend_shift")
    assert per_shift["images"].sum() == 4 and "shift" in per_shift.iloc[0]["bucket"]


def test_drift_alarm_banner(line_page, history: History, tmp_path: Path) -> None:
    open_page, _ = line_page
    version, cal = _current(tmp_path)
    at = open_page()
    assert not at.error and any("no reading yet" in c.value for c in at.caption)
    now = time.time()
    shifted = cal.good_score_mean + 3 * max(cal.good_score_std, 1e-6)
    for i in range(40):
        _row(history, now - 400 + i, "REVIEW", shifted, version=version, name=f"s{i}.png")
    at = open_page()
    banner = [e.value for e in at.error]
    assert len(banner) == 1 and "Drift alarm" in banner[0] and "DRIFT" in banner[0]
    assert "+3.00 calibration spreads" in banner[0]
    assert len(history.alarms(category="demo_metal", kind="patchcore", open_only=True)) == 1


def _confirmed(history: History, tmp_path: Path, demo_root: Path, n: int, version: int) -> None:
    """``n`` line images (the demo's good ones, copied) judged REVIEW and confirmed OK by a reviewer."""
    kept = tmp_path / "kept"
    kept.mkdir(exist_ok=True)
    goods = sorted((demo_root / "demo_metal" / "train" / "good").glob("*.png"))
    now = time.time()
    for i in range(n):
        path = kept / f"{i}.png"
        shutil.copy(goods[i % len(goods)], path)
        result = _row(history, now - 100 + i, "REVIEW", 1.0, version=version, path=str(path), name=f"c{i}.png")
        history.record_review(result, "OK", "reviewer")


def test_recalibrate_from_the_line(line_page, history: History, tmp_path: Path, demo_root: Path) -> None:
    open_page, _ = line_page
    version, cal = _current(tmp_path)
    shifted = cal.good_score_mean + 3 * max(cal.good_score_std, 1e-6)
    for i in range(40):
        _row(history, time.time() - 1000 + i, "REVIEW", shifted, version=version, name=f"s{i}.png")
    _confirmed(history, tmp_path, demo_root, 12, version)
    at = open_page()
    assert at.error  # the alarm
    at.button(key="line_recalibrate").click().run()
    assert not at.exception, at.exception
    store = ModelStore(tmp_path / "models")
    ref = store.current("demo_metal", "patchcore")
    assert ref.version == version + 1 and store.read_manifest(ref)["reason"] == "recalibrated from line"
    assert lifecycle.read_calibration(ref).num_images == 12
    done = [s.value for s in at.success]
    assert len(done) == 1 and f"v{version} -> v{version + 1}" in done[0] and "image threshold" in done[0]
    assert "1 drift alarm(s) resolved" in done[0]
    assert history.alarms(open_only=True) == [] and not at.error  # the new version starts fresh


def test_recalibrate_offered_only_from_ten_confirmed_images(line_page, history: History, tmp_path: Path,
                                                             demo_root: Path) -> None:
    """Below 10 confirmed goods the button cannot be clicked and says how many there are (a click used to answer
    with an error after the fact); the refusal itself stays in core (tests/test_recalibrate.py)."""
    open_page, _ = line_page
    version, _ = _current(tmp_path)
    at = open_page()
    assert at.button(key="line_recalibrate").disabled
    _confirmed(history, tmp_path, demo_root, 5, version)
    at = open_page()
    button = at.button(key="line_recalibrate")
    assert button.disabled and "5 of 10" in button.label
    assert ModelStore(tmp_path / "models").current("demo_metal", "patchcore").version == version
