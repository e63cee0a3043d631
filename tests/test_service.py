"""The inspection service: good and bad inputs, API key, versions picked up without a restart, metrics."""

from __future__ import annotations

import base64
import io
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core import detector as det
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
        while time.time() < deadline and not (tmp_path / "line" / "defect" / "cam1.png").exists():
            time.sleep(0.1)
    assert (tmp_path / "line" / "defect" / "cam1.png").is_file()
    assert '"source": "watch"' in (tmp_path / "line.jsonl").read_text()
