"""Service replicas on one machine: ``python -m core serve --processes N`` (uvicorn) vs Ray Serve replicas (issue 27).

    .venv/bin/python benchmarks/bench_serve_replicas.py --extras /tmp/serve_extras            # every arm, then write
    .venv/bin/python benchmarks/bench_serve_replicas.py --arms ray1 ray2 --extras /tmp/serve_extras
    .venv/bin/python benchmarks/bench_serve_replicas.py --write                               # the section only

Both sides serve the product's own app (``core.line.service.create_app``), so the verdict pipeline
(``core.verdict.inspection`` through the service) is the same code: uvicorn runs it in 1 or 2 processes behind one
port (``serve --processes N``); Ray Serve runs it as the ASGI app of a deployment (``serve.ingress`` with a builder,
so each replica builds its own app, models loaded by the app's lifespan) with 1 or 2 replicas behind Ray's HTTP
proxy, on a local Ray cluster of 2 CPUs (each replica gets 2 / replicas CPUs, so torch's threads are 2 / replicas).

Each arm: the server is started in its own process (its whole process tree is measured and stopped by pid
afterwards); start-up is the time from the start to ``/ready`` answering 200 five polls in a row; then ``--rounds``
rounds of ``--posts`` POSTs of one demo image with ``--concurrency`` client threads (warm-up requests first, not
counted). Memory: the RSS (and PSS, which counts shared pages once) summed over the server's process tree after
the load. Each arm gets its own copy of the model store (so no arm reads another's history).

Model: a tiny PatchCore on the built-in demo category (``python -m core demo``; ``train --coreset-ratio 0.1``),
kept in ``benchmarks/out/serve_replicas_store`` for later runs. Ray Serve needs ``ray[serve]``'s extra packages;
``--extras DIR`` puts a ``pip install --target DIR`` of them on the servers' ``PYTHONPATH`` (the product's
virtualenv stays as it is; the uvicorn arms get the same path, so both sides run with uvloop and httptools).
Rows go to ``benchmarks/out/serve_replicas_<arm>.json``; RESULTS.md's ``serve_replicas`` section is written from
them (the reading is kept in ``bench_serve_replicas_reading.md`` beside this script).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, ROOT, machine, write_section

CATEGORY = "demo_metal"
STORE = OUT / "serve_replicas_store"
READING = Path(__file__).with_name("bench_serve_replicas_reading.md")
ARMS = {"uvicorn1": ("uvicorn", 1), "uvicorn2": ("uvicorn", 2), "ray1": ("ray", 1), "ray2": ("ray", 2)}
LABELS = {"uvicorn": "`serve --processes {n}` (uvicorn)", "ray": "Ray Serve, {n} replica(s)"}
RAY_CPUS = 2
BASE_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}


# ---------------------------------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children_map() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc."""
    out: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out.setdefault(ppid, []).append(int(entry.name))
    return out


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    kids = children_map()
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(kids.get(p, []))
    return found


def memory_mb(pids: list[int]) -> tuple[float, float]:
    """(RSS sum, PSS sum) in MB over ``pids`` (processes gone meanwhile count 0)."""
    rss = pss = 0.0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) / 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) / 1024
        except (OSError, ValueError):
            continue
    return rss, pss


def stop(proc: subprocess.Popen, timeout: float = 60) -> int:
    """Stop ``proc`` (SIGTERM, then SIGKILL) and every process of its tree still alive after it, by pid.
    Answers how many had to be killed."""
    pids = tree(proc.pid)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    time.sleep(2)
    killed = 0
    for pid in pids[1:]:
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            pass
    return killed


def wait_ready(proc: subprocess.Popen, port: int, timeout: float = 600, streak: int = 5) -> None:
    """Return once ``/ready`` on ``port`` answered 200 ``streak`` polls in a row (every replica or process
    behind the port has had a chance to answer)."""
    import httpx

    deadline, ok = time.time() + timeout, 0
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"expected the server to keep running, found it exited with {proc.returncode}")
        try:
            ok = ok + 1 if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 200 else 0
        except httpx.HTTPError:
            ok = 0
        if ok >= streak:
            return
        time.sleep(0.2)
    raise TimeoutError(f"expected /ready to answer 200 within {timeout:.0f} s")


def server_env(extras: Path | None) -> dict[str, str]:
    paths = [str(extras)] if extras else []
    return {**BASE_ENV, "PYTHONPATH": os.pathsep.join([*paths, str(ROOT)])}


def start(kind: str, n: int, store: Path, port: int, extras: Path | None, log: Path) -> subprocess.Popen:
    if kind == "uvicorn":
        argv = [sys.executable, "-m", "core", "serve", "--store", str(store), "--port", str(port), "--processes",
                str(n)]
    else:
        argv = [sys.executable, str(Path(__file__).resolve()), "--ray-server", str(port), str(n), str(store)]
    with log.open("w") as out:
        return subprocess.Popen(argv, cwd=ROOT, env=server_env(extras), stdout=out, stderr=subprocess.STDOUT)


# ---------------------------------------------------------------------------------------------------- Ray Serve
def ray_server(port: int, replicas: int, store: Path) -> None:
    """The Ray Serve side (run in its own process): a local cluster of RAY_CPUS CPUs, Serve's proxy on ``port``,
    one deployment whose ASGI app is the service's own ``create_app``, ``replicas`` replicas; runs until SIGTERM."""
    import logging

    import ray
    from ray import serve

    from core.line.service import ServiceConfig, create_app

    config = ServiceConfig(Path(store))

    def build():  # evaluated on each replica: its own app, cache and limiter, as one uvicorn process has
        return create_app(config)

    pythonpath = os.environ.get("PYTHONPATH", str(ROOT))
    ray.init(address="local", num_cpus=RAY_CPUS, object_store_memory=100_000_000, include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": pythonpath, "HF_HUB_OFFLINE": "1"}},
             logging_level=logging.WARNING, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    deployment = serve.deployment(serve.ingress(build)(type("Inspector", (), {})), name="inspector",
                                  num_replicas=replicas, max_ongoing_requests=16,
                                  ray_actor_options={"num_cpus": RAY_CPUS / replicas})
    serve.run(deployment.bind(), name="inspector", route_prefix="/", blocking=False)
    print(f"ray serve: {replicas} replica(s) on port {port}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    serve.shutdown()
    ray.shutdown()


# ---------------------------------------------------------------------------------------------------- load
def load(port: int, image: bytes, posts: int, concurrency: int) -> dict:
    """``posts`` POSTs of ``image`` from ``concurrency`` client threads: latencies (ms), wall seconds, errors."""
    import httpx

    local = threading.local()
    url = f"http://127.0.0.1:{port}/v1/inspect/{CATEGORY}?model=patchcore"

    def post(_: int) -> float | None:
        if not hasattr(local, "http"):
            local.http = httpx.Client(timeout=120)
        t0 = time.perf_counter()
        try:
            response = local.http.post(url, content=image, headers={"Content-Type": "image/png"})
        except httpx.HTTPError:
            return None
        if response.status_code != 200 or response.json()["results"][0].get("verdict") is None:
            return None
        return (time.perf_counter() - t0) * 1000

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        found = list(pool.map(post, range(posts)))
    wall = time.perf_counter() - t0
    latencies = [x for x in found if x is not None]
    return {"latencies": latencies, "wall_s": wall, "errors": posts - len(latencies)}


def run_arm(arm: str, image: bytes, args: argparse.Namespace, work: Path) -> dict:
    kind, n = ARMS[arm]
    store = work / arm / "models"
    shutil.copytree(STORE, store)
    port = free_port()
    log = OUT / f"serve_replicas_{arm}.log"
    t0 = time.perf_counter()
    proc = start(kind, n, store, port, args.extras, log)
    try:
        wait_ready(proc, port)
        startup = time.perf_counter() - t0
        load(port, image, args.warmup, args.concurrency)
        rounds = [load(port, image, args.posts, args.concurrency) for _ in range(args.rounds)]
        pids = tree(proc.pid)
        rss, pss = memory_mb(pids)
    finally:
        killed = stop(proc)
    latencies = [x for r in rounds for x in r["latencies"]]
    q = statistics.quantiles(latencies, n=100)
    rates = [len(r["latencies"]) / r["wall_s"] for r in rounds]
    return {"arm": arm, "kind": kind, "n": n, "startup_s": startup, "per_s": statistics.median(rates),
            "per_s_rounds": rates, "p50_ms": q[49], "p95_ms": q[94], "errors": sum(r["errors"] for r in rounds),
            "requests": len(latencies), "rss_mb": rss, "pss_mb": pss, "processes": len(pids),
            "killed_after_stop": killed}


def train_store() -> None:
    """The tiny PatchCore of the demo category in STORE (kept for later runs)."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        for argv in (["demo", "--out", str(data)],
                     ["train", "--data", str(data), "--category", CATEGORY, "--store", str(STORE),
                      "--coreset-ratio", "0.1"]):
            subprocess.run([sys.executable, "-m", "core", *argv], cwd=ROOT, env=BASE_ENV, check=True,
                           capture_output=True)


def demo_image() -> bytes:
    from core.data.demo import make_demo_dataset

    with tempfile.TemporaryDirectory() as tmp:
        make_demo_dataset(Path(tmp))
        return sorted((Path(tmp) / CATEGORY / "test").rglob("*.png"))[0].read_bytes()


# ---------------------------------------------------------------------------------------------------- results
def section() -> str:
    rows = [json.loads(p.read_text()) for arm in ARMS if (p := OUT / f"serve_replicas_{arm}.json").exists()]
    lines = ["## Service replicas on one machine: `serve --processes N` (uvicorn) vs Ray Serve (`bench_serve_replicas.py`)",
             ""]
    for r in rows:
        lines.append(f"- {r['arm']}: measured {r['when']} on {r['machine']}; load before the arm: `{r['uptime']}`")
    if rows:
        r = rows[0]
        lines += ["", f"The product's service app (tiny PatchCore, demo category, one {r['image_px']} px PNG) under "
                      f"{r['rounds']} rounds of {r['posts']} POSTs, {r['concurrency']} client threads on the same "
                      f"machine (after {r['warmup']} warm-up POSTs); images/s is the median round, latencies "
                      "pooled over the rounds (whole request, client side); start-up is the start to `/ready` "
                      "200 five times in a row; memory summed over the server's process tree after the load "
                      "(RSS counts shared pages once per process, PSS once).", "",
                  "| server (one port) | start-up s | images/s (rounds) | p50 ms | p95 ms | errors | processes | "
                  "RSS sum MB | PSS sum MB |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            label = LABELS[r["kind"]].format(n=r["n"])
            rounds = ", ".join(f"{x:.1f}" for x in r["per_s_rounds"])
            lines.append(f"| {label} | {r['startup_s']:.1f} | {r['per_s']:.1f} ({rounds}) | {r['p50_ms']:.0f} | "
                         f"{r['p95_ms']:.0f} | {r['errors']} | {r['processes']} | {r['rss_mb']:.0f} | "
                         f"{r['pss_mb']:.0f} |")
        lines += ["", "Command: `flock /tmp/bench.lock .venv/bin/python benchmarks/bench_serve_replicas.py "
                      "--extras /tmp/serve_extras` (the extras: `pip install --target /tmp/serve_extras --no-deps` "
                      "of what `ray[serve]==2.60.0` adds to this virtualenv)."]
    if READING.exists():
        lines += ["", READING.read_text().strip()]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--posts", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--extras", type=Path, help="a pip --target folder with ray[serve]'s extra packages")
    parser.add_argument("--write", action="store_true", help="only write RESULTS.md's section from the saved rows")
    parser.add_argument("--no-write", action="store_true", help="measure only (RESULTS.md left alone)")
    parser.add_argument("--ray-server", nargs=3, metavar=("PORT", "REPLICAS", "STORE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ray_server:
        ray_server(int(args.ray_server[0]), int(args.ray_server[1]), Path(args.ray_server[2]))
        return 0
    if not args.write:
        OUT.mkdir(parents=True, exist_ok=True)
        if not (STORE / CATEGORY).is_dir():
            train_store()
        image = demo_image()
        import io

        from PIL import Image

        size = "x".join(str(s) for s in Image.open(io.BytesIO(image)).size)
        with tempfile.TemporaryDirectory(prefix="serve-replicas-") as tmp:
            for arm in args.arms:
                uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
                row = run_arm(arm, image, args, Path(tmp))
                row.update({"machine": machine(), "uptime": uptime, "image_px": size, "posts": args.posts,
                            "rounds": args.rounds, "warmup": args.warmup, "concurrency": args.concurrency,
                            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
                (OUT / f"serve_replicas_{arm}.json").write_text(json.dumps(row, indent=2))
                print(json.dumps(row), flush=True)
    if not args.no_write:
        write_section("serve_replicas", section())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
