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

from core.line import results_log as line_log
from core.line.service import ServiceConfig, create_app
from core.store import lifecycle as det
from core.store.model_store import ModelStore


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
        assert c.get("/health").status_code == 200  # health stays open for the line's monitoring
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
    from core.line.service import WatchSpec

    incoming = tmp_path / "line" / "in"
    incoming.mkdir(parents=True)
    spec = WatchSpec("demo_metal", "patchcore", incoming, tmp_path / "line" / "ok", tmp_path / "line" / "defect")
    app = create_app(ServiceConfig(store, line_log=tmp_path / "line.jsonl", watches=(spec,)))
    with TestClient(app):
        shutil.copy(demo_root / "demo_metal" / "test" / "scratch" / "000.png", incoming / "cam1.png")
        deadline = time.time() + 120
        log = tmp_path / "line.jsonl"  # the image is moved first, its line written after
        while time.time() < deadline and not (list((tmp_path / "line" / "defect").glob("cam1-*.png"))
                                              and log.is_file() and log.read_text()):
            time.sleep(0.1)
    assert len(list((tmp_path / "line" / "defect").glob("cam1-*.png"))) == 1
    assert '"source": "watch"' in (tmp_path / "line.jsonl").read_text()


def test_a_watch_folder_that_fails_is_retried_and_reported_by_ready(store: Path, demo_root: Path,
                                                                    tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    from core.line.service import WatchSpec

    incoming = tmp_path / "line" / "in"  # missing: every poll fails until it exists
    spec = WatchSpec("demo_metal", "patchcore", incoming, tmp_path / "line" / "ok", tmp_path / "line" / "defect")
    app = create_app(ServiceConfig(store, line_log=tmp_path / "line.jsonl", watches=(spec,)))
    with caplog.at_level(logging.ERROR, logger="core.line.service"), TestClient(app) as c:
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


# --- hostile input and overload (issue 22) --------------------------------------------------------------------

MB = 2**20


async def _asgi_post(app, path: str, headers: dict[str, str], chunks) -> tuple[int, dict, int]:
    """POST ``chunks`` (an iterator of bytes) to ``app`` as a body without Content-Length (chunked), straight
    through ASGI: (status, JSON body, how many chunks the app asked for)."""
    import json

    pulled = 0
    parts = iter(chunks)

    async def receive() -> dict:
        nonlocal pulled
        chunk = next(parts, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80)}
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
    body["headers"] = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], body, pulled


def _multipart(files: list[tuple[str, int]], chunk: bytes, boundary: str = "XyZ"):
    """A multipart body with one file part per (name, size in chunks), yielded chunk by chunk (the same bytes
    object again and again: the sender allocates nothing)."""
    for name, count in files:
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
               f"Content-Type: image/png\r\n\r\n").encode()
        for _ in range(count):
            yield chunk
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


@pytest.mark.parametrize("form", ["raw", "multipart", "several files"])
def test_a_chunked_body_over_the_limit_is_refused_while_reading(store: Path, tmp_path: Path, form: str) -> None:
    """No Content-Length: the limit is enforced on the bytes read, the rest is never pulled, and memory grows
    by about the limit, not by the 48 MB sent (was: a chunked multipart upload read whole, then 415)."""
    import tracemalloc

    import anyio

    limit = 2 * MB
    app = create_app(ServiceConfig(store, max_request_bytes=limit, line_log=tmp_path / "line.jsonl"))
    chunk = b"\x00" * MB
    if form == "raw":
        headers, chunks, total = {"content-type": "image/png"}, iter([chunk] * 48), 48
    else:
        files = [("big.png", 48)] if form == "multipart" else [("a.png", 16), ("b.png", 16), ("c.png", 16)]
        headers = {"content-type": "multipart/form-data; boundary=XyZ"}
        chunks, total = _multipart(files, chunk), 48
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        status, body, pulled = anyio.run(_asgi_post, app, "/v1/inspect/demo_metal", headers, chunks)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert status == 413, body
    assert "expected at most 2,097,152 bytes" in body["detail"]
    assert body["headers"]["connection"] == "close"  # the server does not read the rest to skip it
    assert pulled <= limit // MB + 3 < total  # stopped at the limit
    assert peak < 4 * limit, f"{peak / MB:.1f} MB traced for a {limit / MB:.0f} MB limit"


def test_the_pixel_budget_is_checked_from_the_header(store: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from core import settings
    from core.line.service import ServiceConfig as Config

    assert settings.max_pixels() == 40_000_000 and Config(store).max_pixels == 40_000_000
    monkeypatch.setenv("INSPECT_MAX_PIXELS", "1234")
    assert settings.max_pixels() == 1234 and Config(store).max_pixels == 1234
    monkeypatch.setenv("INSPECT_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match="INSPECT_MAX_PIXELS: expected a whole number"):
        settings.max_pixels()
    monkeypatch.delenv("INSPECT_MAX_PIXELS")
    decoded: list[str] = []
    import core.portable

    real = core.portable.pil_to_rgb
    monkeypatch.setattr(core.portable, "pil_to_rgb", lambda image: decoded.append("x") or real(image))
    app = create_app(ServiceConfig(store, max_pixels=64 * 63, line_log=tmp_path / "line.jsonl"))
    with TestClient(app) as c:
        r = c.post("/v1/inspect/demo_metal", content=_png(np.zeros((64, 64, 3), np.uint8)),
                   headers={"X-Filename": "wide.png"})
        assert r.status_code == 413, r.text
        assert "expected at most 4,032 pixels, found 64x64" in r.text
        assert decoded == []  # refused from the header: no pixel was decoded
        r = c.post("/v1/inspect/demo_metal", files=[("files", ("big.png", _png(np.zeros((64, 64, 3), np.uint8)))),
                                                    ("files", ("small.png", _png(np.zeros((32, 32, 3), np.uint8))))])
        assert r.status_code == 200, r.text  # one image over the budget among others: its own error
        assert "found 64x64" in r.json()["results"][0]["error"] and r.json()["results"][1]["verdict"]
    rejected = [x for x in line_log.tail(tmp_path / "line.jsonl") if x["verdict"] == "REJECTED"]
    assert [(x["name"], x["status"]) for x in rejected] == [("wide.png", 413), ("big.png", 200)]


def test_decoding_and_scoring_run_off_the_event_loop(client: TestClient, demo_root: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """While an image decodes (here: held), /health still answers (was: decoding ran on the event loop)."""
    import threading

    import core.line.service

    entered, release = threading.Event(), threading.Event()
    real = core.line.service.load_image

    def slow_load(*args, **kwargs):
        entered.set()
        release.wait(20)
        return real(*args, **kwargs)

    monkeypatch.setattr(core.line.service, "load_image", slow_load)
    good = (demo_root / "demo_metal" / "test" / "good" / "000.png").read_bytes()
    answers: list[int] = []
    poster = threading.Thread(target=lambda: answers.append(client.post("/v1/inspect/demo_metal",
                                                                        content=good).status_code))
    poster.start()
    assert entered.wait(20)
    timer = threading.Timer(10, release.set)  # if the loop is blocked, /health answers only after this
    timer.start()
    health = client.get("/health").status_code
    released_before_health = release.is_set()
    release.set()
    timer.cancel()
    poster.join(30)
    assert health == 200 and not released_before_health
    assert answers == [200]


def test_line_log_writes_run_off_the_event_loop(client: TestClient, demo_root: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A line-log append (flock + fsync) that takes its time does not hold /health up."""
    import threading

    import core.line.service

    entered, release = threading.Event(), threading.Event()
    real = core.line.service.line_log.append

    def slow_append(*args, **kwargs):
        entered.set()
        release.wait(20)
        return real(*args, **kwargs)

    monkeypatch.setattr(core.line.service.line_log, "append", slow_append)
    good = (demo_root / "demo_metal" / "test" / "good" / "000.png").read_bytes()
    answers: list[int] = []
    poster = threading.Thread(target=lambda: answers.append(client.post("/v1/inspect/demo_metal",
                                                                        content=good).status_code))
    poster.start()
    assert entered.wait(60)
    timer = threading.Timer(10, release.set)
    timer.start()
    health = client.get("/health").status_code
    released_before_health = release.is_set()
    release.set()
    timer.cancel()
    poster.join(30)
    assert health == 200 and not released_before_health and answers == [200]


def test_overlays_and_masks_are_returned_at_a_bounded_size(store: Path, demo_root: Path, tmp_path: Path) -> None:
    from core.scores.calibration import Calibration
    from core.verdict.overlay import bounded, overlay_png

    image = np.zeros((1000, 3000, 3), np.uint8)
    amap = np.zeros((1000, 3000), np.float32)
    small, small_map = bounded(image, amap, 2048)
    assert small.shape == (683, 2048, 3) and small_map.shape == (683, 2048) and small_map.dtype == np.float32
    assert bounded(image[:64, :64], amap[:64, :64], 2048)[0].shape == (64, 64, 3)  # small ones unchanged
    cal = det.read_calibration(ModelStore(store).current("demo_metal", "patchcore"))
    assert isinstance(cal, Calibration)
    assert Image.open(io.BytesIO(overlay_png(image, amap, cal, max_side=2048))).size == (2048, 683)
    app = create_app(ServiceConfig(store, overlay_max_side=40, line_log=tmp_path / "line.jsonl"))
    scratch = (demo_root / "demo_metal" / "test" / "scratch" / "000.png").read_bytes()
    with TestClient(app) as c:
        for want in ("overlay", "mask"):
            r = c.post(f"/v1/inspect/demo_metal?return={want}", content=scratch)
            assert r.status_code == 200, r.text
            png = base64.b64decode(r.json()["results"][0][f"{want}_png_base64"])
            assert Image.open(io.BytesIO(png)).size == (40, 40)


def test_a_full_queue_gets_503_with_retry_after_at_once(store: Path, demo_root: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    import threading

    import core.line.service

    entered, release = threading.Event(), threading.Event()
    real = core.line.service.inspect

    def held(*args, **kwargs):
        entered.set()
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(core.line.service, "inspect", held)
    good = (demo_root / "demo_metal" / "test" / "good" / "000.png").read_bytes()
    app = create_app(ServiceConfig(store, workers=1, max_pending=1, line_log=tmp_path / "line.jsonl"))
    answers: list[int] = []
    with caplog.at_level(logging.WARNING, logger="core.line.service"), TestClient(app) as c:
        poster = threading.Thread(target=lambda: answers.append(c.post("/v1/inspect/demo_metal",
                                                                       content=good).status_code))
        poster.start()
        try:
            assert entered.wait(30)
            r = c.post("/v1/inspect/demo_metal", content=good)
            health = c.get("/health").status_code
            held_still = not release.is_set()
        finally:
            release.set()
            poster.join(60)
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1" and r.headers["connection"] == "close" and held_still
        assert health == 200
        assert "expected at most 1 request" in r.json()["detail"] and r.json()["error_id"]
        assert answers == [200]
        again = c.post("/v1/inspect/demo_metal", content=good)  # the slot is free again
        assert again.status_code == 200 and again.headers["server-timing"].startswith("service;dur=")
    assert any(r.json()["error_id"] in rec.getMessage() for rec in caplog.records)


@pytest.mark.parametrize("path", ["/docs", "/openapi.json", "/metrics", "/ready", "/v1/models"])
def test_every_endpoint_but_health_needs_the_key(store: Path, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac

    import core.line.service

    compared: list[bytes] = []
    real = hmac.compare_digest
    monkeypatch.setattr(core.line.service.hmac, "compare_digest", lambda a, b: compared.append(a) or real(a, b))
    app = create_app(ServiceConfig(store, api_key="k3y"))
    c = TestClient(app)
    assert c.get("/health").status_code == 200
    for headers in ({}, {"X-API-Key": "k3"}, {"X-API-Key": "k3y "}, {"X-API-Key": "kéy".encode()}):
        r = c.get(path, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.json()["detail"] == "expected a valid X-API-Key header, found none or a wrong one"
    assert c.get(path, headers={"X-API-Key": "k3y"}).status_code in (200, 503)  # /ready: not loaded yet
    assert compared  # constant-time comparison
    open_app = TestClient(create_app(ServiceConfig(store)))
    assert open_app.get(path).status_code in (200, 503)  # no key set: open, as before


def test_error_bodies_name_the_model_never_server_paths(client: TestClient, store: Path) -> None:
    for path, expect in (("/v1/inspect/nope", "nope/patchcore"), ("/v1/inspect/demo_metal?version=9", "[1]"),
                         ("/v1/inspect/demo_metal?model=efficientad&version=9", "demo_metal/efficientad")):
        r = client.post(path, content=b"x")
        assert r.status_code == 404 and expect in r.text, r.text
        assert str(store) not in r.text and str(store.resolve()) not in r.text and str(Path.home()) not in r.text


def test_every_5xx_is_json_with_an_error_id_the_log_carries(store: Path, demo_root: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    import core.line.service

    def broken(*args, **kwargs):
        raise RuntimeError(f"kaput at {tmp_path}/secret")

    monkeypatch.setattr(core.line.service, "inspect", broken)
    good = (demo_root / "demo_metal" / "test" / "good" / "000.png").read_bytes()
    app = create_app(ServiceConfig(store, line_log=tmp_path / "line.jsonl"))
    with caplog.at_level(logging.ERROR, logger="core.line.service"), \
            TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/v1/inspect/demo_metal", content=good)
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["error_id"] and "internal error" in body["detail"] and str(tmp_path) not in r.text
    logged = [rec for rec in caplog.records if body["error_id"] in rec.getMessage()]
    assert logged and logged[0].exc_info is not None  # the traceback is in the log, under the same id


def test_a_zero_threshold_gives_no_normalised_score_not_a_500(store: Path, demo_root: Path, tmp_path: Path) -> None:
    """EfficientAD's scores may be 0 or negative, so may its threshold: score / threshold is not defined then."""
    import json

    s = ModelStore(store)
    cal_file = s.calibration_file(s.current("demo_metal", "efficientad"))
    cal = json.loads(cal_file.read_text())
    scratch = (demo_root / "demo_metal" / "test" / "scratch" / "000.png").read_bytes()
    for threshold in (0.0, -0.5):
        cal_file.write_text(json.dumps({**cal, "image_threshold": threshold}))
        app = create_app(ServiceConfig(store, line_log=tmp_path / "line.jsonl"))
        with TestClient(app, raise_server_exceptions=False) as c:
            r = c.post("/v1/inspect/demo_metal?model=efficientad", content=scratch)
        assert r.status_code == 200, r.text
        item = r.json()["results"][0]
        assert item["threshold"] == threshold and item["normalized_score"] is None and item["verdict"]


def test_the_api_key_comes_from_the_environment_or_a_file_never_argv(tmp_path: Path, store: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture) -> None:
    from core import cli
    from core.line.service import api_key_from

    monkeypatch.delenv("INSPECT_API_KEY", raising=False)
    monkeypatch.delenv("INSPECT_API_KEY_FILE", raising=False)
    assert api_key_from(None) is None
    monkeypatch.setenv("INSPECT_API_KEY", "from-env")
    assert api_key_from(None) == "from-env"
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    monkeypatch.setenv("INSPECT_API_KEY_FILE", str(key_file))
    assert api_key_from(None) == "from-file"
    other = tmp_path / "other"
    other.write_text("  from-option \n")
    assert api_key_from(other) == "from-option"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="expected an API key in .*empty, found an empty file"):
        api_key_from(tmp_path / "empty")
    with pytest.raises(ValueError, match="expected an API key file at .*missing, found nothing there"):
        api_key_from(tmp_path / "missing")
    assert cli.main(["serve", "--store", str(store), "--api-key", "s3cret"]) == 2
    err = capsys.readouterr().err
    assert "never on the command line" in err and "INSPECT_API_KEY" in err and "--api-key-file" in err
    assert "s3cret" not in err


# --- review fixes: key-less clients, relative stores, damaged models, typed size errors ------------------------

def test_requests_without_the_key_add_no_line_log_row(store: Path, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """An unauthenticated client cannot write (fsynced) line-log rows: a 401 goes to the module logger only,
    at most once per interval however many come."""
    log = tmp_path / "line.jsonl"
    app = create_app(ServiceConfig(store, api_key="k3y", line_log=log))
    with caplog.at_level(logging.WARNING, logger="core.line.service"), TestClient(app) as c:
        for i in range(50):
            r = c.post(f"/v1/inspect/{'c' * 4000}{i}?model={'m' * 4000}", content=b"x",
                       headers={"X-Filename": f"{'n' * 4000}.png", **({"X-API-Key": "wrong"} if i % 2 else {})})
            assert r.status_code == 401, r.text
    assert not log.exists() or line_log.tail(log) == []
    refused = [rec for rec in caplog.records if "401" in rec.getMessage()]
    assert 1 <= len(refused) <= 2, [rec.getMessage() for rec in refused]  # rate-limited, not one per request


def test_rejected_rows_cap_the_client_given_category_name_and_model(client: TestClient, tmp_path: Path) -> None:
    r = client.post(f"/v1/inspect/{'c' * 4000}?model={'m' * 4000}", content=b"x",
                    headers={"X-Filename": f"{'n' * 4000}.png"})
    assert r.status_code == 404, r.text
    row = line_log.tail(tmp_path / "line.jsonl")[-1]
    assert row["verdict"] == "REJECTED" and row["status"] == 404
    assert row["category"].startswith("ccc") and len(row["category"]) <= 129
    assert len(row["model"]) <= 65 and len(row["name"]) <= 256 and len(row["reason"]) <= 1001


@pytest.mark.parametrize("relative", ["models", "."])
def test_a_relative_store_path_leaves_the_words_of_error_bodies_alone(store: Path, tmp_path: Path, relative: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil as sh

    sh.copytree(store / "demo_metal", store / "models")  # a category that is called like the store folder
    monkeypatch.chdir(tmp_path if relative == "models" else store)
    app = create_app(ServiceConfig(Path(relative), line_log=tmp_path / "line.jsonl"))
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/v1/inspect/models?version=9", content=b"x")
        assert r.status_code == 404, r.text
        assert r.json()["detail"] == "expected one of the versions [1] of models/patchcore, found 9"
        r = c.post("/v1/inspect/nothing", content=b"x")
        assert r.status_code == 404, r.text
        detail = r.json()["detail"]
        assert detail.startswith("expected a trained model in nothing/patchcore, found nothing there; "), detail
        assert "demo_metal/patchcore" in detail and "models/patchcore" in detail
        assert str(store.resolve()) not in r.text
        (store / "demo_metal" / "patchcore" / "v1" / "calibration.json").write_text("{damaged")
        r = c.post("/v1/inspect/demo_metal", content=b"x")
        assert r.status_code == 503, r.text
        detail = r.json()["detail"]
        assert "demo_metal/patchcore/v1/calibration.json: expected valid JSON" in detail, detail
        assert str(store.resolve()) not in r.text


def test_a_damaged_model_is_a_503_with_an_error_id_a_missing_one_a_404(store: Path, demo_root: Path, tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    from core.store.model_store import ModelNotFound, ModelStoreError

    assert issubclass(ModelNotFound, ModelStoreError)
    s = ModelStore(store)
    with pytest.raises(ModelNotFound):
        s.current("nothing", "patchcore")
    with pytest.raises(ModelNotFound):
        s.ref("demo_metal", "patchcore", 9)
    s.calibration_file(s.current("demo_metal", "patchcore")).write_text("{damaged")
    good = (demo_root / "demo_metal" / "test" / "good" / "000.png").read_bytes()
    app = create_app(ServiceConfig(store, line_log=tmp_path / "line.jsonl"))
    with caplog.at_level(logging.WARNING, logger="core.line.service"), \
            TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/v1/inspect/demo_metal", content=good)
        assert r.status_code == 503 and r.headers["content-type"] == "application/json", r.text
        body = r.json()
        assert body["error_id"] and "calibration.json" in body["detail"] and str(store) not in r.text
        assert any(body["error_id"] in rec.getMessage() for rec in caplog.records)
        models = c.get("/v1/models")
        assert models.status_code == 503 and models.json()["error_id"], models.text
        assert c.post("/v1/inspect/demo_metal?model=efficientad", content=good).status_code == 200  # the other
        assert c.post("/v1/inspect/nothing", content=good).status_code == 404
        assert c.post("/v1/inspect/demo_metal?version=9", content=good).status_code == 404
    statuses = [row.get("status") for row in line_log.tail(tmp_path / "line.jsonl") if row["verdict"] == "REJECTED"]
    assert statuses == [503, 404, 404]


def test_an_image_over_the_pixel_budget_raises_image_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image as PILImage

    from core.data.imageio import ImageLoadError, ImageTooLarge, load_image

    assert issubclass(ImageTooLarge, ImageLoadError)
    data = _png(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ImageTooLarge, match="expected at most 4,032 pixels, found 64x64"):
        load_image(data, max_pixels=64 * 63)
    with pytest.raises(ImageLoadError) as caught:
        load_image(data[:60])
    assert not isinstance(caught.value, ImageTooLarge)  # truncated: another error
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)  # Pillow's own bomb guard, past our budget
    with pytest.raises(ImageTooLarge, match="too large"):
        load_image(data, max_pixels=10**9)


def test_an_image_too_large_is_classified_by_its_type_not_its_text(store: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import core.line.service
    from core.data.imageio import ImageLoadError, ImageTooLarge

    def refuse(data: bytes, name: str | None = None, max_pixels: int = 0):
        if name == "big.png":
            raise ImageTooLarge(name, "over the budget")  # no "expected at most ... pixels" in the text
        raise ImageLoadError(name or "upload", "expected at most one frame, found 3 pixels, found")

    monkeypatch.setattr(core.line.service, "load_image", refuse)
    app = create_app(ServiceConfig(store, line_log=tmp_path / "line.jsonl"))
    with TestClient(app) as c:
        assert c.post("/v1/inspect/demo_metal", content=b"x", headers={"X-Filename": "big.png"}).status_code == 413
        assert c.post("/v1/inspect/demo_metal", content=b"x", headers={"X-Filename": "odd.png"}).status_code == 415
