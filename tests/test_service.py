"""The inspection service: good and bad inputs, API key, versions picked up without a restart, metrics."""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core import detector as det
from core import line_log
from core.service import ServiceConfig, create_app
from core.store import ModelStore


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture()
def store(trained_store: Path, tmp_path: Path) -> Path:
    shutil.copytree(trained_store, tmp_path / "models")
    return tmp_path / "models"


@pytest.fixture()
def client(store: Path, tmp_path: Path):
    app = create_app(ServiceConfig(store, api_key="k3y", max_request_bytes=2_000_000, line_log=tmp_path / "line.jsonl"))
    with TestClient(app, headers={"X-API-Key": "k3y"}) as c:
        for _ in range(600):
            if c.get("/ready").status_code == 200:
                break
            time.sleep(0.1)
        yield c


def test_inspect_multipart_raw_and_overlay(client: TestClient, demo_root: Path, tmp_path: Path) -> None:
    scratch = (demo_root / "demo_metal" / "test" / "scratch" / "000.png").read_bytes()
    good = (demo_root / "demo_metal" / "test" / "good" / "000.png").read_bytes()
    r = client.post("/v1/inspect/demo_metal", files=[("files", ("a.png", scratch, "image/png")),
                                                     ("files", ("b.png", good, "image/png"))])
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["name"] for x in results] == ["a.png", "b.png"]
    assert results[0]["verdict"] == "DEFECT" and results[0]["normalized_score"] > 1.0
    assert {"score", "threshold", "verdict", "model", "version", "latency_ms"} <= set(results[0])
    r = client.post("/v1/inspect/demo_metal?model=efficientad&return=overlay", content=scratch,
                    headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    item = r.json()["results"][0]
    assert item["model"] == "efficientad" and item["version"] == 1
    assert Image.open(io.BytesIO(base64.b64decode(item["overlay_png_base64"]))).size == (64, 64)
    assert (tmp_path / "line.jsonl").read_text().count('"source": "service"') == 3


@pytest.mark.parametrize(("path", "kwargs", "status", "message"), [
    ("/v1/inspect/demo_metal", {"content": b"not an image", "headers": {"Content-Type": "image/png"}}, 415,
     "found none that could be read"),
    ("/v1/inspect/demo_metal", {"content": _png(np.zeros((64, 64, 3), np.uint8))[:60]}, 415, "could be read"),
    ("/v1/inspect/demo_metal", {"content": b""}, 422, "found an empty body"),
    ("/v1/inspect/demo_metal", {"content": b"x" * 2_000_001}, 413, "expected at most 2,000,000 bytes"),
    ("/v1/inspect/nope", {"content": b"x"}, 404, "expected a trained model"),
    ("/v1/inspect/..", {"content": b"x"}, 404, ""),
    ("/v1/inspect/demo_metal?model=vae", {"content": b"x"}, 404, "expected model in"),
    ("/v1/inspect/demo_metal?version=7", {"content": b"x"}, 404, "expected one of the versions [1]"),
    ("/v1/inspect/demo_metal?return=gif", {"content": b"x"}, 422, "expected return in"),
])
def test_bad_requests_get_4xx_with_the_reason(client: TestClient, path: str, kwargs: dict, status: int,
                                              message: str) -> None:
    r = client.post(path, **kwargs)
    assert r.status_code == status, r.text
    assert message in r.text


def test_api_key_required(store: Path) -> None:
    with TestClient(create_app(ServiceConfig(store, api_key="k3y"))) as c:
        assert c.get("/health").status_code == 200  # health and metrics stay open for the line's monitoring
        r = c.get("/v1/models")
        assert r.status_code == 401 and "X-API-Key" in r.text


def test_new_current_version_is_used_without_restart(client: TestClient, store: Path, demo_root: Path) -> None:
    image = (demo_root / "demo_metal" / "test" / "good" / "001.png").read_bytes()
    first = client.post("/v1/inspect/demo_metal", content=image).json()["results"][0]
    s = ModelStore(store)
    model = det.load(s.current("demo_metal", "patchcore"))
    det.save_calibration(model, model.calibration.with_thresholds(first["score"] / 2, model.calibration.pixel_threshold,
                                                                  "user"))
    second = client.post("/v1/inspect/demo_metal", content=image).json()["results"][0]
    assert second["version"] == 2 and second["verdict"] == "DEFECT" and second["score"] == first["score"]
    models = client.get("/v1/models").json()["models"]
    assert {(m["category"], m["model"], m["version"]) for m in models} == {("demo_metal", "patchcore", 2),
                                                                           ("demo_metal", "efficientad", 1)}
    text = client.get("/metrics").text
    assert 'inspect_verdicts_total{category="demo_metal",model="patchcore",verdict="DEFECT"}' in text
    assert "inspect_latency_seconds_bucket" in text


def test_the_service_runs_a_watch_folder_too(store: Path, demo_root: Path, tmp_path: Path) -> None:
    from core.service import WatchSpec

    incoming = tmp_path / "line" / "in"
    incoming.mkdir(parents=True)
    spec = WatchSpec("demo_metal", "patchcore", incoming, tmp_path / "line" / "ok", tmp_path / "line" / "defect")
    app = create_app(ServiceConfig(store, line_log=tmp_path / "line.jsonl", watches=(spec,)))
    with TestClient(app):
        shutil.copy(demo_root / "demo_metal" / "test" / "scratch" / "000.png", incoming / "cam1.png")
        deadline = time.time() + 120
        while time.time() < deadline and not list((tmp_path / "line" / "defect").glob("cam1-*.png")):
            time.sleep(0.1)
    assert len(list((tmp_path / "line" / "defect").glob("cam1-*.png"))) == 1
    assert '"source": "watch"' in (tmp_path / "line.jsonl").read_text()


def test_a_watch_folder_that_fails_is_retried_and_reported_by_ready(store: Path, demo_root: Path,
                                                                    tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    from core.service import WatchSpec

    incoming = tmp_path / "line" / "in"  # missing: every poll fails until it exists
    spec = WatchSpec("demo_metal", "patchcore", incoming, tmp_path / "line" / "ok", tmp_path / "line" / "defect")
    app = create_app(ServiceConfig(store, line_log=tmp_path / "line.jsonl", watches=(spec,)))
    with caplog.at_level(logging.ERROR, logger="core.service"), TestClient(app) as c:
        deadline = time.time() + 60
        while time.time() < deadline and "watch folder" not in c.get("/ready").text:
            time.sleep(0.1)
        r = c.get("/ready")
        assert r.status_code == 503, r.text
        assert any("watch folder" in p and "FileNotFoundError" in p for p in r.json()["problems"]), r.text
        incoming.mkdir(parents=True)  # the fault clears: the same thread picks the folder up again
        shutil.copy(demo_root / "demo_metal" / "test" / "scratch" / "000.png", incoming / "cam1.png")
        deadline = time.time() + 120
        while time.time() < deadline and not list((tmp_path / "line" / "defect").glob("cam1*.png")):
            time.sleep(0.1)
        assert list((tmp_path / "line" / "defect").glob("cam1*.png"))
        deadline = time.time() + 30
        while time.time() < deadline and c.get("/ready").status_code != 200:
            time.sleep(0.1)
        assert c.get("/ready").status_code == 200, c.get("/ready").text
    assert any("watch folder" in r.getMessage() for r in caplog.records)


def test_raw_uploads_are_named_by_header_or_content_hash(client: TestClient, demo_root: Path, tmp_path: Path) -> None:
    good = (demo_root / "demo_metal" / "test" / "good" / "000.png").read_bytes()
    r = client.post("/v1/inspect/demo_metal", content=good, headers={"X-Filename": "cam3/part_0042.png"})
    assert r.json()["results"][0]["name"] == "part_0042.png"
    r = client.post("/v1/inspect/demo_metal", content=good,
                    headers={"Content-Disposition": 'attachment; filename="line2.png"'})
    assert r.json()["results"][0]["name"] == "line2.png"
    r = client.post("/v1/inspect/demo_metal", content=good)
    digest = hashlib.sha1(good).hexdigest()
    assert r.json()["results"][0]["name"] == f"sha1-{digest[:12]}"
    names = [x["name"] for x in line_log.tail(tmp_path / "line.jsonl")]
    assert names == ["part_0042.png", "line2.png", f"sha1-{digest[:12]}"] and "body" not in names


def test_rejected_requests_are_logged_with_the_reason(client: TestClient, demo_root: Path, tmp_path: Path) -> None:
    good = (demo_root / "demo_metal" / "test" / "good" / "000.png").read_bytes()
    client.post("/v1/inspect/demo_metal", content=b"not an image", headers={"X-Filename": "junk.png"})
    client.post("/v1/inspect/demo_metal", content=b"x" * 2_000_001)
    client.post("/v1/inspect/nope", content=good)
    client.post("/v1/inspect/demo_metal?model=vae", content=good)
    client.post("/v1/inspect/demo_metal", files=[("files", ("ok.png", good, "image/png")),
                                                 ("files", ("cut.png", good[:60], "image/png"))])
    rows = line_log.tail(tmp_path / "line.jsonl")
    rejected = [r for r in rows if r["verdict"] == "REJECTED"]
    assert [(r["name"], r.get("status")) for r in rejected] == [("junk.png", 415), ("", 413), ("", 404), ("", 404),
                                                                ("cut.png", 200)]
    assert [r["category"] for r in rejected] == ["demo_metal", "demo_metal", "nope", "demo_metal", "demo_metal"]
    assert "no image decoder" in rejected[0]["reason"] and "expected at most" in rejected[1]["reason"]
    assert "expected a trained model" in rejected[2]["reason"] and "expected model in" in rejected[3]["reason"]
    assert "truncated" in rejected[4]["reason"]
    assert all("path" not in r and r["source"] == "service" for r in rejected)  # no image is kept
    assert [r["name"] for r in rows if r["verdict"] != "REJECTED"] == ["ok.png"]
