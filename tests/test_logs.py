"""Logging: one configuration (text or JSON lines) for the CLI and the service's processes; the watch thread's
failures are logged with their traceback."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core import logs, settings


@pytest.fixture(autouse=True)
def _root_logger() -> Iterator[None]:
    """Each test leaves the root logger (level, handlers) and core.logs' state as it found them."""
    root = logging.getLogger()
    level, handlers, current = root.level, list(root.handlers), list(logs._current)
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logs._current[:] = current


def _ours() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if isinstance(h, logs.StderrHandler)]


def test_json_lines_carry_time_level_logger_message_and_the_traceback() -> None:
    out = io.StringIO()
    logs.configure("info", json_lines=True, stream=out)
    log = logging.getLogger("core.test")
    log.debug("not shown at INFO")
    log.info("judged %d image(s)\nsecond line", 3)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("the watch folder failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines  # one object per line: the message's newline is escaped
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "INFO" and first["logger"] == "core.test"
    assert first["message"] == "judged 3 image(s)\nsecond line" and "exc_info" not in first
    assert time.time() - time.mktime(time.strptime(first["time"][:19], "%Y-%m-%dT%H:%M:%S")) < 86_400
    assert first["time"].endswith("+00:00")
    assert second["level"] == "ERROR" and second["message"] == "the watch folder failed"
    assert second["exc_info"].startswith("Traceback") and "RuntimeError: boom" in second["exc_info"]


def test_text_lines_and_one_handler_however_often_configured() -> None:
    out = io.StringIO()
    logs.configure("WARNING", json_lines=False, stream=io.StringIO())
    assert logs.configure("ERROR", json_lines=False, stream=out) == logs.LogConfig("ERROR", False) == logs.current()
    assert len(_ours()) == 1 and logging.getLogger().level == logging.ERROR
    logging.getLogger("core.x").warning("hidden")
    logging.getLogger("core.x").error("shown")
    assert out.getvalue().rstrip().endswith("ERROR core.x: shown") and "hidden" not in out.getvalue()
    with pytest.raises(ValueError, match=r"expected a log level in \(DEBUG, INFO, WARNING, ERROR, CRITICAL\), "
                                         r"found 'LOUD'"):
        logs.configure("loud", json_lines=False)


def test_the_handler_writes_to_stderr_as_it_is_at_each_record(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("WARNING", json_lines=True)
    logging.getLogger("core.y").warning("to stderr")
    assert json.loads(capsys.readouterr().err.splitlines()[-1])["message"] == "to stderr"


@pytest.mark.parametrize(("argv", "env", "level", "json_lines"), [
    (["--log-level", "DEBUG"], {}, logging.DEBUG, False),
    (["--log-level", "info", "--log-json"], {}, logging.INFO, True),
    ([], {settings.LOG_LEVEL_ENV: "error", settings.LOG_JSON_ENV: "1"}, logging.ERROR, True),
    (["--log-level", "INFO"], {settings.LOG_LEVEL_ENV: "ERROR"}, logging.INFO, False),  # the flag wins
    ([], {}, logging.WARNING, False),
])
def test_cli_flags_and_environment_set_the_level(argv: list[str], env: dict[str, str], level: int, json_lines: bool,
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from core import cli

    for name in (settings.LOG_LEVEL_ENV, settings.LOG_JSON_ENV):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main([*argv, "list", "--store", str(tmp_path)]) == 0
    assert logging.getLogger().level == level and len(_ours()) == 1
    assert isinstance(_ours()[0].formatter, logs.JsonLines) == json_lines


def test_a_bad_log_level_in_the_environment_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from core import cli

    monkeypatch.setenv(settings.LOG_LEVEL_ENV, "chatty")
    assert cli.main(["list", "--store", str(tmp_path)]) == 2
    assert "INSPECT_LOG_LEVEL: expected one of DEBUG" in capsys.readouterr().err


def test_service_worker_processes_log_as_the_serving_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from core.line import service

    for name in (settings.LOG_LEVEL_ENV, settings.LOG_JSON_ENV, settings.SERVICE_STORE_ENV,
                 settings.SERVICE_WORKERS_ENV, settings.SERVICE_QUEUE_ENV, settings.MAX_PIXELS_ENV):
        monkeypatch.setenv(name, "1")  # restored after the test: serve() writes them for its workers
    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.append({"app": app, **options}))
    logs.configure("INFO", json_lines=True)
    service.serve(service.ServiceConfig(tmp_path), "127.0.0.1", 8600, processes=2)
    assert calls[0]["app"] == "core.line.service:app_from_env" and calls[0]["log_config"] is None
    logs.configure("WARNING", json_lines=False)  # what a fresh worker process has before the app is made
    service.app_from_env()
    assert logs.current() == logs.LogConfig("INFO", True) and logging.getLogger().level == logging.INFO


def test_a_watch_folder_that_dies_is_logged_with_its_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    from fastapi.testclient import TestClient

    from core.line import service, watch

    def crash(self: watch.Watcher, *args: object, **kwargs: object) -> int:
        raise RuntimeError("the camera share went away")

    monkeypatch.setattr(watch.Watcher, "run", crash)
    (tmp_path / "in").mkdir()
    spec = service.WatchSpec("demo_metal", "patchcore", tmp_path / "in", tmp_path / "ok", tmp_path / "defect")
    app = service.create_app(service.ServiceConfig(tmp_path / "models", line_log=tmp_path / "line.jsonl",
                                                   watches=(spec,)))
    with caplog.at_level(logging.ERROR, logger="core.line.service"), TestClient(app):
        deadline = time.time() + 30
        while time.time() < deadline and len([r for r in caplog.records if r.exc_info]) < 2:
            time.sleep(0.05)
    failed = [r for r in caplog.records if r.name == "core.line.service" and r.levelno == logging.ERROR]
    assert len(failed) >= 2, "expected the failure logged at each restart (back-off 0.5 s, then 1 s)"
    record = failed[0]
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError
    assert "the camera share went away" in caplog.text and "Traceback" in caplog.text
    assert str(tmp_path / "in") in record.getMessage() and "starting it again in 0.5 s" in record.getMessage()


def test_the_watcher_logs_its_start_and_cycles(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from core.line.watch import WatchConfig, Watcher

    (tmp_path / "in").mkdir()
    config = WatchConfig(tmp_path / "in", tmp_path / "ok", tmp_path / "defect", tmp_path / "rejected",
                         tmp_path / "results.csv", poll=0.01)
    with caplog.at_level(logging.DEBUG, logger="core.line.watch"):
        assert Watcher(config, lambda: None).run(once=True) == 0
    messages = [r.getMessage() for r in caplog.records if r.name == "core.line.watch"]
    assert any(m.startswith(f"watch folder {tmp_path / 'in'}: started") for m in messages), messages
    assert any("poll: 0 judged" in m for m in messages), messages


def test_a_dashboard_job_that_fails_is_logged_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    from ui.jobs import start_job

    def work(control: object) -> None:
        raise OSError("disk full")

    with caplog.at_level(logging.INFO, logger="ui.jobs"):
        job = start_job("Train demo_metal", work)
        assert job.thread is not None
        job.thread.join(10)
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "ui.jobs"]
    assert messages[0] == (logging.INFO, "job Train demo_metal: started")
    failed = [r for r in caplog.records if r.name == "ui.jobs" and r.levelno == logging.ERROR]
    assert failed and failed[0].exc_info is not None and failed[0].exc_info[0] is OSError
    assert job.error == "OSError: disk full"


def test_the_global_flags_leave_the_commands_log_options_alone(tmp_path: Path) -> None:
    from core.cli import build_parser

    args = build_parser().parse_args(["--log-level", "info", "feedback", "--category", "c", "--log"])
    assert args.log is True and args.log_level == "INFO" and args.log_json is None
    args = build_parser().parse_args(["watch", "--category", "c", "--in", "i", "--ok", "o", "--defect", "d",
                                      "--log", str(tmp_path / "r.csv")])
    assert args.log == tmp_path / "r.csv" and args.log_level is None


def test_the_dashboard_process_logs_as_configured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The dashboard's jobs log at INFO (training started, finished): its process reads the same settings."""
    from streamlit.testing.v1 import AppTest

    from ui import frame

    monkeypatch.setenv("INSPECT_LOG_LEVEL", "INFO")
    monkeypatch.setenv("INSPECT_MODEL_STORE", str(tmp_path / "models"))
    monkeypatch.setenv("INSPECT_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setattr(frame, "_LOGGING", [])
    logging.getLogger().setLevel(logging.WARNING)
    AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120).run()
    assert logging.getLogger().level == logging.INFO and len(_ours()) == 1
