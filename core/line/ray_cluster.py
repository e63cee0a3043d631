"""The Ray side of the line's jobs (imported only when a command is given ``--ray``; nothing else imports Ray).

- :func:`connect`: this process as a Ray driver: ``local`` starts a cluster in this process, ``auto`` joins the
  one started on this machine (``ray start --head``), anything else is the address of a cluster's head
  (``host:6379``, ``ray://host:10001``). Workers find this repository's ``core`` through ``PYTHONPATH`` (the
  repository must sit at the same path on every node, and so must the model store: a shared file system).
- :class:`RayRunner`: batch re-inspection (core/line/batch.py) on Ray actors, one loaded model per actor. An actor
  whose process dies is restarted by Ray and its chunk run again (``max_restarts``, ``max_task_retries``); the
  driver writes every verdict, each image keyed by its content, so a chunk judged twice is recorded once. Should an
  actor stay dead, its chunk goes to another one.
- :func:`run_train`: one Ray task per category for ``train-all`` (core/line/train_all.py), with a GPU where
  the kind wants one and the cluster has one.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayError

from core.line.batch import Item, Judge, Judged
from core.line.train_all import FAILED, JobRecord, TrainJob, TrainOutcome, train_one, write_job
from core.store.model_store import ModelRef

logger = logging.getLogger(__name__)

OBJECT_STORE_BYTES = 100_000_000  # a small object store: chunks of paths and verdicts are all that travel
RESTARTS = 3  # an actor's process may die this often (each time it reloads its model; its tasks are retried
# until it is dead for good: max_task_retries=-1)
IN_FLIGHT = 2  # chunks queued per actor, so an actor never waits for the driver

# GPUs a training task of a kind asks for, where the cluster has any (the others train on CPUs)
GPUS_PER_KIND: dict[str, float] = {"efficientad": 1.0}

__all__ = ["GPUS_PER_KIND", "OBJECT_STORE_BYTES", "BatchActor", "RayRunner", "cluster_gpus", "connect", "run_train"]


def repo_root() -> Path:
    """The folder that holds the ``core`` package (put on the workers' ``PYTHONPATH``)."""
    return Path(__file__).resolve().parents[2]


def connect(address: str) -> bool:
    """Make this process a Ray driver of the cluster at ``address`` (``local``: a new one in this process, with a
    small object store). Answers whether this call connected (False: it was connected already), so the caller
    that connected disconnects."""
    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": {"PYTHONPATH": str(repo_root())}}
    if address == "local":
        ray.init(address="local", object_store_memory=OBJECT_STORE_BYTES, include_dashboard=False,
                 runtime_env=runtime_env, logging_level=logging.WARNING, log_to_driver=False)
    else:
        ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING, log_to_driver=False)
    logger.info("Ray %s: %s", address, ray.cluster_resources())
    return True


def cluster_cpus() -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def cluster_gpus() -> int:
    return int(ray.cluster_resources().get("GPU", 0))


@ray.remote(num_cpus=1, max_restarts=RESTARTS, max_task_retries=-1)
class BatchActor:
    """One model version loaded once; judges chunks of :class:`~core.line.batch.Item`."""

    def __init__(self, ref: ModelRef, inference: str) -> None:
        self.judge = Judge(ref, inference)

    def judge_chunk(self, items: list[Item]) -> list[Judged]:
        return self.judge(items)

    def pid(self) -> int:
        return os.getpid()


class RayRunner:
    """Judges chunks on ``workers`` Ray actors (default: one per CPU of the cluster), up to :data:`IN_FLIGHT`
    chunks queued on each; chunks come back as they are done (any order)."""

    def __init__(self, ref: ModelRef, inference: str, address: str, workers: int | None = None) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"expected at least 1 Ray worker, found {workers}")
        self._connected = connect(address)
        cpus = cluster_cpus()
        self.workers = workers or cpus
        if self.workers > cpus:
            logger.warning("%d Ray workers asked for, the cluster has %d CPUs: the others wait for a CPU",
                           self.workers, cpus)
        self.actors: list[Any] = [BatchActor.remote(ref, inference) for _ in range(self.workers)]  # type: ignore[attr-defined]

    def pids(self) -> list[int]:
        """The process id of every actor (the tests kill one), waiting for one that is restarting."""
        out = []
        for actor in self.actors:
            for attempt in range(30):
                try:
                    out.append(int(ray.get(actor.pid.remote())))
                    break
                except ActorUnavailableError:
                    if attempt == 29:
                        raise
                    time.sleep(2.0)
        return out

    def map(self, chunks: Iterable[list[Item]]) -> Iterator[list[Judged]]:
        source = iter(chunks)
        live = list(self.actors)
        pending: dict[Any, tuple[Any, list[Item]]] = {}

        def submit(actor: Any, chunk: list[Item] | None = None) -> None:
            chunk = chunk if chunk is not None else next(source, None)
            if chunk is not None:
                pending[actor.judge_chunk.remote(chunk)] = (actor, chunk)

        for _ in range(IN_FLIGHT):
            for actor in live:
                submit(actor)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            actor, chunk = pending.pop(ready[0])
            try:
                judged = ray.get(ready[0])
            except ActorUnavailableError as exc:  # restarting: the same actor takes the chunk again
                logger.warning("a Ray actor is unavailable for now (%s); its chunk of %d is sent again", exc, len(chunk))
                submit(actor, chunk)
                continue
            except RayActorError as exc:
                if actor in live:
                    live.remove(actor)
                if not live:
                    raise RuntimeError(f"expected a live Ray actor to judge with, found every one dead: {exc}") from exc
                logger.warning("a Ray actor died for good (%s); its chunk of %d goes to another", exc, len(chunk))
                submit(live[len(pending) % len(live)], chunk)
                continue
            yield judged
            if actor in live:
                submit(actor)

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self._connected:
            ray.shutdown()


@ray.remote(num_cpus=1, max_retries=0)
def _train_task(job: TrainJob) -> TrainOutcome:
    return train_one(job)


def resources_for(kind: str) -> tuple[float, float]:
    """(CPUs, GPUs) one training task of ``kind`` asks for: a GPU only where the kind wants one and the cluster
    has one."""
    return 1.0, GPUS_PER_KIND.get(kind, 0.0) if cluster_gpus() > 0 else 0.0


def run_train(jobs: list[TrainJob], address: str,
              done: Callable[[TrainOutcome], None] | None = None) -> list[TrainOutcome]:
    """Every job as one Ray task at once (the cluster queues what does not fit); ``done`` is told of each as it
    ends. A task whose worker died is a failed outcome (recorded in its job record), the others go on."""
    connected = connect(address)
    try:
        pending: dict[Any, TrainJob] = {}
        for job in jobs:
            cpus, gpus = resources_for(job.kind)
            pending[_train_task.options(num_cpus=cpus, num_gpus=gpus).remote(job)] = job  # type: ignore[attr-defined]
        outcomes: list[TrainOutcome] = []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            try:
                outcome: TrainOutcome = ray.get(ready[0])
            except RayError as exc:
                error = f"the Ray task failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                write_job(job.store_root, JobRecord(job.run, job.category, job.kind, FAILED, job.where,
                                                    finished=time.time(), error=error))
                outcome = TrainOutcome(job.category, job.kind, False, None, 0.0, "", error)
            outcomes.append(outcome)
            if done is not None:
                done(outcome)
        return outcomes
    finally:
        if connected:
            ray.shutdown()
