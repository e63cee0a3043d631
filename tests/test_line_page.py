"""The Line page (AppTest): what the service and the watch folder rejected is shown with the reason."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.line import results_log as line_log

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
    images = next(t for t in tables if "status" not in t.columns)
    assert len(images) == 3 and set(images["verdict"]) == {"OK"}


def test_a_log_with_only_rejected_requests_still_draws(line_page) -> None:
    open_page, log = line_page
    line_log.append(log, {"time": time.time(), "source": "service", "category": "demo_metal", "name": "",
                          "verdict": "REJECTED", "status": 415, "reason": "expected images, found none"})
    at = open_page()
    assert {m.label: m.value for m in at.metric}["Rejected (last 500)"] == "1"
    assert [list(d.value["reason"]) for d in at.dataframe] == [["expected images, found none"]]
