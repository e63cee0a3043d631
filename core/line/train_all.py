"""Train every category of a data root: ``python -m core train-all --data ROOT [--model K] [--ray ADDRESS]``.

One job per category (every MVTec-style folder under ``ROOT``, :func:`core.data.dataset.list_categories`), each a
new version in the model store through :func:`core.store.lifecycle.train`. A job that fails is reported with its
reason and the others go on. Without Ray the jobs run one after the other in this process; with ``--ray`` each is
one Ray task (core/line/ray_cluster.py), which may run on any node (the data root and the model store must be at
the same path on every node: a shared file system).

Every job keeps a record in the store, ``<store>/.jobs/<run>/<category>.<kind>.json`` (:class:`JobRecord`, written
atomically): queued by the driver, running (with the host) and done or failed by the process that trains. The
Models page lists the newest runs' records (:func:`read_jobs`), so jobs running on the cluster are seen there.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.data.dataset import is_mvtec_category, list_categories, load_category
from core.files import atomic_write_json
from core.store import lifecycle
from core.store.model_store import ModelStore

logger = logging.getLogger(__name__)

JOBS = ".jobs"  # <store>/.jobs/<run>/<category>.<kind>.json
QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"

__all__ = ["DONE", "FAILED", "QUEUED", "RUNNING", "JobRecord", "TrainJob", "TrainOutcome", "jobs_for", "read_jobs",
           "run_local", "train_one"]


@dataclass(frozen=True)
class TrainJob:
    """What one category's training needs, all plain values (it travels to a Ray worker)."""

    run: str
    data_root: str
    category: str
    kind: str
    settings: dict[str, Any]
    store_root: str
    where: str  # "this process" or the Ray address


@dataclass(frozen=True)
class TrainOutcome:
    """How a job ended: ``version`` saved (None when it failed, with ``error``), on ``host``, in ``seconds``."""

    category: str
    kind: str
    ok: bool
    version: int | None
    seconds: float
    host: str
    error: str | None


@dataclass(frozen=True)
class JobRecord:
    """A job as the store keeps it: its ``state`` (queued, running, done, failed), where and when."""

    run: str
    category: str
    kind: str
    state: str
    where: str
    host: str | None = None
    submitted: float | None = None
    started: float | None = None
    finished: float | None = None
    version: int | None = None
    error: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def job_file(store_root: str | Path, run: str, category: str, kind: str) -> Path:
    return Path(store_root) / JOBS / run / f"{category}.{kind}.json"


def write_job(store_root: str | Path, record: JobRecord) -> None:
    atomic_write_json(job_file(store_root, record.run, record.category, record.kind), dataclasses.asdict(record))


def new_run() -> str:
    """A run's name: its UTC start time (sorts by time)."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")


def jobs_for(data_root: Path, kind: str, settings: dict[str, Any], store_root: Path, where: str) -> list[TrainJob]:
    """One job per category under ``data_root``, each recorded as queued.

    Raises:
        FileNotFoundError: no MVTec-style category (``<name>/train/good``) under ``data_root``.
    """
    root = Path(data_root)
    categories = [c for c in list_categories(root) if is_mvtec_category(root / c)] if root.is_dir() else []
    if not categories:
        raise FileNotFoundError(f"expected category folders (<name>/train/good) under {data_root}, found none")
    run = new_run()
    jobs = [TrainJob(run, str(data_root), c, kind, dict(settings), str(store_root), where) for c in categories]
    now = time.time()
    for job in jobs:
        write_job(store_root, JobRecord(run, job.category, kind, QUEUED, where, submitted=now))
    return jobs


def train_one(job: TrainJob) -> TrainOutcome:
    """Train ``job``'s category into its store, recording running and then done or failed; any failure is the
    outcome's ``error`` (it never raises but for a cancel: KeyboardInterrupt, SystemExit)."""
    host = socket.gethostname()
    started = time.time()
    base = JobRecord(job.run, job.category, job.kind, RUNNING, job.where, host=host, started=started)
    write_job(job.store_root, base)
    try:
        data = load_category(job.data_root, job.category)
        result = lifecycle.train(data, job.kind, job.settings, ModelStore(job.store_root), reason="train-all")
    except Exception as exc:  # reported per category; the other jobs go on
        error = f"{type(exc).__name__}: {exc}"
        logger.warning("train-all %s/%s failed: %s", job.category, job.kind, error)
        write_job(job.store_root, dataclasses.replace(base, state=FAILED, finished=time.time(), error=error))
        return TrainOutcome(job.category, job.kind, False, None, time.time() - started, host, error)
    write_job(job.store_root, dataclasses.replace(base, state=DONE, finished=time.time(), version=result.ref.version))
    return TrainOutcome(job.category, job.kind, True, result.ref.version, time.time() - started, host, None)


def run_local(jobs: Sequence[TrainJob], done: Callable[[TrainOutcome], None] | None = None) -> list[TrainOutcome]:
    """The jobs one after the other in this process; ``done`` is told of each as it ends."""
    outcomes = []
    for job in jobs:
        outcome = train_one(job)
        outcomes.append(outcome)
        if done is not None:
            done(outcome)
    return outcomes


def read_jobs(store_root: str | Path, runs: int = 3) -> list[JobRecord]:
    """The job records of the newest ``runs`` runs in the store, newest run first (a damaged record is skipped)."""
    folder = Path(store_root) / JOBS
    if not folder.is_dir():
        return []
    out: list[JobRecord] = []
    for run in sorted((p for p in folder.iterdir() if p.is_dir()), reverse=True)[:runs]:
        for path in sorted(run.glob("*.json")):
            try:
                out.append(JobRecord.from_dict(json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError, TypeError) as exc:
                logger.warning("job record %s unreadable: %s", path, exc)
    return out
