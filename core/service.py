"""The inspection service: verdicts over HTTP for the line's camera PC (FastAPI; ``python -m core serve``).

    POST /v1/inspect/{category}   one or several images (multipart ``files``, or raw bytes as the body);
                                  query: model (kind), version, return=overlay|mask
    GET  /v1/models               every model in the store: current version, thresholds
    GET  /health                  the process answers
    GET  /ready                   the current models are loaded and every watch folder runs (503 with the problems)
    GET  /metrics                 Prometheus: latency histogram, verdicts per category
    GET  /docs                    OpenAPI

State lives in the model store only (plus the line log), so several instances can share one store; a version
made current in the store (Models page, CLI) is used by the next request, without a restart. Scoring runs in a
pool of ``workers`` threads: a burst waits for a free worker instead of loading everything into memory at once.
Bad input (not an image, truncated, too large, unknown category or model) gets a 4xx with the reason; each
rejected request or image is also a line-log row (verdict REJECTED, ``reason``, ``status``) the Line page shows.
A raw-body upload is named by its ``X-Filename`` header, else ``Content-Disposition``'s filename, else the
``name`` query parameter, else ``sha1-<first 12 hex digits of its content>``.
A watch folder whose loop fails is logged and restarted with back-off (0.5 s doubling to 30 s); while it is
down, ``/ready`` answers 503 naming it and the error.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import anyio
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from core import line_log
from core.imageio import ImageLoadError, load_image
from core.inspection import inspect
from core.model_cache import ModelCache
from core.overlay import defect_mask, overlay_png, png_bytes
from core.registry import KINDS
from core.store import ModelStore, ModelStoreError, validate_name
from core.watch import WatchConfig, Watcher

logger = logging.getLogger(__name__)

RETURNS = ("overlay", "mask")
INSPECT_PREFIX = "/v1/inspect/"
WATCH_BACKOFF = (0.5, 30.0)  # first and longest wait before a failed watch folder is started again


@dataclass(frozen=True)
class WatchSpec:
    """A watch folder the service runs beside its API: ``category`` judged with ``model``."""

    category: str
    model: str
    in_dir: Path
    ok_dir: Path
    defect_dir: Path


@dataclass(frozen=True)
class ServiceConfig:
    store: Path
    api_key: str | None = None
    workers: int = 2
    max_request_bytes: int = 50 * 2**20
    max_images: int = 32
    line_log: Path | None = None
    watches: tuple[WatchSpec, ...] = ()


def create_app(config: ServiceConfig) -> FastAPI:
    store = ModelStore(config.store)
    models = ModelCache(store)
    limiter = anyio.CapacityLimiter(max(1, config.workers))
    log_path = config.line_log or line_log.default_path(config.store)
    registry = CollectorRegistry()
    latency = Histogram("inspect_latency_seconds", "Model time per image", ["category", "model"], registry=registry,
                        buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5))
    verdicts = Counter("inspect_verdicts", "Verdicts given", ["category", "model", "verdict"], registry=registry)
    state: dict[str, Any] = {"ready": False, "errors": []}

    def preload() -> None:
        for record in store.list_models():
            if record.ok and record.ref is not None:
                try:
                    models.get(record.ref)
                except ModelStoreError as exc:
                    state["errors"].append(str(exc))
        state["ready"] = True

    stop_watching = threading.Event()
    watch_down: dict[str, str] = {f"watch folder {s.in_dir}": "starting" for s in config.watches}

    def watch(spec: WatchSpec) -> None:
        """Run one watch folder until the service stops: a failure is logged, reported by /ready, and the
        folder is started again after a back-off (0.5 s, doubling, at most 30 s; reset once a poll succeeds)."""
        label = f"watch folder {spec.in_dir}"
        config_ = WatchConfig(spec.in_dir, spec.ok_dir, spec.defect_dir, spec.in_dir.parent / "rejected",
                              spec.in_dir.parent / "results.csv", line_log=log_path)
        delay = WATCH_BACKOFF[0]

        def polled() -> None:
            nonlocal delay
            if watch_down.pop(label, None) is not None:
                logger.info("%s runs", label)
            delay = WATCH_BACKOFF[0]

        while not stop_watching.is_set():
            try:
                Watcher(config_, lambda: models.current(spec.category, spec.model)).run(
                    stop=stop_watching.is_set, on_poll=polled)
            except Exception as exc:  # any failure: report, wait, start again
                logger.exception("%s (%s/%s) failed; starting it again in %.1f s", label, spec.category,
                                 spec.model, delay)
                watch_down[label] = (f"{type(exc).__name__}: {exc} (since {time.strftime('%H:%M:%S')}; retrying "
                                     f"every {delay:g} s at most)")
                stop_watching.wait(delay)
                delay = min(delay * 2, WATCH_BACKOFF[1])

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=preload, daemon=True).start()
        for spec in config.watches:
            threading.Thread(target=watch, args=(spec,), daemon=True, name=f"watch-{spec.category}").start()
        yield
        stop_watching.set()

    app = FastAPI(title="Inspector service", version="1", lifespan=lifespan,
                  description="Verdicts (OK / DEFECT / NO VERDICT) for images of a product category.")

    def check_key(request: Request) -> None:
        if config.api_key and request.headers.get("x-api-key") != config.api_key:
            raise HTTPException(401, "expected a valid X-API-Key header, found none or a wrong one")

    def log_rejected(request: Request, status: int, reason: str) -> None:
        """A line-log row for a request the service refused (no image is kept)."""
        if not request.url.path.startswith(INSPECT_PREFIX):
            return
        category = request.path_params.get("category") or request.url.path[len(INSPECT_PREFIX):]
        line_log.append(log_path, {"time": time.time(), "source": "service", "category": category,
                                   "name": _header_name(request) or "", "verdict": "REJECTED", "status": status,
                                   "reason": reason, "model": request.query_params.get("model", "patchcore")})

    @app.exception_handler(ModelStoreError)
    async def store_error(request: Request, exc: ModelStoreError) -> JSONResponse:
        log_rejected(request, 404, str(exc))
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Any:
        if 400 <= exc.status_code < 500:
            log_rejected(request, exc.status_code, str(exc.detail))
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Any:
        log_rejected(request, 422, "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}"
                                             for e in exc.errors()))
        return await request_validation_exception_handler(request, exc)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    def ready() -> JSONResponse:
        down = [f"{label} is down: {reason}" for label, reason in list(watch_down.items())]
        body = {"ready": state["ready"] and not down, "problems": state["errors"] + down}
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @app.get("/metrics")
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(registry).decode(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    def list_models() -> dict[str, Any]:
        out = []
        for record in store.list_models():
            entry: dict[str, Any] = {"category": record.category, "model": record.kind, "ok": record.ok}
            if record.ok and record.ref is not None:
                cal = store.read_calibration(record.ref)
                entry.update({"version": record.ref.version, "versions": record.num_versions,
                              "image_threshold": cal.get("image_threshold"),
                              "pixel_threshold": cal.get("pixel_threshold")})
            else:
                entry["problem"] = record.error
            out.append(entry)
        return {"models": out}

    @app.post("/v1/inspect/{category}", dependencies=[Depends(check_key)])
    async def inspect_images(category: str, request: Request, model: str = "patchcore", version: int | None = None,
                             want: str | None = Query(None, alias="return")) -> JSONResponse:
        if model not in KINDS:
            raise HTTPException(404, f"expected model in {list(KINDS)}, found {model!r}")
        if want is not None and want not in RETURNS:
            raise HTTPException(422, f"expected return in {list(RETURNS)}, found {want!r}")
        try:
            validate_name(category, "category name")
        except ModelStoreError as exc:
            raise HTTPException(404, str(exc)) from None
        ref = store.ref(category, model, version)
        uploads = await _read_uploads(request, config)
        loaded = await anyio.to_thread.run_sync(models.get, ref, limiter=limiter)
        results = []
        unreadable = []
        for name, data in uploads:
            try:
                image = load_image(data, name=name)
            except ImageLoadError as exc:
                results.append({"name": name, "error": f"{exc.reason}", "verdict": None})
                unreadable.append({"time": time.time(), "source": "service", "category": category, "name": name,
                                   "sha1": hashlib.sha1(data).hexdigest(), "verdict": "REJECTED",
                                   "reason": exc.reason, "model": model})
                continue
            t0 = time.perf_counter()
            found = (await anyio.to_thread.run_sync(inspect, loaded, [image], limiter=limiter))[0]
            latency.labels(category, model).observe(time.perf_counter() - t0)
            verdicts.labels(category, model, found.verdict).inc()
            cal = loaded.calibration
            item: dict[str, Any] = {
                "name": name, "score": found.score, "threshold": cal.image_threshold,
                "normalized_score": None if found.score is None else found.score / cal.image_threshold,
                "verdict": found.verdict, "familiar": found.familiar, "model": model, "version": loaded.version,
                "latency_ms": found.latency_ms, "note": found.note}
            if want and found.anomaly_map is not None:
                png = (overlay_png(image, found.anomaly_map, cal) if want == "overlay"
                       else png_bytes(defect_mask(found.anomaly_map, cal.pixel_threshold).astype("uint8") * 255))
                item[f"{want}_png_base64"] = base64.b64encode(png).decode()
            results.append(item)
            line_log.append(log_path, {"time": time.time(), "source": "service", "category": category,
                                       **{k: item[k] for k in ("name", "score", "threshold", "verdict", "model",
                                                               "version", "latency_ms", "familiar")},
                                       "reason": found.note})
        status = 415 if all("error" in r for r in results) else 200
        for row in unreadable:
            line_log.append(log_path, {**row, "status": status})
        if status == 415:
            return JSONResponse({"detail": "expected images, found none that could be read", "results": results},
                                status_code=415)
        return JSONResponse({"category": category, "results": results})

    return app


async def _read_uploads(request: Request, config: ServiceConfig) -> list[tuple[str, bytes]]:
    """(name, bytes) of each image in a multipart form (any file field) or the raw body; size-limited."""
    declared = int(request.headers.get("content-length") or 0)
    if declared > config.max_request_bytes:
        raise HTTPException(413, f"expected at most {config.max_request_bytes:,} bytes per request, found {declared:,}")
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=config.max_images)
        uploads = []
        for key, value in form.multi_items():
            if hasattr(value, "read"):
                uploads.append((getattr(value, "filename", None) or key, await value.read()))
        if not uploads:
            raise HTTPException(422, "expected image files in the form (field 'files'), found none")
        return uploads
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > config.max_request_bytes:
            raise HTTPException(413, f"expected at most {config.max_request_bytes:,} bytes per request")
    if not body:
        raise HTTPException(422, "expected an image as the request body or multipart files, found an empty body")
    return [(_header_name(request) or request.query_params.get("name") or f"sha1-{hashlib.sha1(body).hexdigest()[:12]}",
             body)]


def _header_name(request: Request) -> str | None:
    """The file name a raw-body upload declares (``X-Filename``, else ``Content-Disposition``'s filename),
    without any folder part; None when it declares none."""
    name = request.headers.get("x-filename")
    if not name and request.headers.get("content-disposition"):
        message = Message()
        message["content-disposition"] = request.headers["content-disposition"]
        name = message.get_filename()
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name[:255] or None


def serve(config: ServiceConfig, host: str, port: int, processes: int = 1) -> None:
    """Run the service with uvicorn (``processes`` > 1: that many processes behind one port)."""
    import os

    import uvicorn

    if processes > 1:  # uvicorn re-imports the app in each process: pass the config through the environment
        os.environ.update({"INSPECT_SERVICE_STORE": str(config.store), "INSPECT_SERVICE_WORKERS": str(config.workers)})
        if config.api_key:
            os.environ["INSPECT_API_KEY"] = config.api_key
        uvicorn.run("core.service:app_from_env", host=host, port=port, workers=processes, factory=True,
                    log_level="warning")
    else:
        uvicorn.run(create_app(config), host=host, port=port, log_level="warning")


def app_from_env() -> FastAPI:
    """The app for multi-process serving (``uvicorn --factory core.service:app_from_env``)."""
    import os

    return create_app(ServiceConfig(Path(os.environ.get("INSPECT_SERVICE_STORE", "models")),
                                    os.environ.get("INSPECT_API_KEY") or None,
                                    int(os.environ.get("INSPECT_SERVICE_WORKERS", "2"))))
