"""The inspection service: verdicts over HTTP for the line's camera PC (FastAPI; ``python -m core serve``).

    POST /v1/inspect/{category}   one or several images (multipart ``files``, or raw bytes as the body);
                                  query: model (kind), version, return=overlay|mask
    GET  /v1/models               every model in the store: current version, thresholds
    GET  /health                  the process answers
    GET  /ready                   the current models are loaded and every watch folder runs (503 with the problems)
    GET  /metrics                 Prometheus: latency histogram, verdicts per category, drift watch gauges
                                  (inspect_drift_cusum, inspect_drift_alarm per category and model)
    GET  /docs                    OpenAPI

An inspect answer carries ``drift`` (core.verdict.drift_status: ``alarm``, ``median_z``, ``cusum``, ``message``)
for the model version that judged it, computed at most every few seconds per version from the results database.

State lives in the model store only (plus the line log), so several instances can share one store; a version
made current in the store (Models page, CLI) is used by the next request, without a restart. Scoring runs in a
pool of ``workers`` threads: a burst waits for a free worker instead of loading everything into memory at once.
Bad input (not an image, truncated, too large, unknown category or model) gets a 4xx with the reason; each
rejected request or image that passed the key check is also a line-log row (verdict REJECTED, ``reason``,
``status``; client-chosen fields clipped) the Line page shows. A 401/403 is never a line-log row: the module
logger notes it, one line per 10 s at most with the count of the others.
A raw-body upload is named by its ``X-Filename`` header, else ``Content-Disposition``'s filename, else the
``name`` query parameter, else ``sha1-<first 12 hex digits of its content>``.
A watch folder whose loop fails is logged and restarted with back-off (0.5 s doubling to 30 s); while it is
down, ``/ready`` answers 503 naming it and the error.

Limits (hostile input and overload):

- **Body size** (``max_request_bytes``, 50 MB): a declared Content-Length over it is refused at once; every body
  form (raw, chunked, multipart, several files) is counted while it is read and refused with 413 at the limit,
  so memory grows by about the limit, never by what the client sends.
- **Pixel budget** (``max_pixels``, ``INSPECT_MAX_PIXELS``, 40 Mpx): checked from the image header before any
  pixel is decoded; an image over it gets its own error, a request whose images are all over it a 413.
- **Off the event loop**: decoding, conversion, scoring and overlays run in the ``workers`` threads (one
  limiter), so ``/health`` answers whatever is being scored; overlays and masks are drawn and returned at most
  ``overlay_max_side`` px (2048) on the long side.
- **Backpressure** (``max_pending``, default 4 x workers): inspect requests admitted at once per process
  (reading, waiting for a worker, scoring); one more gets 503 with ``Retry-After: 1`` at once, before its body is
  read (counted in ``/metrics`` as ``inspect_busy_total``, not a line-log row). Line-log appends run in threads.
- **API key** (``X-API-Key``, compared in constant time): when one is set every endpoint but ``/health`` needs
  it (``/docs``, ``/openapi.json``, ``/metrics``, ``/ready`` included). The CLI reads it from
  ``INSPECT_API_KEY_FILE`` / ``--api-key-file`` or ``INSPECT_API_KEY``, never from the command line.
- **Errors**: bodies name the category, model and version, never a server path; a model or version that is
  not there is a 404, one that is there but damaged (unreadable calibration, manifest, weights) a 503; every
  5xx is JSON with an ``error_id`` that the module logger writes too (with the traceback for a 500).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

import anyio
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.formparsers import MultiPartException, MultiPartParser

from core import logs, settings
from core.data.imageio import ImageLoadError, ImageTooLarge, load_image
from core.line import line_history
from core.line import results_log as line_log
from core.line.watch import WatchConfig, Watcher
from core.models.registry import KINDS
from core.portable import DEFECT, REVIEW
from core.store.history import History, spot_checked
from core.store.lifecycle import LoadedModel
from core.store.model_cache import ModelCache
from core.store.model_store import ModelNotFound, ModelStore, ModelStoreError, validate_name
from core.verdict.drift_status import DriftWatch
from core.verdict.inspection import inspect
from core.verdict.overlay import bounded, defect_mask, overlay_png, png_bytes

logger = logging.getLogger(__name__)

RETURNS = ("overlay", "mask")
INSPECT_PREFIX = "/v1/inspect/"
WATCH_BACKOFF = (0.5, 30.0)  # first and longest wait before a failed watch folder is started again
API_KEY_ENV = settings.API_KEY_ENV
API_KEY_FILE_ENV = settings.API_KEY_FILE_ENV
KEY_REFUSED = "expected a valid X-API-Key header, found none or a wrong one"
RETRY_AFTER_S = 1  # what a client told "busy" (503) should wait before it tries again
CLOSE = {"Connection": "close"}  # a body left unread: the server closes rather than reading it to skip it
# line-log fields a client chooses (path, query, headers) are clipped to these lengths (then "…")
MAX_LOGGED_CATEGORY = 128  # validate_name's limit: a longer one names no model anyway
MAX_LOGGED_NAME = 255
MAX_LOGGED_MODEL = 64
MAX_LOGGED_REASON = 1000
REFUSED_LOG_INTERVAL_S = 10.0  # 401/403s: one module-log line per interval at most, counting the rest


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
    """How one service process runs: its store, key, workers and limits (see the module docstring).

    ``max_pending`` None means 4 x ``workers``; ``max_pixels`` defaults to ``INSPECT_MAX_PIXELS`` (40 Mpx).
    """

    store: Path
    api_key: str | None = None
    workers: int = 2
    max_request_bytes: int = 50 * 2**20
    max_images: int = 32
    line_log: Path | None = None
    watches: tuple[WatchSpec, ...] = ()
    max_pixels: int = field(default_factory=settings.max_pixels)
    max_pending: int | None = None
    overlay_max_side: int = 2048

    def __post_init__(self) -> None:
        for name in ("workers", "max_request_bytes", "max_images", "max_pixels", "overlay_max_side"):
            if getattr(self, name) < 1:
                raise ValueError(f"expected {name} of at least 1, found {getattr(self, name)}")
        if self.max_pending is not None and self.max_pending < 1:
            raise ValueError(f"expected max_pending of at least 1 (or None: 4 x workers), found {self.max_pending}")

    @property
    def pending_limit(self) -> int:
        """Inspect requests admitted at once (reading, waiting, scoring); one more gets 503."""
        return self.max_pending if self.max_pending is not None else 4 * self.workers


def api_key_from(key_file: Path | None) -> str | None:
    """The API key the service requires: the first line of ``key_file`` (``--api-key-file``), else of the file
    ``INSPECT_API_KEY_FILE`` names, else ``INSPECT_API_KEY``, else None (no key). Never from the command line:
    argv is visible to every user of the machine (``ps``).

    Raises:
        ValueError: a key file that is missing, unreadable or empty.
    """
    if key_file is None:
        key_file = settings.api_key_file()
    if key_file is not None:
        try:
            text = key_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ValueError(f"expected an API key file at {key_file}, found nothing there") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"expected a readable UTF-8 API key file at {key_file}, found {exc}") from None
        key = text.splitlines()[0].strip() if text.strip() else ""
        if not key:
            raise ValueError(f"expected an API key in {key_file}, found an empty file")
        return key
    return settings.api_key()


@dataclass(frozen=True)
class _Judged:
    """One upload after a worker thread decoded and scored it: the response item, the line-log row of a
    rejected image (None when judged), whether it was over the pixel budget, and the model's time."""

    item: dict[str, Any]
    rejected: dict[str, Any] | None
    over_budget: bool
    seconds: float
    kept: str | None = None  # where a REVIEW or DEFECT upload's bytes are kept (line_history.keep_image)


class _BodyTooLarge(MultiPartException):
    """The body grew past the limit while it was read (a MultiPartException so the form parser closes its files)."""


def _clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (marked with "…" when cut)."""
    return text if len(text) <= limit else text[:limit] + "…"


class _Throttled:
    """Lets a log line through at most once per ``interval`` seconds and counts the ones it held back, so a
    client repeating a refused request cannot grow the log by what it sends."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next = 0.0
        self._held = 0
        self._lock = threading.Lock()

    def allow(self) -> int | None:
        """None to hold this line back, else how many were held back since the last one let through."""
        with self._lock:
            now = time.monotonic()
            if now < self._next:
                self._held += 1
                return None
            held, self._held, self._next = self._held, 0, now + self.interval
            return held


def _upload_name(name: str | None, data: bytes) -> str:
    return _clip(name, MAX_LOGGED_NAME) if name else f"sha1-{hashlib.sha1(data).hexdigest()[:12]}"


def _judge(loaded: LoadedModel, name: str | None, data: bytes, want: str | None, config: ServiceConfig,
           category: str, model: str) -> _Judged:
    """Decode, score and draw one upload (runs in a worker thread, never on the event loop)."""
    name = _upload_name(name, data)
    try:
        image = load_image(data, name=name, max_pixels=config.max_pixels)
    except ImageLoadError as exc:
        row = {"time": time.time(), "source": "service", "category": category, "name": name,
               "sha1": hashlib.sha1(data).hexdigest(), "verdict": "REJECTED", "reason": exc.reason, "model": model}
        return _Judged({"name": name, "error": exc.reason, "verdict": None}, row, isinstance(exc, ImageTooLarge), 0.0)
    t0 = time.perf_counter()
    found = inspect(loaded, [image])[0]
    seconds = time.perf_counter() - t0
    cal = loaded.calibration
    threshold = cal.image_threshold
    item: dict[str, Any] = {
        "name": name, "score": found.score, "threshold": threshold,
        "review_band": None if cal.review is None else list(cal.review),
        # score / threshold is defined only for a positive threshold (EfficientAD's may be 0 or negative)
        "normalized_score": None if found.score is None or threshold <= 0 else found.score / threshold,
        "verdict": found.verdict, "familiar": found.familiar, "model": model, "version": loaded.version,
        "latency_ms": found.latency_ms, "note": found.note}
    # REVIEW and DEFECT uploads are kept for the review queue (the row's path; the answer names no server path)
    spot = spot_checked(str(found.verdict), hashlib.sha1(data).hexdigest(), settings.spot_check_every())
    kept = line_history.keep_image(config.store, data, name) if found.verdict in (REVIEW, DEFECT) or spot else None
    if want and found.anomaly_map is not None:
        small, small_map = bounded(image, found.anomaly_map, config.overlay_max_side)
        del image, found  # the full-size image and map are not kept past this point
        png = (overlay_png(small, small_map, cal) if want == "overlay"
               else png_bytes(defect_mask(small_map, cal.pixel_threshold).astype("uint8") * 255))
        item[f"{want}_png_base64"] = base64.b64encode(png).decode()
    return _Judged(item, None, False, seconds, None if kept is None else str(kept))


def create_app(config: ServiceConfig) -> FastAPI:
    """The service's FastAPI app over ``config.store`` (see the module docstring for what it answers)."""
    # the store by its absolute path: every message names it so, and public() takes exactly that prefix out
    root = Path(config.store).resolve()
    store = ModelStore(root)
    models = ModelCache(store)
    limiter = anyio.CapacityLimiter(config.workers)
    log_path = config.line_log or line_log.default_path(config.store)
    registry = CollectorRegistry()
    latency = Histogram("inspect_latency_seconds", "Model time per image", ["category", "model"], registry=registry,
                        buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5))
    verdicts = Counter("inspect_verdicts", "Verdicts given", ["category", "model", "verdict"], registry=registry)
    busy = Counter("inspect_busy", "Requests refused with 503 because the queue was full", registry=registry)
    # drift watch (core.verdict.drift_status): per model version, computed at most every few seconds
    drift = DriftWatch(lambda: History.open(root, line_log=log_path),
                       refresh=lambda history: history.import_logs(root, log_path), background=True)
    drift_cusum = Gauge("inspect_drift_cusum", "Drift watch CUSUM of the current version, in calibration spreads",
                        ["category", "model"], registry=registry)
    drift_alarm = Gauge("inspect_drift_alarm", "1 while the drift watch of the current version alarms",
                        ["category", "model"], registry=registry)
    state: dict[str, Any] = {"ready": False, "errors": []}
    pending = [0]  # inspect requests admitted now (touched on the event loop only)
    roots = sorted({str(root), os.path.abspath(config.store)}, key=len, reverse=True)  # both absolute
    sep = re.escape(os.sep)
    # an absolute root at the start of a path, followed by a separator (a file inside) or by the path's end
    store_path = re.compile(rf"(?<![\w.\-{sep}])(?:{'|'.join(re.escape(r) for r in roots)})(?:({sep})|(?![\w.\-]))")

    def public(text: str) -> str:
        """``text`` without the server's store path: files inside it are named relative to it
        (``demo_metal/patchcore/v2/calibration.json``), the folder itself as "the model store". Only the
        absolute root as a path prefix is replaced, so a relative ``--store`` (``models``, ``.``) leaves the
        words of the message alone."""
        return store_path.sub(lambda m: "" if m.group(1) else "the model store", text)

    def preload() -> None:
        for record in store.list_models():
            if record.ok and record.ref is not None:
                try:
                    models.get(record.ref)
                except ModelStoreError as exc:
                    state["errors"].append(public(str(exc)))
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
                Watcher(config_, lambda: models.current(spec.category, spec.model), drift=drift).run(
                    stop=stop_watching.is_set, on_poll=polled)
            except Exception as exc:  # any failure: report, wait, start again
                logger.exception("%s (%s/%s) failed; starting it again in %.1f s", label, spec.category,
                                 spec.model, delay)
                watch_down[label] = (f"{type(exc).__name__}: {public(str(exc))} (since {time.strftime('%H:%M:%S')}; "
                                     f"retrying every {delay:g} s at most)")
                stop_watching.wait(delay)
                delay = min(delay * 2, WATCH_BACKOFF[1])

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncGenerator[None]:
        threading.Thread(target=preload, daemon=True).start()
        for spec in config.watches:
            threading.Thread(target=watch, args=(spec,), daemon=True, name=f"watch-{spec.category}").start()
        yield
        stop_watching.set()
        drift.close()

    app = FastAPI(title="Inspector service", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None,
                  description="Verdicts (OK / DEFECT / NO VERDICT) for images of a product category.")
    expected_key = config.api_key.encode("utf-8") if config.api_key else None

    def check_key(request: Request) -> None:
        """Constant-time comparison of X-API-Key with the configured key (nothing to check when none is set)."""
        if expected_key is None:
            request.state.key_checked = True
            return
        given = request.headers.get("x-api-key")
        # Starlette decodes header bytes as latin-1: encoding back gives the bytes the client sent
        if given is None or not hmac.compare_digest(given.encode("latin-1"), expected_key):
            raise HTTPException(401, KEY_REFUSED)
        request.state.key_checked = True  # log_rejected may write line-log rows for this request now

    log_limiter = anyio.CapacityLimiter(2)  # line-log appends (fsync) in threads, never on the event loop

    async def log_rows(rows: list[dict[str, Any]]) -> None:
        """Append ``rows`` to the line log (each line fsynced) in a thread; the request answers after that."""
        def write() -> None:
            for row in rows:
                line_log.append(log_path, row)
                line_history.record(root, log_path, row)  # a database failure is logged: the log keeps the row

        if rows:
            await anyio.to_thread.run_sync(write, limiter=log_limiter)

    async def log_rejected(request: Request, status: int, reason: str) -> None:
        """A line-log row for an inspect request the service refused (no image is kept): only once the request
        passed the key check, so a client without the key cannot write rows; the fields it chose are clipped."""
        if not request.url.path.startswith(INSPECT_PREFIX) or not getattr(request.state, "key_checked", False):
            return
        category = request.path_params.get("category") or request.url.path[len(INSPECT_PREFIX):]
        await log_rows([{"time": time.time(), "source": "service", "category": _clip(category, MAX_LOGGED_CATEGORY),
                         "name": _clip(_header_name(request) or "", MAX_LOGGED_NAME), "verdict": "REJECTED",
                         "status": status, "reason": _clip(reason, MAX_LOGGED_REASON),
                         "model": _clip(request.query_params.get("model", "patchcore"), MAX_LOGGED_MODEL)}])

    refused_log = _Throttled(REFUSED_LOG_INTERVAL_S)

    def log_refused(request: Request, status: int) -> None:
        """A 401/403 to the module logger only (never the line log), one line per interval at most."""
        held = refused_log.allow()
        if held is not None:
            logger.warning("%d for %s %s from %s (%d more refused in the last %g s)", status, request.method,
                           _clip(request.url.path, MAX_LOGGED_CATEGORY), request.client.host if request.client
                           else "an unknown client", held, REFUSED_LOG_INTERVAL_S)

    def server_error(status: int, detail: str, error_id: str, *, headers: dict[str, str] | None = None,
                     ready: bool | None = None, problems: list[str] | None = None) -> JSONResponse:
        """A 5xx as JSON with an error id (the caller logs the same id); ``ready`` and ``problems`` for /ready."""
        body: dict[str, Any] = {"detail": detail, "error_id": error_id}
        if ready is not None:
            body["ready"] = ready
        if problems is not None:
            body["problems"] = problems
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(ModelStoreError)
    async def store_error(request: Request, exc: ModelStoreError) -> JSONResponse:
        """Nothing there (:class:`ModelNotFound`): 404. Anything else, a model that is there but damaged
        (unreadable calibration, weights, manifest): 503 with an error id the module log carries too."""
        detail = public(str(exc))
        if isinstance(exc, ModelNotFound):
            await log_rejected(request, 404, detail)
            return JSONResponse({"detail": detail}, status_code=404)
        error_id = uuid.uuid4().hex[:12]
        logger.error("error %s: %s %s: damaged model: %s", error_id, request.method,
                     _clip(request.url.path, MAX_LOGGED_CATEGORY), exc)
        await log_rejected(request, 503, detail)
        return server_error(503, f"{detail} (error id {error_id})", error_id)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Any:
        if exc.status_code in (401, 403):
            log_refused(request, exc.status_code)
        elif 400 <= exc.status_code < 500:
            await log_rejected(request, exc.status_code, str(exc.detail))
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Any:
        await log_rejected(request, 422, "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}"
                                             for e in exc.errors()))
        return await request_validation_exception_handler(request, exc)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        error_id = uuid.uuid4().hex[:12]
        logger.error("error %s: %s %s failed", error_id, request.method, request.url.path, exc_info=exc)
        return server_error(500, f"internal error (error id {error_id}; the service's log has the details)",
                            error_id=error_id)

    @app.get("/health")
    async def health() -> dict[str, str]:
        """The process answers (open without the key; never waits for a worker)."""
        return {"status": "ok"}

    @app.get("/ready", dependencies=[Depends(check_key)])
    async def ready() -> JSONResponse:
        down = [f"{label} is down: {reason}" for label, reason in list(watch_down.items())]
        body: dict[str, Any] = {"ready": state["ready"] and not down, "problems": state["errors"] + down}
        if body["ready"]:
            return JSONResponse(body)
        error_id = uuid.uuid4().hex[:12]
        logger.info("error %s: not ready: %s", error_id, body["problems"] or "models still loading")
        return server_error(503, "not ready", error_id, ready=body["ready"], problems=body["problems"])

    def drift_gauges() -> None:
        """The drift gauges of every current model this process has loaded (cached per version)."""
        for record in store.list_models():
            if record.ok and record.ref is not None and models.is_loaded(record.ref):
                drift.answer(models.get(record.ref))
        for status in drift.latest():
            drift_cusum.labels(status.category, status.kind).set(status.report.cusum)
            drift_alarm.labels(status.category, status.kind).set(1.0 if status.alarm else 0.0)

    @app.get("/metrics", dependencies=[Depends(check_key)])
    async def metrics() -> PlainTextResponse:
        await anyio.to_thread.run_sync(drift_gauges, limiter=log_limiter)
        return PlainTextResponse(generate_latest(registry).decode(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(check_key)])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(check_key)])
    async def docs() -> HTMLResponse:
        # the schema is inlined: the page's script cannot send the key to fetch /openapi.json
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs",
                                   swagger_ui_parameters={"spec": app.openapi()})

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
                entry["problem"] = public(str(record.error))
            out.append(entry)
        return {"models": out}

    @app.post("/v1/inspect/{category}", dependencies=[Depends(check_key)])
    async def inspect_images(category: str, request: Request, model: str = "patchcore", version: int | None = None,
                             want: str | None = Query(None, alias="return")) -> JSONResponse:
        if pending[0] >= config.pending_limit:  # full: refuse at once, before the body is read
            busy.inc()
            error_id = uuid.uuid4().hex[:12]
            detail = (f"busy: expected at most {config.pending_limit} request(s) at once per process, found "
                      f"{pending[0]} in progress; retry after {RETRY_AFTER_S} s")
            # not a line-log row (an fsync per refusal would be work an overload adds): counted in /metrics
            logger.warning("error %s: 503 for %s: %s", error_id, request.url.path, detail)
            return server_error(503, detail, error_id, headers={"Retry-After": str(RETRY_AFTER_S), **CLOSE})
        pending[0] += 1
        admitted = time.perf_counter()
        try:
            response = await inspect_admitted(category, request, model, version, want)
        finally:
            pending[0] -= 1
        # the time from admission to the answer (queue and scoring): what a client waited inside the service
        response.headers["Server-Timing"] = f"service;dur={(time.perf_counter() - admitted) * 1000:.1f}"
        return response

    async def inspect_admitted(category: str, request: Request, model: str, version: int | None,
                               want: str | None) -> JSONResponse:
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
        judged_rows = []
        over_budget = 0
        for name, data in uploads:
            judged = await anyio.to_thread.run_sync(_judge, loaded, name, data, want, config, category, model,
                                                    limiter=limiter)
            results.append(judged.item)
            if judged.rejected is not None:
                unreadable.append(judged.rejected)
                over_budget += judged.over_budget
                continue
            item = judged.item
            latency.labels(category, model).observe(judged.seconds)
            verdicts.labels(category, model, item["verdict"]).inc()
            judged_rows.append({"time": time.time(), "source": "service", "category": category,
                                **{k: item[k] for k in ("name", "score", "threshold", "verdict", "model",
                                                        "version", "latency_ms", "familiar")},
                                "reason": item["note"], "path": judged.kept})
        status = 200
        if len(unreadable) == len(results):
            status = 413 if over_budget else 415
        await log_rows(judged_rows + [{**row, "status": status} for row in unreadable])
        if status == 413:
            return JSONResponse({"detail": f"expected images of at most {config.max_pixels:,} pixels, found none "
                                           "within that budget", "results": results}, status_code=413)
        if status == 415:
            return JSONResponse({"detail": "expected images, found none that could be read", "results": results},
                                status_code=415)
        answer = await anyio.to_thread.run_sync(drift.answer, loaded, limiter=log_limiter)
        return JSONResponse({"category": category, "results": results, "drift": answer})

    return app


async def _limited(request: Request, limit: int) -> AsyncGenerator[bytes]:
    """The request body, chunk by chunk, refused (:class:`_BodyTooLarge`) once more than ``limit`` bytes came."""
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise _BodyTooLarge(f"expected at most {limit:,} bytes per request, found more (stopped reading at "
                                f"{total:,})")
        yield chunk


async def _read_uploads(request: Request, config: ServiceConfig) -> list[tuple[str | None, bytes]]:
    """(name, bytes) of each image in a multipart form (any file field) or the raw body (its name None when the
    request declares none: the worker names it by its content hash). Size-limited while reading, whatever the
    form: a declared Content-Length over the limit is refused before reading, any body the moment it passes it."""
    limit = config.max_request_bytes
    try:
        declared = int(request.headers.get("content-length") or 0)
    except ValueError:
        raise HTTPException(400, "expected a whole number in Content-Length, found "
                                 f"{request.headers['content-length']!r}") from None
    if declared > limit:
        raise HTTPException(413, f"expected at most {limit:,} bytes per request, found {declared:,}",
                            headers=CLOSE)
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith("multipart/form-data"):
            parser = MultiPartParser(request.headers, _limited(request, limit), max_files=config.max_images,
                                     max_fields=config.max_images)
            try:
                form = await parser.parse()
            except _BodyTooLarge:
                raise
            except MultiPartException as exc:
                raise HTTPException(400, f"expected a well-formed multipart form, found: {exc.message}") from None
            try:
                uploads: list[tuple[str | None, bytes]] = []
                for key, value in form.multi_items():
                    if hasattr(value, "read"):
                        uploads.append((getattr(value, "filename", None) or key, await value.read()))
            finally:
                await form.close()
            if not uploads:
                raise HTTPException(422, "expected image files in the form (field 'files'), found none")
            return uploads
        chunks = [chunk async for chunk in _limited(request, limit)]
    except _BodyTooLarge as exc:
        raise HTTPException(413, exc.message, headers=CLOSE) from None
    body = b"".join(chunks)
    del chunks
    if not body:
        raise HTTPException(422, "expected an image as the request body or multipart files, found an empty body")
    return [(_header_name(request) or request.query_params.get("name") or None, body)]


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
    import uvicorn

    if processes > 1:  # uvicorn re-imports the app in each process: pass the config through the environment
        os.environ.update({settings.SERVICE_STORE_ENV: str(config.store),
                           settings.SERVICE_WORKERS_ENV: str(config.workers),
                           settings.SERVICE_QUEUE_ENV: str(config.pending_limit),
                           settings.MAX_PIXELS_ENV: str(config.max_pixels)})
        if (logged := logs.current()) is not None:  # the workers log as this process does
            os.environ.update(settings.log_environment(logged.level, logged.json_lines))
        if config.api_key:  # the environment of a process is readable by its owner only, unlike argv
            os.environ[API_KEY_ENV] = config.api_key
            os.environ.pop(API_KEY_FILE_ENV, None)
        uvicorn.run("core.line.service:app_from_env", host=host, port=port, workers=processes, factory=True,
                    log_level="warning", log_config=None)  # log_config None: uvicorn's lines go through core.logs
    else:
        uvicorn.run(create_app(config), host=host, port=port, log_level="warning", log_config=None)


def app_from_env() -> FastAPI:
    """The app for multi-process serving (``uvicorn --factory core.line.service:app_from_env``)."""
    logs.configure(settings.log_level(), settings.log_json())
    return create_app(ServiceConfig(settings.service_store(), api_key_from(None), settings.service_workers(),
                                    max_pending=settings.service_queue()))
