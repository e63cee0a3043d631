"""Load and fault tests of the inspection service and the watch folder (localhost only, bounded).

    python benchmarks/bench_service.py [--store DIR] [--clients 4] [--seconds 20]

1. Load: ``python -m core serve`` with 1 and with 2 processes behind one port; ``--clients`` concurrent
   clients post one demo test image each, back to back, for ``--seconds``; p50/p95/p99 latency (client side,
   whole request), throughput and errors, for PatchCore and EfficientAD.
2. Fault, service: the service is killed (SIGKILL) while clients are posting and started again; requests that
   failed while it was down are counted, and every request after the restart must succeed.
3. Fault, watch folder: 40 images, the watcher killed mid-batch and restarted; images lost or judged twice
   are counted (target: zero).
Without ``--store``, demo models are trained into a temp folder first (PatchCore default, EfficientAD 300 steps).
Written to the ``service`` section of RESULTS.md.
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
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, wait_ready, write_section

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(store: Path, port: int, processes: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "core", "serve", "--store", str(store), "--port", str(port),
                             "--processes", str(processes)], cwd=ROOT, env={**ENV, "INSPECT_LINE_LOG": str(log)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return wait_ready(proc, port)


def load(port: int, image: bytes, model: str, clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.time() + seconds

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            while time.time() < stop:
                t0 = time.perf_counter()
                try:
                    ok = http.post(f"http://127.0.0.1:{port}/v1/inspect/demo_metal?model={model}", content=image,
                                   headers={"Content-Type": "image/png"}).status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    if ok:
                        latencies.append((time.perf_counter() - t0) * 1000)
                    else:
                        errors[0] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return {"requests": len(latencies), "errors": errors[0], "per_s": len(latencies) / wall,
            "p50": q[49], "p95": q[94], "p99": q[98]}


def service_fault(store: Path, image: bytes, log: Path) -> dict:
    port = free_port()
    proc = start_service(store, port, 1, log)
    results = {"before": 0, "failed": 0, "after": 0, "after_failed": 0}
    state = {"phase": "before"}
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=10) as http:
            while not stop.is_set():
                try:
                    ok = http.post(f"http://127.0.0.1:{port}/v1/inspect/demo_metal", content=image).status_code == 200
                except httpx.HTTPError:
                    ok = False
                phase = state["phase"]
                if phase == "before":
                    results["before" if ok else "failed"] += 1
                elif phase == "down":
                    results["failed"] += 0 if ok else 1
                else:
                    results["after" if ok else "after_failed"] += 1
                if not ok:
                    time.sleep(0.2)

    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(5)
    state["phase"] = "down"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1)
    proc = start_service(store, port, 1, log)
    state["phase"] = "after"
    time.sleep(5)
    stop.set()
    for t in threads:
        t.join()
    proc.terminate()
    proc.wait(timeout=30)
    return results


def watch_fault(store: Path, images: list[Path], tmp: Path) -> dict:
    incoming = tmp / "in"
    incoming.mkdir(parents=True)
    for i in range(40):
        shutil.copy(images[i % len(images)], incoming / f"img{i:02d}.png")
    argv = [sys.executable, "-m", "core", "watch", "--store", str(store), "--category", "demo_metal", "--in",
            str(incoming), "--ok", str(tmp / "ok"), "--defect", str(tmp / "defect"), "--settle", "0", "--once"]
    env = {**ENV, "INSPECT_LINE_LOG": str(tmp / "line.jsonl")}
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    journal = incoming / ".watch_journal.jsonl"
    while proc.poll() is None and (not journal.exists() or journal.read_text().count('"done"') < 15):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = journal.read_text().count('"done"')
    subprocess.run(argv, cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    moved = [p.name for folder in ("ok", "defect", "rejected") for p in (tmp / folder).glob("*.png")]
    scored = [json.loads(line)["file"] for line in journal.read_text().splitlines() if '"scored"' in line]
    logged = (tmp / "results.csv").read_text().strip().splitlines()[1:]
    return {"images": 40, "done_at_kill": done_at_kill, "lost": 40 - len(set(moved)),
            "judged_twice": len(scored) - len(set(scored)), "logged": len(logged)}


def train_demo(tmp: Path) -> Path:
    data, store = tmp / "data", tmp / "models"
    for argv in (["demo", "--out", str(data)],
                 ["train", "--data", str(data), "--category", "demo_metal", "--store", str(store)],
                 ["train", "--data", str(data), "--category", "demo_metal", "--store", str(store), "--model",
                  "efficientad", "--steps", "300"]):
        subprocess.run([sys.executable, "-m", "core", *argv], cwd=ROOT, env=ENV, check=True, capture_output=True)
    return store


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", type=Path)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        store = args.store or train_demo(tmp)
        data = tmp / "data" if not args.store else None
        from core.data.demo import make_demo_dataset

        if data is None:
            data = tmp / "data"
            make_demo_dataset(data)
        images = sorted((data / "demo_metal" / "test").rglob("*.png"))
        image = images[0].read_bytes()
        rows = []
        for processes in (1, 2):
            port = free_port()
            proc = start_service(store, port, processes, tmp / "line.jsonl")
            try:
                for model in ("patchcore", "efficientad"):
                    load(port, image, model, 1, 2)  # warm every process a little
                    rows.append({"processes": processes, "model": model,
                                 **load(port, image, model, args.clients, args.seconds)})
                    print(rows[-1], file=sys.stderr, flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        fault = service_fault(store, image, tmp / "line.jsonl")
        print(fault, file=sys.stderr)
        watch = watch_fault(store, images, tmp / "watch")
        print(watch, file=sys.stderr)
    lines = [f"Machine: {machine()}. Demo category (images of 160x160 px), models trained by this script unless "
             f"--store. {args.clients} concurrent clients, each posting one image back to back for "
             f"{args.seconds:.0f} s; latency is the whole request as the client sees it.", "",
             "| server processes (one port) | model | requests | errors | requests/s | p50 ms | p95 ms | p99 ms |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['processes']} | {r['model']} | {r['requests']} | {r['errors']} | {r['per_s']:.1f} | "
                     f"{r['p50']:.0f} | {r['p95']:.0f} | {r['p99']:.0f} |")
    lines += ["", f"Service killed (SIGKILL) mid-stream and restarted: {fault['before']} requests answered before, "
                  f"{fault['failed']} failed while it was down (the client saw a connection error, nothing was "
                  f"half-answered), {fault['after']} answered after the restart, {fault['after_failed']} failed after it.",
              "", f"Watch folder killed (SIGKILL) mid-batch after {watch['done_at_kill']} of {watch['images']} images "
                  f"and restarted: {watch['lost']} lost, {watch['judged_twice']} judged twice, {watch['logged']} log rows.",
              "", "Command: `python benchmarks/bench_service.py`."]
    write_section("service", "## Inspection service and watch folder: load and faults\n\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
