"""Hostile input and overload against the inspection service (127.0.0.1 only; bounded in count and time).

    python benchmarks/bench_hostile.py [--seconds 12] [--clients 4 64 256]

Starts ``python -m core serve`` (one process, 2 workers, an API key from ``INSPECT_API_KEY``) on a PatchCore
model trained here on the generated demo category (core.data.demo), then, one case at a time, sends each hostile
request and records the answer, the time to it, the server's peak RSS growth (``/proc/<pid>/clear_refs`` reset,
then ``VmHWM`` against ``VmRSS`` before; ``VmRSS`` also sampled every 5 ms) and ``/health`` p50/p95 polled every
20 ms from another thread from the request until at least 1.5 s later. Then the load table: N clients (asyncio streams, in a child process
so the poller is not starved by the client) post a demo image back to back for ``--seconds``; a client told 503
waits its ``Retry-After``. Targets (issue 22): every hostile case a 4xx in under 1 s and under 200 MB RSS growth;
``/health`` p95 under 100 ms during all of them; at 256 clients no accepted request waits more than 2 s.
Written to the ``hostile`` section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing
import os
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, wait_ready, write_section

KEY = "bench-hostile-key"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "INSPECT_API_KEY": KEY}
MB = 2**20
CASE_TIMEOUT = 60.0
MIN_WINDOW_S = 1.5  # /health is polled for at least this long per case (from the request to after the answer)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- server-side measurements --------------------------------------------------------------------------------

def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class Watch:
    """During one case: the server's RSS (peak) and /health latencies."""

    def __init__(self, pid: int, port: int) -> None:
        self.pid, self.port = pid, port

    def __enter__(self) -> Watch:
        self.stop = threading.Event()
        self.t0 = time.perf_counter()
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # reset VmHWM to the RSS now
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.base_kb = _status_kb(self.pid, "VmRSS")
        self.max_kb = self.base_kb
        self.health: list[float] = []
        self.health_failed = 0
        self.threads = [threading.Thread(target=self._rss, daemon=True),
                        threading.Thread(target=self._poll, daemon=True)]
        for t in self.threads:
            t.start()
        return self

    def _rss(self) -> None:
        while not self.stop.is_set():
            try:
                self.max_kb = max(self.max_kb, _status_kb(self.pid, "VmRSS"))
            except (OSError, KeyError):
                return
            time.sleep(0.005)

    def _poll(self) -> None:
        with httpx.Client(timeout=10) as http:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                try:
                    ok = http.get(f"http://127.0.0.1:{self.port}/health").status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    self.health.append((time.perf_counter() - t0) * 1000)
                else:
                    self.health_failed += 1
                time.sleep(0.02)

    def __exit__(self, *exc: object) -> None:
        time.sleep(max(0.1, MIN_WINDOW_S - (time.perf_counter() - self.t0)))  # enough polls for a p95
        self.stop.set()
        for t in self.threads:
            t.join(15)
        peak = self.max_kb
        if self.hwm_reset:
            peak = max(peak, _status_kb(self.pid, "VmHWM"))
        self.growth_mb = (peak - self.base_kb) / 1024
        self.health_p50, self.health_p95 = _pcts(self.health, (50, 95))


def _pcts(values: list[float], which: tuple[int, ...]) -> tuple[float, ...]:
    if len(values) < 2:
        return tuple(values[0] if values else float("nan") for _ in which)
    q = statistics.quantiles(values, n=100)
    return tuple(q[w - 1] for w in which)


# --- clients -------------------------------------------------------------------------------------------------

def raw_request(port: int, head: str, body: Iterator[bytes], timeout: float = CASE_TIMEOUT) -> tuple[int, str, int]:
    """Send ``head`` then the pieces of ``body`` on one socket until the server answers (or the body ends):
    (status, the answer's body, bytes of body sent). Stops sending as soon as an answer comes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(head.encode())
    sock.setblocking(False)
    answer, sent = b"", 0
    view = memoryview(b"")
    sending = True
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock] if sending else [], [], 0.5)
            if readable:
                try:
                    data = sock.recv(1 << 16)
                except (BlockingIOError, InterruptedError):
                    data = b"?"
                except ConnectionResetError:
                    data = b""
                if not data:
                    break
                if data != b"?":
                    answer += data
                    if _complete(answer):
                        break
            if writable and sending:
                if not view:
                    piece = next(body, None)
                    if piece is None:
                        sending = False
                        continue
                    view = memoryview(piece)
                try:
                    n = sock.send(view)
                    sent += n
                    view = view[n:]
                except (BlockingIOError, InterruptedError):
                    pass
                except (BrokenPipeError, ConnectionResetError):
                    sending = False
    finally:
        sock.close()
    head_part, _, rest = answer.partition(b"\r\n\r\n")
    try:
        status = int(head_part.split(b" ", 2)[1])
    except (IndexError, ValueError):
        status = 0
    return status, rest.decode(errors="replace"), sent


def _complete(answer: bytes) -> bool:
    head, sep, rest = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(rest) >= int(value.strip())
    return False


def chunked(pieces: Iterator[bytes]) -> Iterator[bytes]:
    for piece in pieces:
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    yield b"0\r\n\r\n"


def zeros(total: int, size: int = MB) -> Iterator[bytes]:
    block = b"\x00" * size
    for _ in range(total // size):
        yield block


def multipart(total: int, boundary: str = "hostile") -> Iterator[bytes]:
    yield (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n'
           "Content-Type: image/png\r\n\r\n").encode()
    yield from zeros(total)
    yield f"\r\n--{boundary}--\r\n".encode()


def head(path: str, extra: str) -> str:
    return f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {KEY}\r\n{extra}\r\n"


def encoded(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


# --- the service ----------------------------------------------------------------------------------------------

def train_demo(tmp: Path) -> Path:
    data, store = tmp / "data", tmp / "models"
    for cmd in (["demo", "--out", str(data)],
                ["train", "--data", str(data), "--category", "demo_metal", "--store", str(store)]):
        subprocess.run([sys.executable, "-m", "core", *cmd], cwd=ROOT, env=ENV, check=True,
                       stdout=subprocess.DEVNULL)
    return store


def start_service(store: Path, port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "core", "serve", "--store", str(store), "--port", str(port),
                             "--workers", "2"], cwd=ROOT, env={**ENV, "INSPECT_LINE_LOG": str(log)},
                            stdout=subprocess.DEVNULL, stderr=open(log.with_suffix(".err"), "w"))  # noqa: SIM115
    return wait_ready(proc, port, {"X-API-Key": KEY})


def zero_threshold_copy(store: Path) -> None:
    """``demo_zero``: the demo model with image_threshold 0 in its calibration (a hand-edited file)."""
    src, dst = store / "demo_metal", store / "demo_zero"
    shutil.copytree(src, dst)
    for manifest in dst.glob("patchcore/v*/manifest.json"):
        data = json.loads(manifest.read_text())
        data["category"] = "demo_zero"
        manifest.write_text(json.dumps(data))
    for cal in dst.glob("patchcore/v*/calibration.json"):
        data = json.loads(cal.read_text())
        data["image_threshold"] = 0.0
        cal.write_text(json.dumps(data))


# --- load ----------------------------------------------------------------------------------------------------

async def _exchange(port: int, conn: list, request: bytes) -> tuple[int, dict[str, str]]:
    """One request on the client's keep-alive connection (``conn``: [reader, writer] or empty; opened as
    needed, dropped when the server says close): (status, headers)."""
    if not conn:
        conn.extend(await asyncio.open_connection("127.0.0.1", port))
    reader, writer = conn
    try:
        writer.write(request)
        await writer.drain()
        status_line = await reader.readline()
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        await reader.readexactly(int(headers.get("content-length", "0")))
        status = int(status_line.split()[1])
    except (OSError, IndexError, ValueError, asyncio.IncompleteReadError):
        writer.close()
        conn.clear()
        raise
    if headers.get("connection", "").lower() == "close":
        writer.close()
        conn.clear()
    return status, headers


def _load_child(port: int, image: bytes, clients: int, seconds: float, out: multiprocessing.Queue) -> None:
    """N clients on plain asyncio streams (a hand-written HTTP/1.1 request: httpx's own pool costs seconds of
    client time at 256 connections on 2 cores, which is not the service's)."""
    request = (f"POST /v1/inspect/demo_metal HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {KEY}\r\n"
               f"Content-Type: image/png\r\nContent-Length: {len(image)}\r\n\r\n").encode() + image

    async def main() -> dict:
        latencies: list[float] = []
        inside: list[float] = []  # the service's own admission-to-answer time (Server-Timing)
        busy = [0]
        errors: list[str] = []
        stop = time.perf_counter() + seconds

        async def client() -> None:
            conn: list = []
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    status, headers = await asyncio.wait_for(_exchange(port, conn, request), 60)
                except (OSError, ValueError, IndexError, asyncio.IncompleteReadError, TimeoutError) as exc:
                    errors.append(type(exc).__name__)
                    await asyncio.sleep(0.2)
                    continue
                if status == 200:
                    latencies.append((time.perf_counter() - t0) * 1000)
                    timing = headers.get("server-timing", "")
                    if "dur=" in timing:
                        inside.append(float(timing.split("dur=", 1)[1].split(",")[0]))
                elif status == 503:
                    busy[0] += 1
                    await asyncio.sleep(float(headers.get("retry-after", "1")))
                else:
                    errors.append(str(status))
            if conn:
                conn[1].close()

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - t0
        p50, p95, p99 = _pcts(latencies, (50, 95, 99))
        (in_p99,) = _pcts(inside, (99,))
        return {"in_p99": in_p99, "in_max": max(inside, default=float("nan")), "clients": clients,
                "ok": len(latencies), "per_s": len(latencies) / wall, "p50": p50, "p95": p95, "p99": p99,
                "max": max(latencies, default=float("nan")), "busy": busy[0], "errors": len(errors),
                "error_kinds": sorted(set(errors))[:5]}

    out.put(asyncio.run(main()))


def load(port: int, pid: int, image: bytes, clients: int, seconds: float) -> dict:
    queue: multiprocessing.Queue = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(target=_load_child,
                                                        args=(port, image, clients, seconds, queue))
    with Watch(pid, port) as w:
        child.start()
        result = queue.get(timeout=seconds + 180)
        child.join(30)
    return {**result, "health_p95": w.health_p95, "health_failed": w.health_failed, "rss_mb": w.growth_mb}


# --- main ----------------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="per load level")
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 64, 256])
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    try:
        t0 = time.time()
        store = train_demo(tmp)
        print(f"trained in {time.time() - t0:.0f} s", file=sys.stderr)
        good = (tmp / "data" / "demo_metal" / "test" / "good" / "000.png").read_bytes()
        port = free_port()
        proc = start_service(store, port, tmp / "line.jsonl")
        zero_threshold_copy(store)  # after start: /ready would report it
        base = f"http://127.0.0.1:{port}"
        try:
            cases, table = hostile_cases(proc.pid, port, base, good)
            loads = [load(port, proc.pid, good, n, args.seconds) for n in args.clients]
        finally:
            proc.terminate()
            proc.wait(30)
        write(cases, table, loads, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def hostile_cases(pid: int, port: int, base: str, good: bytes) -> tuple[list[dict], str]:
    inspect = "/v1/inspect/demo_metal"
    key = {"X-API-Key": KEY}
    print("building the hostile images", file=sys.stderr)
    big_png = encoded(Image.new("L", (8900, 8900)), "PNG", optimize=False)
    float_tif = encoded(Image.new("F", (8900, 8900)), "TIFF", compression="tiff_deflate")
    deep_tif = encoded(Image.new("I;16", (8900, 8900)), "TIFF", compression="tiff_deflate")
    small = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    others = {fmt: encoded(small, fmt) for fmt in ("GIF", "WEBP", "ICO")}
    under = encoded(Image.new("RGB", (6000, 6000), (90, 90, 90)), "PNG")

    def post(path: str, content: bytes, headers: dict | None = None) -> Callable[[], tuple[int, str]]:
        def run() -> tuple[int, str]:
            r = httpx.post(base + path, content=content, headers={**key, **(headers or {})}, timeout=CASE_TIMEOUT)
            return r.status_code, r.text
        return run

    def three() -> tuple[int, str]:
        answers: list[tuple[int, str]] = []
        threads = [threading.Thread(target=lambda: answers.append(post(inspect + "?return=overlay", big_png)()))
                   for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return max(a[0] for a in answers), " / ".join(str(a[0]) for a in answers) + ": " + answers[0][1]

    def raw(extra: str, body: Iterator[bytes], path: str = inspect) -> Callable[[], tuple[int, str]]:
        def run() -> tuple[int, str]:
            status, text, sent = raw_request(port, head(path, extra), body)
            return status, f"{text} [client had sent {sent / MB:.1f} MB]"
        return run

    def keys() -> tuple[int, str]:
        seen = []
        for path in ("/docs", "/metrics", "/openapi.json", "/ready"):
            for headers in ({}, {"X-API-Key": "wrong"}):
                seen.append(httpx.get(base + path, headers=headers, timeout=10).status_code)
        return max(seen), f"{len(seen)} requests: " + ", ".join(map(str, seen))

    def formats() -> tuple[int, str]:
        seen = {fmt: post(inspect, data)() for fmt, data in others.items()}
        return max(s for s, _ in seen.values()), "; ".join(f"{f} {s}" for f, (s, _) in seen.items()) + " " + \
            next(iter(seen.values()))[1]

    plan: list[tuple[str, Callable[[], tuple[int, str]]]] = [
        ("chunked raw upload of 1 GB (no Content-Length)",
         raw("Content-Type: image/png\r\nTransfer-Encoding: chunked\r\n", chunked(zeros(1024 * MB)))),
        ("chunked multipart upload of 1 GB",
         raw("Content-Type: multipart/form-data; boundary=hostile\r\nTransfer-Encoding: chunked\r\n",
             chunked(multipart(1024 * MB)))),
        ("Content-Length: 10 GB declared", raw(f"Content-Type: image/png\r\nContent-Length: {10 * 2**30}\r\n",
                                               iter([b"\x00" * 1024]))),
        (f"8900x8900 PNG ({len(big_png) / 1024:.0f} KB), return=overlay", post(inspect + "?return=overlay", big_png)),
        ("three of those at once", three),
        (f"8900x8900 float TIFF ({len(float_tif) / 1024:.0f} KB)", post(inspect, float_tif)),
        (f"8900x8900 16-bit TIFF ({len(deep_tif) / 1024:.0f} KB)", post(inspect, deep_tif)),
        ("GIF, WebP, ICO (64x64)", formats),
        ("threshold-0 calibration (hand-edited calibration.json)", post("/v1/inspect/demo_zero", good)),
        ("no key / wrong key on /docs, /metrics, /openapi.json, /ready", keys),
        ("for scale, not hostile: a 6000x6000 PNG (36 Mpx, within the budget), return=overlay",
         post(inspect + "?return=overlay", under)),
    ]
    results = []
    for name, run in plan:
        time.sleep(1.0)  # let the server settle
        print(f"case: {name}", file=sys.stderr)
        with Watch(pid, port) as w:
            t0 = time.perf_counter()
            try:
                status, text = run()
            except Exception as exc:  # a failed case is a result too
                status, text = 0, f"{type(exc).__name__}: {exc}"
            seconds = time.perf_counter() - t0
        detail = " ".join(text.split())
        results.append({"case": name, "status": status, "seconds": seconds, "rss_mb": w.growth_mb,
                        "health_p50": w.health_p50, "health_p95": w.health_p95, "health_n": len(w.health),
                        "health_failed": w.health_failed, "answer": detail[:220]})
        print(json.dumps(results[-1]), file=sys.stderr)
    lines = ["| case | answer | time | server RSS growth (peak) | /health p50 / p95 (n) | answer (start) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['case']} | {r['status']} | {r['seconds'] * 1000:.0f} ms | {r['rss_mb']:.0f} MB | "
                     f"{r['health_p50']:.1f} / {r['health_p95']:.1f} ms ({r['health_n']}"
                     f"{', ' + str(r['health_failed']) + ' failed' if r['health_failed'] else ''}) | "
                     f"{r['answer'].replace('|', '/')[:160]} |")
    return results, "\n".join(lines)


def write(cases: list[dict], table: str, loads: list[dict], args: argparse.Namespace) -> None:
    hostile = [c for c in cases if not c["case"].startswith("for scale")]
    four = all(400 <= c["status"] < 500 for c in hostile)
    fast = max(c["seconds"] for c in hostile)
    rss = max(c["rss_mb"] for c in hostile)
    health = max(c["health_p95"] for c in hostile)
    top = loads[-1]
    load_lines = ["| clients | accepted/s | p50 | p95 | p99 | max | in the service p99 / max | 503 (busy) | "
                  "other errors | /health p95 | RSS growth |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in loads:
        load_lines.append(f"| {r['clients']} | {r['per_s']:.1f} | {r['p50']:.0f} ms | {r['p95']:.0f} ms | "
                          f"{r['p99']:.0f} ms | {r['max']:.0f} ms | {r['in_p99']:.0f} / {r['in_max']:.0f} ms | "
                          f"{r['busy']} | {r['errors']}"
                          f"{' ' + ','.join(r['error_kinds']) if r['error_kinds'] else ''} | "
                          f"{r['health_p95']:.1f} ms | {r['rss_mb']:.0f} MB |")
    verdict = [
        f"- every hostile case a 4xx: {'met' if four else 'NOT met'}",
        f"- each answered in under 1 s: {'met' if fast < 1 else 'NOT met'} (slowest {fast * 1000:.0f} ms)",
        f"- under 200 MB RSS growth: {'met' if rss < 200 else 'NOT met'} (largest {rss:.0f} MB)",
        f"- /health p95 under 100 ms during all of them: {'met' if health < 100 else 'NOT met'} "
        f"(worst {health:.1f} ms)",
        f"- at {top['clients']} clients no accepted request waits more than 2 s: "
        f"{'met' if top['max'] <= 2000 else 'NOT met'} as the client measures it (max {top['max']:.0f} ms, p99 "
        f"{top['p99']:.0f} ms); inside the service, admission to answer: "
        f"{'met' if top['in_max'] <= 2000 else 'NOT met'} (max {top['in_max']:.0f} ms); {top['busy']} answered 503",
    ]
    body = "\n".join([
        "## Hostile input and overload (`benchmarks/bench_hostile.py`)",
        "",
        f"Machine: {machine()}. The 2 cores were shared with other engineers' work while this ran, so times are "
        "upper bounds. One service process (`python -m core serve --workers 2`, admission limit 4 x workers = 8, "
        "50 MB body limit, 40 Mpx pixel budget, API key set), PatchCore trained here on the demo category "
        "(160x160 px images). Client and server on 127.0.0.1; RSS growth is the server's peak (`VmHWM` after a "
        "`clear_refs` reset, and `VmRSS` sampled every 5 ms) above its RSS at the start of the case; `/health` "
        "polled every 20 ms from another thread from the start of the case until at least 1.5 s later (n: polls).",
        "",
        table,
        "",
        f"Load: N clients (plain asyncio streams, keep-alive, in a separate process) post a 160x160 demo PNG back to back for "
        f"{args.seconds:g} s; a client answered 503 waits its `Retry-After` (1 s) before trying again. Latency is "
        "the client's whole request for accepted (200) requests, queueing included; \"in the service\" is the "
        "time from admission to the answer the service reports (`Server-Timing: service;dur=`), without the "
        "client's own scheduling and connection handling, which share the same 2 cores.",
        "",
        "\n".join(load_lines),
        "",
        "An earlier run with an `httpx.AsyncClient` as the load client measured up to 10 s (p50 2.1-2.5 s) at 256 clients while the service reported at most 0.9 s from admission to answer and /health stayed under 15 ms: the client's own connection pool on the shared 2 cores, not the service; hence the plain-stream client.",
        "",
        "Targets:",
        *verdict,
    ])
    write_section("hostile", body)
    print(body)


if __name__ == "__main__":
    main()
