"""Kill/restart cycles of the watch folder: exactly once under SIGKILL at random moments.

    python benchmarks/bench_watch_cycles.py [--cycles 100] [--max-minutes 15] [--store DIR] [--seed 0]

A tiny PatchCore (64x64 px, trained on a small generated demo category) judges images a simulated camera keeps
writing into the input folder while ``python -m core watch`` is started, SIGKILLed at a random moment
(uniform in ``[0, --window]`` seconds after it announced itself, i.e. during recovery, polling, judging or
any of the steps of an image), and started again, ``--cycles`` times (bounded by ``--max-minutes``). The
camera reuses file names (``cam.png``, ``cam2.png``; a name is written again once the watcher took the
previous file), gives every image new content, and writes half of its files in two parts with a pause (a file
that is not a complete image yet). A last run without a kill drains the folder; then, per image written:
how many stored copies (0 = lost), complete "scored" journal entries not "dropped" (> 1 = judged twice; a
judgement journalled but not placed before a kill is dropped and redone by design, counted apart), CSV rows and
line-log rows. Written to the ``watch_cycles`` section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import collections
import csv
import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, write_section

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
NAMES = ("cam.png", "cam2.png")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def train_tiny(tmp: Path) -> tuple[Path, Path]:
    """A small demo category and a 64x64 PatchCore on it (tens of seconds on 2 cores)."""
    from core.data.dataset import load_category
    from core.data.demo import make_demo_dataset
    from core.store import lifecycle as det
    from core.store.model_store import ModelStore

    data = tmp / "data"
    make_demo_dataset(data, n_train=16, n_test_good=6, n_per_defect=5, size=64, seed=3)
    store = ModelStore(tmp / "models")
    det.train(load_category(data, "demo_metal"), "patchcore",
              {"height": 64, "width": 64, "coreset_ratio": 0.1, "batch_size": 8}, store)
    return data, store.root


class Camera:
    """Writes images with fresh content under reused names into ``folder`` until stopped."""

    def __init__(self, folder: Path, sources: list[np.ndarray], rng: random.Random) -> None:
        self.folder, self.sources, self.rng = folder, sources, rng
        self.written: dict[str, str] = {}  # sha1 -> name it was written under
        self.count = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def image(self) -> bytes:
        self.count += 1
        array = self.sources[self.count % len(self.sources)].copy()
        array[0, :4, 0] = np.frombuffer(self.count.to_bytes(4, "big"), np.uint8)  # new content every time
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        return buffer.getvalue()

    def _loop(self) -> None:
        while not self.stop.wait(self.rng.uniform(0.2, 0.8)):
            free = [n for n in (*NAMES, f"part_{self.count:05d}.png") if not (self.folder / n).exists()]
            if not free:
                continue
            name, data = self.rng.choice(free), self.image()
            digest = hashlib.sha1(data).hexdigest()
            self.written[digest] = name
            with open(self.folder.parent / "camera.jsonl", "a") as log:  # kept on disk: --verify reads it
                log.write(json.dumps({"sha1": digest, "name": name}) + "\n")
            with open(self.folder / name, "wb") as handle:
                if self.rng.random() < 0.5:  # a camera that pauses mid-file
                    handle.write(data[: len(data) // 2])
                    handle.flush()
                    time.sleep(self.rng.uniform(0.1, 0.6))
                handle.write(data[len(data) // 2:] if handle.tell() else data)


def watcher(store: Path, root: Path, once: bool) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "core", "watch", "--store", str(store), "--category", "demo_metal",
            "--in", str(root / "in"), "--ok", str(root / "ok"), "--defect", str(root / "defect"),
            "--settle", "0.2", "--max-wait", "10"] + (["--once"] if once else [])
    return subprocess.Popen(argv, cwd=ROOT, env={**ENV, "INSPECT_LINE_LOG": str(root / "line.jsonl")},
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)


def journal_entries(journal: Path) -> list[dict]:
    """The complete lines of the watch journal (a line cut by a kill is skipped, as the watcher does)."""
    if not journal.is_file():
        return []
    entries = []
    for line in journal.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def unfinished(journal: Path) -> int:
    """Journal entries "claimed" or "scored" without "done" or "dropped" (an image caught between its steps)."""
    opened: set[Any] = set()
    closed: set[Any] = set()
    for entry in journal_entries(journal):
        if entry.get("state") in ("claimed", "scored"):
            opened.add(entry.get("id"))
        else:
            closed.update((entry.get("id"), entry.get("claim_id")))
    return len(opened - closed)


def sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--max-minutes", type=float, default=15.0)
    parser.add_argument("--window", type=float, default=2.0, help="kill within this many seconds of the start")
    parser.add_argument("--store", type=Path, help="a store with a demo_metal PatchCore (default: train one)")
    parser.add_argument("--data", type=Path, help="the demo data of --store")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print the figures, leave RESULTS.md alone")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="bench_watch_"))
    started = time.time()
    load_before = os.getloadavg()
    if args.store is None:
        data, store = train_tiny(tmp)
    else:
        data, store = args.data, args.store
    sources = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((data / "demo_metal" / "test").rglob("*.png"))]
    root = tmp / "line"
    (root / "in").mkdir(parents=True)
    camera = Camera(root / "in", sources, rng)
    camera.thread.start()
    deadline = started + args.max_minutes * 60
    cycles = caught = 0
    startup: list[float] = []
    while cycles < args.cycles and time.time() < deadline:
        t0 = time.time()
        proc = watcher(store, root, once=False)
        assert proc.stderr is not None
        line = proc.stderr.readline()  # "watching ..." once the model is loaded
        if not line.startswith("watching"):
            print(f"cycle {cycles}: the watcher did not start: {line}{proc.stderr.read()[-2000:]}", file=sys.stderr)
            proc.kill()
            return 2
        startup.append(time.time() - t0)
        time.sleep(rng.uniform(0.0, args.window))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        cycles += 1
        caught += unfinished(root / "in" / ".watch_journal.jsonl") > 0
        if cycles % 10 == 0:
            print(f"{cycles} cycles, {len(camera.written)} images written, {caught} kills caught an image "
                  "between its steps", file=sys.stderr, flush=True)
    camera.stop.set()
    camera.thread.join()
    time.sleep(0.5)
    final = watcher(store, root, once=True)
    _, err = final.communicate(timeout=1800)
    if final.returncode != 0:
        print(f"the final run failed (exit {final.returncode}): {err[-3000:]}", file=sys.stderr)
    elapsed = time.time() - started

    written = camera.written
    stored = collections.Counter(sha1(p) for d in ("ok", "defect", "rejected") if (root / d).is_dir()
                                 for p in (root / d).iterdir() if p.suffix == ".png" and not p.name.startswith("."))
    rows = collections.Counter(r["sha1"] for r in csv.DictReader((root / "results.csv").open()))
    line_rows = collections.Counter(json.loads(x).get("sha1") for x in (root / "line.jsonl").read_text().splitlines()
                                    if x.startswith("{") and x.endswith("}"))
    judged: collections.Counter[str] = collections.Counter()  # judgements that filed the image (not dropped)
    entries = journal_entries(root / "in" / ".watch_journal.jsonl")
    dropped = {e.get("id") for e in entries if e.get("state") == "dropped"}
    for entry in entries:
        if entry.get("state") == "scored" and entry.get("id") not in dropped:
            judged[entry["sha1"]] += 1
    rejudged = sum(1 for e in entries if e.get("state") == "scored" and e.get("id") in dropped)
    left = [p.name for p in (root / "in").iterdir() if not p.name.startswith(".")]
    left += [f".claimed/{p.name}" for p in (root / "in" / ".claimed").iterdir()] if (root / "in" / ".claimed").is_dir() \
        else []
    verdicts = collections.Counter(r["verdict"] for r in csv.DictReader((root / "results.csv").open()))
    figures: dict[str, Any] = {
        "cycles": cycles, "images": len(written), "lost": sum(stored[h] == 0 for h in written),
        "stored_twice": sum(stored[h] > 1 for h in written), "judged_twice": sum(judged[h] > 1 for h in written),
        "csv_rows_per_image": sorted(collections.Counter(rows[h] for h in written).items()),
        "line_rows_per_image": sorted(collections.Counter(line_rows[h] for h in written).items()),
        "left_in_folder": len(left), "kills_mid_steps": caught, "judgements_dropped_and_redone": rejudged, "verdicts": dict(verdicts),
        "startup_s_median": float(np.median(startup)) if startup else None, "minutes": elapsed / 60,
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                 text=True).stdout.strip(),
        "cpu": cpu_name(), "cores": os.cpu_count(), "load_before": load_before, "load_after": os.getloadavg(),
        "final_rc": final.returncode}
    print(json.dumps(figures))
    if args.no_write:
        return 0
    ok = figures["lost"] == 0 and figures["judged_twice"] == 0 and figures["stored_twice"] == 0 and \
        figures["csv_rows_per_image"] == [(1, len(written))] and figures["line_rows_per_image"] == [(1, len(written))]
    body = f"""## Watch folder: {cycles} kill/restart cycles (SIGKILL at random moments)

Machine: {figures['cpu']}, {figures['cores']} cores, no GPU; shared with other engineers' jobs while it ran
(load average {load_before[0]:.1f} before, {figures['load_after'][0]:.1f} after), so times are not a speed figure.

| cycles | images written | lost | judged twice | stored twice | CSV rows per image | line-log rows per image | left in the folder | kills that caught an image between its steps |
|---|---|---|---|---|---|---|---|---|
| {cycles} | {len(written)} | {figures['lost']} | {figures['judged_twice']} | {figures['stored_twice']} | {', '.join(f'{k}: {v}' for k, v in figures['csv_rows_per_image'])} | {', '.join(f'{k}: {v}' for k, v in figures['line_rows_per_image'])} | {len(left)} | {caught} |

Verdicts: {', '.join(f'{k} {v}' for k, v in sorted(verdicts.items()))}. Each cycle starts `python -m core watch`
(median {figures['startup_s_median']:.1f} s until the model is loaded), kills it with SIGKILL
{args.window:g} s or less after it announced itself, and starts it again; a simulated camera keeps writing
images under reused names (`cam.png`, `cam2.png`, and new names), half of them in two parts with a pause, also
while the watcher is down. A last run without a kill drains the folder. Tiny PatchCore (64x64 px) trained on a
generated demo category. {rejudged} judgements journalled but not placed before a kill were dropped and
redone (by design: such an entry is not trusted). Code: commit {figures['commit']}. Whole run {elapsed / 60:.1f} min. {'All invariants held.' if ok else 'INVARIANTS BROKEN: see the table.'}

Command: `python benchmarks/bench_watch_cycles.py --cycles {args.cycles} --seed {args.seed}`."""
    write_section("watch_cycles", body)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
