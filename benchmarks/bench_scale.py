"""Past one machine: batch re-inspection and train-all, plain loop vs Ray (issue 27). Writes RESULTS.md's
``<!-- scale -->`` section from the parts measured so far (benchmarks/out/scale_<part>.json).

    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_scale.py --part batch   # images/s, 1 and 2 workers
    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_scale.py --part train   # train-all vs one by one

Data: ../shared/data/magnetic_tile (real images). ``batch``: a PatchCore model (default settings) trained on the
first ``--train`` good images, then ``--images`` test images re-inspected into a fresh SQLite results database by
(a) the plain loop in this process, (b) Ray with 1 actor, (c) Ray with 2 actors (a local Ray cluster started by
this process, 2 CPUs), and the driver alone (hash, look up, write; a runner that judges nothing) for its own cost
per image. ``train``: ``--categories`` tiny PatchCore categories (disjoint slices of magnetic_tile's good images,
small input) trained one by one in this process vs one Ray task each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from common import DATA, OUT, machine, write_section

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from core.line import (
    batch,
    train_all,
)
from core.store import lifecycle
from core.store.history import History
from core.store.model_store import ModelStore

TILE = DATA / "magnetic_tile"


def _category(src: list[Path], dest: Path, name: str) -> Path:
    good = dest / name / "train" / "good"
    good.mkdir(parents=True)
    for p in src:
        shutil.copyfile(p, good / p.name)
    (dest / name / "test" / "good").mkdir(parents=True)
    shutil.copyfile(src[0], dest / name / "test" / "good" / src[0].name)
    return dest / name


class DriverOnly:
    """A runner that judges nothing (each item REJECTED at once): what is left is the driver's own cost per image
    (hash the file, look it up, write the row). Only for measuring."""

    workers = 1

    def map(self, chunks: Iterable[list[batch.Item]]) -> Iterator[list[batch.Judged]]:
        for chunk in chunks:
            yield [batch.Judged(i.path, i.sha1, batch.REJECTED, None, None, None, "driver only", None, "-",
                                time.time()) for i in chunk]

    def close(self) -> None:
        pass


def _timed_batch(ref, paths, runner, db: Path, chunk: int) -> dict:
    with History(f"sqlite:///{db}") as history:
        t0 = time.perf_counter()
        summary = batch.run_batch(ref, paths, runner, history, chunk_size=chunk)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "judged": summary.judged, "img_s": summary.judged / seconds}


def part_batch(args: argparse.Namespace, work: Path) -> dict:
    goods = sorted((TILE / "train" / "good").glob("*.png"))[: args.train]
    data = work / "data"
    _category(goods, data, "tile")
    store = ModelStore(work / "models")
    t0 = time.perf_counter()
    from core.data.dataset import load_category

    lifecycle.train(load_category(data, "tile"), "patchcore", {}, store)
    train_s = time.perf_counter() - t0
    ref = store.current("tile", "patchcore")
    tests = sorted((TILE / "test").rglob("*.png"))
    paths = tests[:: max(1, len(tests) // args.images)][: args.images]
    out: dict = {"images": len(paths), "train_images": len(goods), "train_s": train_s, "chunk": args.chunk,
                 "settings": lifecycle.load(ref).manifest.get("backbone", "?")}

    t0 = time.perf_counter()
    judge = batch.Judge(ref)
    out["load_s"] = time.perf_counter() - t0
    del judge
    out["driver"] = _timed_batch(ref, paths, DriverOnly(), work / "driver.sqlite3", args.chunk)
    runner = batch.LocalRunner(ref)  # the model loads at the first chunk, inside the timed run
    out["plain"] = _timed_batch(ref, paths, runner, work / "plain.sqlite3", args.chunk)
    import ray

    from core.line.ray_cluster import RayRunner

    for workers in (1, 2):
        t0 = time.perf_counter()
        ray_runner = RayRunner(ref, "fast", "local", workers=workers)
        ray_runner.pids()  # every actor up, its model loaded
        start_s = time.perf_counter() - t0
        try:
            result = _timed_batch(ref, paths, ray_runner, work / f"ray{workers}.sqlite3", args.chunk)
        finally:
            ray_runner.close()
        out[f"ray{workers}"] = {**result, "start_s": start_s}
        if ray.is_initialized():
            ray.shutdown()
    return out


def part_train(args: argparse.Namespace, work: Path) -> dict:
    goods = sorted((TILE / "train" / "good").glob("*.png"))
    per = args.per_category
    data = work / "data"
    for i in range(args.categories):
        _category(goods[i * per:(i + 1) * per], data, f"tile{i}")
    settings = {"height": 128, "width": 128, "coreset_ratio": 0.1}
    out: dict = {"categories": args.categories, "per_category": per, "settings": settings}
    jobs = train_all.jobs_for(data, "patchcore", settings, work / "plain_models", "this process")
    t0 = time.perf_counter()
    outcomes = train_all.run_local(jobs)
    out["plain_s"] = time.perf_counter() - t0
    out["plain_job_s"] = [o.seconds for o in outcomes]
    from core.line import ray_cluster

    jobs = train_all.jobs_for(data, "patchcore", settings, work / "ray_models", "Ray local")
    t0 = time.perf_counter()
    outcomes = ray_cluster.run_train(jobs, "local")
    out["ray_s"] = time.perf_counter() - t0
    out["ray_job_s"] = [o.seconds for o in outcomes]
    out["ray_ok"] = all(o.ok for o in outcomes)
    return out


def _f(x: float, d: int = 1) -> str:
    return f"{x:.{d}f}"


def section() -> str:
    parts = {p: json.loads((OUT / f"scale_{p}.json").read_text()) for p in ("batch", "train")
             if (OUT / f"scale_{p}.json").is_file()}
    lines = ["## Past one machine: batch re-inspection and train-all, plain vs Ray (`bench_scale.py`)", ""]
    for name, part in parts.items():
        lines.append(f"- {name}: measured {part['when']} on {part['machine']}; load before the run: "
                     f"`{part['uptime']}`")
    loads = [float(part["uptime"].rsplit("load average:", 1)[1].split(",")[0]) for part in parts.values()]
    lines.append(f"- 1-minute load before the runs: {', '.join(f'{v:.1f}' for v in loads)} on {os.cpu_count()} cores "
                 "(it lags: a part run right after another carries that one's load); a time measured while other "
                 "work ran is an upper bound")
    b = parts.get("batch")
    if b:
        n = b["images"]
        plain_ms = 1000 * b["plain"]["seconds"] / n
        ray1_ms = 1000 * b["ray1"]["seconds"] / n
        steady_img_s = n / max(b["plain"]["seconds"] - b["load_s"], 1e-9)
        lines += ["", f"Batch re-inspection of {n} magnetic_tile test images (PatchCore, default settings, trained on "
                  f"{b['train_images']} good images), chunks of {b['chunk']}, a fresh SQLite results database each:", "",
                  "| run | start-up s | run s | images/s | ms/image |", "|---|---:|---:|---:|---:|",
                  f"| driver only (hash, look up, write; judges nothing) | 0 | {_f(b['driver']['seconds'], 2)} | "
                  f"{_f(b['driver']['img_s'])} | {_f(1000 * b['driver']['seconds'] / n, 2)} |",
                  f"| plain loop, this process (model load {_f(b['load_s'])} s inside the run) | 0 | "
                  f"{_f(b['plain']['seconds'])} | {_f(b['plain']['img_s'], 2)} | {_f(plain_ms)} |"]
        for w in (1, 2):
            r = b[f"ray{w}"]
            lines.append(f"| Ray, {w} actor{'s' if w > 1 else ''} (local cluster, 2 CPUs) | {_f(r['start_s'])} | "
                         f"{_f(r['seconds'])} | {_f(r['img_s'], 2)} | {_f(1000 * r['seconds'] / n)} |")
        lines += ["", f"Per-image overhead of Ray against the plain loop (1 actor vs plain, steady state, model "
                  f"loaded; the actor has 1 CPU, the plain loop torch's 2 threads): "
                  f"{_f(ray1_ms - plain_ms + 1000 * b['load_s'] / n)} ms/image; fixed start-up: {_f(b['ray1']['start_s'])} s (cluster, actor, model). Speed-up of 2 actors "
                  f"over 1: {_f(b['ray2']['img_s'] / b['ray1']['img_s'], 2)}x; over the plain loop in steady state "
                  f"(its model load left out: {_f(steady_img_s, 1)} images/s): {_f(b['ray2']['img_s'] / steady_img_s, 2)}x."]
    t = parts.get("train")
    if t:
        lines += ["", f"train-all of {t['categories']} tiny PatchCore categories ({t['per_category']} good images each, "
                  f"{t['settings']['height']} px, coreset {t['settings']['coreset_ratio']}):", "",
                  "| run | wall s | per job s |", "|---|---:|---|",
                  f"| one by one, this process | {_f(t['plain_s'])} | "
                  f"{', '.join(_f(s) for s in t['plain_job_s'])} |",
                  f"| one Ray task each (local cluster, 2 CPUs; start-up included) | {_f(t['ray_s'])} | "
                  f"{', '.join(_f(s) for s in t['ray_job_s'])} |"]
    lines += ["", "Ray Serve replicas against `python -m core serve --processes N` behind one port (issue 27's "
              "third item): the `serve_replicas` section (`bench_serve_replicas.py`); the service stays on uvicorn "
              "processes."]
    reading = Path(__file__).with_name("bench_scale_reading.md")  # the hand-written reading of the figures
    if reading.is_file():
        lines += ["", reading.read_text().strip()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("batch", "train", "write"), required=True)
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--train", type=int, default=60)
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--categories", type=int, default=4)
    parser.add_argument("--per-category", type=int, default=30)
    args = parser.parse_args()
    if args.part != "write":
        if not TILE.is_dir():
            sys.exit(f"skipped: no {TILE}")
        uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        work = Path(tempfile.mkdtemp(prefix=f"scale-{args.part}-"))
        try:
            found = (part_batch if args.part == "batch" else part_train)(args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        found.update({"machine": machine(), "uptime": uptime, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / f"scale_{args.part}.json").write_text(json.dumps(found, indent=2))
        print(json.dumps(found, indent=2))
    write_section("scale", section())


if __name__ == "__main__":
    main()
