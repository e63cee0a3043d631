"""train-all without Ray (one category after the other, a failure reported and the others trained) and the Models
page's table of train-all jobs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from core.cli import main
from core.line import train_all
from core.store.model_store import ModelStore
from tests.conftest import dashboard_env


def test_train_all_one_by_one(demo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    shutil.copytree(demo_root / "demo_metal", data / "alpha")
    (data / "broken" / "train" / "good").mkdir(parents=True)
    (data / "broken" / "train" / "good" / "0.png").write_bytes(b"not an image")
    shutil.copytree(demo_root / "demo_metal", data / "zulu")
    store = tmp_path / "models"
    code = main(["train-all", "--data", str(data), "--store", str(store), "--image-size", "64", "64",
                 "--coreset-ratio", "0.1"])
    err = capsys.readouterr().err
    assert code == 1  # one category failed; the one after it was trained all the same
    assert "broken/patchcore: FAILED" in err and "zulu/patchcore: v1" in err
    assert ModelStore(store).version_numbers("zulu", "patchcore") == [1]
    states = {r.category: (r.state, r.where) for r in train_all.read_jobs(store)}
    assert states == {"alpha": ("done", "this process"), "broken": ("failed", "this process"),
                      "zulu": ("done", "this process")}
    assert main(["train-all", "--data", str(tmp_path / "nothing"), "--store", str(store)]) == 2
    assert "expected category folders" in capsys.readouterr().err


def test_models_page_shows_the_jobs(demo_root: Path, trained_store: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_app import page

    store = dashboard_env(demo_root, trained_store, tmp_path, monkeypatch)
    train_all.write_job(store, train_all.JobRecord("20260101T000000000000Z", "demo_metal", "patchcore",
                                                   train_all.RUNNING, "Ray head:6379", host="node-7", started=1.0))
    train_all.write_job(store, train_all.JobRecord("20260101T000000000000Z", "other", "patchcore",
                                                   train_all.FAILED, "Ray head:6379", host="node-8", started=1.0,
                                                   finished=3.0, error="DatasetError: no images"))
    at = page("models")
    assert "Jobs on the cluster" in [s.value for s in at.subheader]
    table = at.dataframe[-1].value
    assert list(table["state"]) == ["running", "failed"] and list(table["host"]) == ["node-7", "node-8"]
    assert table["error"].iloc[1] == "DatasetError: no images"
