"""Shared fixtures: small synthetic MVTec-style data generated per session, tiny trained models."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch

if TYPE_CHECKING:
    from core.models.patchcore import PatchCore
    from core.store.model_store import ModelStore

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The fast path's per-machine runtime choice is recorded in a file: the tests' own, never the user's ~/.cache
# (subprocesses the tests start inherit it).
os.environ["INSPECT_RUNTIME_CHOICE"] = str(Path(tempfile.mkdtemp(prefix="inspect-tests-")) / "runtime_choice.json")
torch.set_num_threads(2)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Small, fast settings used by every test that trains a model.
PATCHCORE_TEST_SETTINGS = {"height": 64, "width": 64, "coreset_ratio": 0.1, "batch_size": 8}
EFFICIENTAD_TEST_SETTINGS = {"height": 256, "width": 256, "steps": 3, "batch_size": 8,
                             "train_batch": 2, "precision": "fp32"}  # fp32: no timed bf16 trial, same choice each run


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MVTec-style category ``demo_metal`` with painted scratches and spots, 64x64 px."""
    from core.data.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("data")
    make_demo_dataset(root, n_train=16, n_test_good=6, n_per_defect=5, size=64, seed=3)
    return root


@pytest.fixture(scope="session")
def trained_store(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store with a PatchCore and an EfficientAD model for ``demo_metal``, both evaluated."""
    from core.data.dataset import load_category
    from core.store import lifecycle as det
    from core.store.model_store import ModelStore

    store = ModelStore(tmp_path_factory.mktemp("models"))
    data = load_category(demo_root, "demo_metal")
    for kind, settings in (("patchcore", PATCHCORE_TEST_SETTINGS), ("efficientad", EFFICIENTAD_TEST_SETTINGS)):
        det.train(data, kind, settings, store)
        det.run_evaluation(det.load(store.current("demo_metal", kind)), data)
    return store.root


@pytest.fixture
def store(trained_store: Path, tmp_path: Path) -> ModelStore:
    """A writable copy of :func:`trained_store` as a ``ModelStore`` (batch runs, Ray jobs and results written into
    it stay in this test). A module's own ``store`` fixture overrides this one."""
    import shutil

    from core.store.model_store import ModelStore

    copy = tmp_path / "models"
    shutil.copytree(trained_store, copy)
    return ModelStore(copy)


def dashboard_env(demo_root: Path, trained_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Copies of the trained store (returned) and of the data root, named by the dashboard's settings; the
    settings a test machine may carry (users file, database, line log, Qdrant server) cleared."""
    import shutil

    store = tmp_path / "models"
    shutil.copytree(trained_store, store)
    data = tmp_path / "data"
    shutil.copytree(demo_root, data)
    monkeypatch.setenv("INSPECT_DATA_ROOT", str(data))
    monkeypatch.setenv("INSPECT_MODEL_STORE", str(store))
    for name in ("INSPECT_USERS_FILE", "INSPECT_DATABASE_URL", "INSPECT_LINE_LOG", "QDRANT_URL"):
        monkeypatch.delenv(name, raising=False)
    return store


def rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def bundle_inspect(folder: Path, images: list[np.ndarray]) -> list[Any]:
    """Each image judged by the export bundle unpacked in ``folder`` (its own ``runner`` module, imported from
    there and forgotten again, so the next bundle's runner is imported afresh)."""
    import sys

    sys.path.insert(0, str(folder))
    try:
        import runner

        return [runner.Bundle(folder).inspect(image) for image in images]
    finally:
        sys.path.remove(str(folder))
        for name in ("runner", "portable"):
            sys.modules.pop(name, None)


def counting_embed(model: PatchCore) -> list[int]:
    """Make ``model.embed`` record the batch size of each call (the backbone's runs)."""
    calls: list[int] = []
    embed = model.embed

    def counting(batch: torch.Tensor) -> torch.Tensor:
        calls.append(int(batch.shape[0]))
        return embed(batch)

    model.embed = counting  # type: ignore[method-assign]
    return calls


def _postgres_bin(name: str) -> str | None:
    """``name`` (initdb, pg_ctl) on PATH, else from the newest Debian ``/usr/lib/postgresql/<major>/bin``."""
    import shutil

    found = shutil.which(name)
    if found:
        return found
    majors = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3])
                    if p.parts[-3].isdigit() else 0)
    return str(majors[-1]) if majors else None


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server for the session: ``initdb`` into a temp folder, ``pg_ctl start`` on a free
    port of 127.0.0.1 (its unix socket in the same folder), trust authentication, stopped and removed at the end.
    Yields its SQLAlchemy URL (database ``postgres``, user ``postgres``). As root the server runs as the
    ``postgres`` user (``runuser``), as PostgreSQL refuses root. Skips with the reason when none can be started
    (``run_tests.sh`` installs PostgreSQL when it is missing and it runs as root)."""
    import shutil
    import socket
    import subprocess
    import tempfile

    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL tests skipped: no initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin "
                    "(run_tests.sh installs the Debian package postgresql when run as root)")
    prefix: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="pg-test-"))  # not under pytest's 0700 tmp: the postgres user reads it
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            shutil.rmtree(folder, ignore_errors=True)
            pytest.skip("PostgreSQL tests skipped: running as root and no runuser to start the server as postgres")
        prefix = [runuser, "-u", "postgres", "--"]
        try:
            shutil.chown(folder, "postgres")
        except (LookupError, OSError) as exc:
            shutil.rmtree(folder, ignore_errors=True)
            pytest.skip(f"PostgreSQL tests skipped: running as root and no postgres user to run the server: {exc}")
    data, log = folder / "data", folder / "server.log"
    made = subprocess.run(prefix + [initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                                    "--no-sync"], capture_output=True, text=True, timeout=120)
    if made.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"PostgreSQL tests skipped: initdb failed: {(made.stderr or made.stdout).strip()[-500:]}")
    started = None
    for _ in range(3):  # a free port can be taken between choosing and binding it
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
        started = subprocess.run(prefix + [pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60",
                                           "start"], capture_output=True, text=True, timeout=120)
        if started.returncode == 0:
            break
    if started is None or started.returncode != 0:
        reason = log.read_text(errors="replace")[-500:] if log.is_file() else (started.stderr if started else "")
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"PostgreSQL tests skipped: pg_ctl start failed: {reason.strip()}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(prefix + [pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True,
                       timeout=120)
        shutil.rmtree(folder, ignore_errors=True)
