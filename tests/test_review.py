"""The review queue: line results reach the database (service and watch folder), the service keeps REVIEW and
DEFECT uploads, the queue's actions (OK teaches PatchCore, DEFECT files the image, every decision audited, what is
written when something is wrong), and the Review page in AppTest."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from streamlit import config as st_config
from streamlit.testing.v1 import AppTest

from core import access
from core.data.imageio import load_image
from core.line import line_history
from core.line import results_log as line_log
from core.line.service import ServiceConfig, create_app
from core.line.watch import WatchConfig, Watcher
from core.store import lifecycle as det
from core.store.history import History, ImportReport, ResultRow
from core.store.model_cache import ModelCache
from core.store.model_store import ModelStore
from core.verdict import feedback, review
from core.verdict.inspection import inspect
from tests.conftest import dashboard_env

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120
OPERATOR_PW = "operator-password-1"


@pytest.fixture(autouse=True)
def _fresh_histories() -> Iterator[None]:
    yield
    line_history.close_all()


@pytest.fixture()
def env(demo_root: Path, trained_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the trained store (returned) and of the data root, named by the dashboard's settings."""
    return dashboard_env(demo_root, trained_store, tmp_path, monkeypatch)


def _line_rows(history: History, **filters) -> list[ResultRow]:
    return history.results(limit=None, **filters)


@contextlib.contextmanager
def _without_imports() -> Iterator[None]:
    """No JSONL import anywhere (History.open, the drift watch's refresh): rows reach the database only when they
    are recorded directly."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(History, "import_logs", lambda self, store_root, line_log=None: ImportReport(0, 0, 0))
        yield
    line_history.close_all()


def _database(store: Path) -> History:
    return History(f"sqlite:///{store / '.line' / 'history.sqlite3'}")  # opened without importing anything


# -- 1 and 2: the service and the watch folder write to the database; the service keeps REVIEW/DEFECT uploads --


def _service(store: Path, log: Path) -> Iterator[TestClient]:
    app = create_app(ServiceConfig(store, line_log=log))
    with TestClient(app) as client:
        for _ in range(600):
            if client.get("/ready").status_code == 200:
                break
            time.sleep(0.1)
        yield client


def test_service_rows_reach_the_database_once_and_defect_uploads_are_kept(env: Path, tmp_path: Path) -> None:
    log = tmp_path / "line.jsonl"
    test = tmp_path / "data" / "demo_metal" / "test"
    scratch, good = (test / "scratch" / "000.png").read_bytes(), (test / "good" / "000.png").read_bytes()
    with _without_imports():
        for client in _service(env, log):
            r = client.post("/v1/inspect/demo_metal", files=[("files", ("s.png", scratch, "image/png")),
                                                             ("files", ("g.png", good, "image/png"))])
            assert r.status_code == 200, r.text
            assert "path" not in r.json()["results"][0]  # the answer never names a server path
            assert client.post("/v1/inspect/demo_metal", content=b"not an image").status_code == 415
        with _database(env) as direct:  # recorded directly: nothing imported the JSONL log
            assert len(_line_rows(direct)) == 3
    assert len(line_log.tail(log)) == 3  # the JSONL log as before
    with History.open(env, line_log=log) as history:  # importing the log again makes no second row
        rows = {r.name: r for r in _line_rows(history)}
        assert sorted(rows) == ["g.png", "s.png", "sha1-" + hashlib.sha1(b"not an image").hexdigest()[:12]]
        assert len(_line_rows(history)) == 3
        defect = rows["s.png"]
        assert defect.verdict == "DEFECT" and defect.source == "service"
        digest = hashlib.sha1(scratch).hexdigest()
        assert defect.path == str(env / ".line" / "images" / digest[:2] / f"{digest}.png")
        assert Path(defect.path).read_bytes() == scratch
        if rows["g.png"].verdict == "OK":
            assert rows["g.png"].path is None  # OK uploads are not kept


def test_a_kept_upload_without_a_suffix_gets_one_from_its_bytes(env: Path, tmp_path: Path) -> None:
    scratch = (tmp_path / "data" / "demo_metal" / "test" / "scratch" / "000.png").read_bytes()
    assert line_history.suffix_of(None, scratch) == ".png"
    assert line_history.suffix_of("frame.JPG", scratch) == ".jpg"
    assert line_history.suffix_of("x", b"\xff\xd8\xff\xe0...") == ".jpg"
    assert line_history.suffix_of("x.gif", b"GIF89a") == ".img"
    kept = line_history.keep_image(env, scratch, None)
    assert kept is not None and kept.name == f"{hashlib.sha1(scratch).hexdigest()}.png"
    assert line_history.keep_image(env, scratch, "again.png") == kept  # content-addressed: one file


def test_a_database_failure_loses_no_row_and_the_next_open_imports_it(env: Path, tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    log = tmp_path / "line.jsonl"
    scratch = (tmp_path / "data" / "demo_metal" / "test" / "scratch" / "000.png").read_bytes()

    def down(self: History, record: object) -> None:
        raise sa.exc.OperationalError("INSERT", {}, Exception("database is locked"))

    with _without_imports(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(History, "record_line_record", down)
        for client in _service(env, log):
            assert client.post("/v1/inspect/demo_metal", content=scratch).status_code == 200
        assert "a row was not written, it stays in the JSONL log" in caplog.text
        with _database(env) as direct:
            assert _line_rows(direct) == []
    assert len(line_log.tail(log)) == 1
    with History.open(env, line_log=log) as history:
        assert [r.verdict for r in _line_rows(history)] == ["DEFECT"]


def test_watch_folder_rows_reach_the_database_once_with_their_stored_path(env: Path, tmp_path: Path) -> None:
    log = tmp_path / "line.jsonl"
    incoming = tmp_path / "in"
    incoming.mkdir()
    test = tmp_path / "data" / "demo_metal" / "test"
    shutil.copy(test / "scratch" / "000.png", incoming / "s.png")
    shutil.copy(test / "good" / "000.png", incoming / "g.png")
    config = WatchConfig(incoming, tmp_path / "ok", tmp_path / "defect", tmp_path / "rejected", tmp_path / "log.csv",
                         settle=0.0, poll=0.05, max_wait=0.0, line_log=log)
    cache = ModelCache(ModelStore(env))
    with _without_imports():
        assert Watcher(config, lambda: cache.current("demo_metal", "patchcore")).run(once=True) == 2
        with _database(env) as direct:  # recorded directly: nothing imported the JSONL log
            assert len(_line_rows(direct)) == 2
    with History.open(env, line_log=log) as history:
        rows = {r.name: r for r in _line_rows(history)}
        assert sorted(rows) == ["g.png", "s.png"] and len(_line_rows(history)) == 2
        assert rows["s.png"].verdict == "DEFECT" and rows["s.png"].source == "watch"
        assert Path(str(rows["s.png"].path)).parent == config.defect_dir and Path(str(rows["s.png"].path)).is_file()
        assert {r.ref for r in rows.values()} == {r["id"] for r in line_log.tail(log)}  # keyed by journal id


# -- 3: the queue and its decisions ----------------------------------------------------------------------------


def _record(history: History, path: Path | None, verdict: str, when: float, *, kind: str = "patchcore",
            version: int = 1, source: str = "watch", score: float = 1.0, category: str = "demo_metal",
            name: str | None = None) -> ResultRow:
    recorded = history.record_line_record({
        "time": when, "source": source, "id": uuid.uuid4().hex, "name": name or (path.name if path else "x.png"),
        "category": category, "model": kind, "version": version, "verdict": verdict, "score": score,
        "threshold": 1.0, "path": None if path is None else str(path)})
    assert recorded is not None
    row = history.result(recorded.id)
    assert row is not None
    return row


@pytest.fixture()
def queue(env: Path, tmp_path: Path) -> Iterator[tuple[History, ModelStore, Path, Path]]:
    """(history, store, data root, a folder of line images: copies of the test images)."""
    kept = tmp_path / "line_images"
    kept.mkdir()
    for defect in ("good", "scratch"):
        for source in sorted((tmp_path / "data" / "demo_metal" / "test" / defect).glob("*.png"))[:3]:
            shutil.copy(source, kept / f"{defect}_{source.name}")
    with History.open(env) as history:
        yield history, ModelStore(env), tmp_path / "data", kept


def _score(store: ModelStore, kind: str, path: Path) -> float:
    found = inspect(det.load(store.current("demo_metal", kind)), [load_image(path)])[0]
    assert found.score is not None
    return float(found.score)


def test_pending_lists_unreviewed_review_and_defect_rows_newest_first(queue) -> None:
    history, _store, _data, kept = queue
    now = time.time()
    old = _record(history, kept / "good_000.png", "REVIEW", now - 300)
    new = _record(history, kept / "scratch_000.png", "DEFECT", now - 10, source="service")
    mid = _record(history, kept / "good_001.png", "REVIEW", now - 100, kind="efficientad")
    _record(history, kept / "good_002.png", "OK", now - 5)
    _record(history, None, "REJECTED", now - 4)
    _record(history, kept / "good_000.png", "DEFECT", now - 3, category="other")
    assert [r.id for r in review.pending(history, "demo_metal")] == [new.id, mid.id, old.id]
    assert [r.id for r in review.pending(history, "demo_metal", kind="patchcore")] == [new.id, old.id]
    assert [r.id for r in review.pending(history, "demo_metal", verdicts=("REVIEW",))] == [mid.id, old.id]
    assert [r.id for r in review.pending(history, "demo_metal", source="service")] == [new.id]
    assert [r.id for r in review.pending(history, "demo_metal", since=now - 150)] == [new.id, mid.id]
    assert [r.id for r in review.pending(history, "demo_metal", skip={new.id}, limit=1)] == [mid.id]
    history.record_review(new.id, "DEFECT", "ana", defect="scratch")
    assert [r.id for r in review.pending(history, "demo_metal")] == [mid.id, old.id]  # reviewed: gone


def test_ok_teaches_patchcore_a_new_version_and_counts_as_a_confirmed_good(queue) -> None:
    history, store, data, kept = queue
    image = kept / "good_000.png"
    before = store.current("demo_metal", "patchcore")
    bank = det.load(before).detector.memory_bank.shape[0]
    row = _record(history, image, "REVIEW", time.time(), score=_score(store, "patchcore", image))
    outcome = review.decide(history, store, data, row, "OK", "ana")
    assert outcome.recorded and outcome.needs_confirmation is None and outcome.feedback is not None
    after = store.current("demo_metal", "patchcore")
    assert after.version == before.version + 1
    assert det.load(after).detector.memory_bank.shape[0] > bank
    audit = history.reviews(result_id=row.id)
    assert len(audit) == 1 and audit[0] == outcome.review
    assert (audit[0].reviewer, audit[0].decision, audit[0].version, audit[0].model_verdict,
            audit[0].model_score) == ("ana", "OK", 1, "REVIEW", row.score)
    assert f"v{before.version} -> demo_metal/patchcore v{after.version}" in str(audit[0].note)
    good = review.confirmed_good(history, "demo_metal", "patchcore", limit=10)
    assert [(g.result.id, g.path) for g in good] == [(row.id, image)]
    assert review.pending(history, "demo_metal") == []
    with pytest.raises(review.ReviewError, match="found ana's OK"):  # a second answer (another tab) is refused
        review.decide(history, store, data, row, "OK", "bo")


def test_a_spot_check_confirmed_ok_is_not_taught_and_stays_an_unbiased_good(queue,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A spot check is a sample of OK verdicts for recalibration: teaching it to PatchCore would put it in the
    bank, so the model re-scoring it for *Recalibrate from the line* would see ~0 and fit too low a threshold."""
    monkeypatch.setenv("INSPECT_SPOT_CHECK", "1")  # every OK verdict is a spot check
    history, store, data, kept = queue
    image = kept / "good_000.png"
    before = store.current("demo_metal", "patchcore")
    recorded = history.record_line_record({
        "time": time.time(), "source": "watch", "id": uuid.uuid4().hex, "name": image.name, "sha1": "5" * 40,
        "category": "demo_metal", "model": "patchcore", "version": 1, "verdict": "OK",
        "score": _score(store, "patchcore", image), "threshold": 1.0, "path": str(image)})
    assert recorded is not None
    row = history.result(recorded.id)
    assert row is not None and row.spot_check
    outcome = review.decide(history, store, data, row, "OK", "ana")
    assert outcome.recorded and outcome.feedback is None
    assert store.current("demo_metal", "patchcore").version == before.version  # no new version
    assert "not taught" in str(history.reviews(result_id=row.id)[0].note)
    assert [g.result.id for g in review.confirmed_good(history, "demo_metal", "patchcore", limit=10)] == [row.id]


def test_ok_far_above_the_threshold_needs_force(queue) -> None:
    history, store, data, kept = queue
    model = det.load(store.current("demo_metal", "patchcore"))
    image = kept / "scratch_002.png"  # far above the threshold (the premise, checked here) and familiar
    found = inspect(model, [load_image(image)])[0]
    assert feedback.needs_confirmation(model, found.score) is not None and found.familiar
    row = _record(history, image, "DEFECT", time.time())
    asked = review.decide(history, store, data, row, "OK", "ana")
    assert not asked.recorded and asked.needs_confirmation is not None and "confirm OK" in asked.message
    assert history.reviews(result_id=row.id) == [] and store.current("demo_metal", "patchcore") == model.ref
    forced = review.decide(history, store, data, row, "OK", "ana", force=True)
    assert forced.recorded and store.current("demo_metal", "patchcore").version == model.ref.version + 1


def test_an_ok_the_model_refuses_to_learn_is_audited_and_says_so(queue) -> None:
    """scratch 001 is far above the threshold and unlike the training images: confirmed OK it is a person's word
    on a good part (audited, a confirmed good), but PatchCore's guard refuses to learn it."""
    history, store, data, kept = queue
    image = kept / "scratch_001.png"
    model = det.load(store.current("demo_metal", "patchcore"))
    assert inspect(model, [load_image(image)])[0].familiar is False  # the premise
    row = _record(history, image, "DEFECT", time.time())
    assert review.decide(history, store, data, row, "OK", "ana").needs_confirmation is not None
    outcome = review.decide(history, store, data, row, "OK", "ana", force=True)
    assert outcome.recorded and outcome.feedback is None and "not taught to the model" in outcome.message
    assert "does not look like this product's images" in str(history.reviews(result_id=row.id)[0].note)
    assert store.current("demo_metal", "patchcore") == model.ref


def test_defect_files_the_image_under_its_defect_type(queue) -> None:
    history, store, data, kept = queue
    row = _record(history, kept / "scratch_001.png", "REVIEW", time.time())
    with pytest.raises(review.ReviewError, match="expected a defect type"):
        review.decide(history, store, data, row, "DEFECT", "ana")
    with pytest.raises(review.ReviewError, match="found 'good'"):
        review.decide(history, store, data, row, "DEFECT", "ana", defect="good")
    assert history.reviews() == []
    outcome = review.decide(history, store, data, row, "DEFECT", "ana", defect="dent")
    filed = list((data / "demo_metal" / "test" / "dent").glob("*.png"))
    assert len(filed) == 1 and outcome.feedback is not None and outcome.feedback.filed_as == filed[0]
    audit = history.reviews(result_id=row.id)[0]
    assert (audit.decision, audit.defect, audit.reviewer) == ("DEFECT", "dent", "ana")
    assert str(filed[0]) in str(audit.note)
    assert store.current("demo_metal", "patchcore").version == 1  # a defect teaches no version


def test_efficientad_ok_is_audited_and_confirmed_good_without_a_new_version(queue) -> None:
    history, store, data, kept = queue
    row = _record(history, kept / "good_001.png", "REVIEW", time.time(), kind="efficientad")
    outcome = review.decide(history, store, data, row, "OK", "ana")
    assert outcome.recorded and outcome.feedback is None and "does not learn from one image" in outcome.message
    assert store.version_numbers("demo_metal", "efficientad") == [1]
    assert [g.result.id for g in review.confirmed_good(history, "demo_metal", "efficientad", 5)] == [row.id]


def test_missing_or_non_image_files_and_vanished_models_write_nothing(queue, env: Path) -> None:
    history, store, data, kept = queue
    missing = _record(history, kept / "gone.png", "REVIEW", time.time())
    with pytest.raises(review.ReviewError, match="found nothing there"):
        review.decide(history, store, data, missing, "OK", "ana")
    (kept / "notes.png").write_bytes(b"not an image")
    junk = _record(history, kept / "notes.png", "DEFECT", time.time())
    with pytest.raises(review.ReviewError, match="expected an image at"):
        review.decide(history, store, data, junk, "DEFECT", "ana", defect="scratch")
    no_path = _record(history, None, "DEFECT", time.time())
    with pytest.raises(review.ReviewError, match="keeps no path"):
        review.decide(history, store, data, no_path, "OK", "ana")
    unknown = _record(history, kept / "good_000.png", "REVIEW", time.time(), kind="vae")
    with pytest.raises(review.ReviewError, match="expected a trained demo_metal/vae model"):
        review.decide(history, store, data, unknown, "OK", "ana")
    shutil.rmtree(env / "demo_metal" / "efficientad")
    untrained = _record(history, kept / "good_000.png", "REVIEW", time.time(), kind="efficientad")
    with pytest.raises(review.ReviewError, match="nothing recorded"):
        review.decide(history, store, data, untrained, "OK", "ana")
    assert history.reviews() == [] and store.current("demo_metal", "patchcore").version == 1
    assert not (data / "demo_metal" / "test" / "scratch" / "feedback_").exists()


def test_a_version_that_no_longer_exists_is_audited_and_taught_to_the_current_one(queue) -> None:
    history, store, data, kept = queue
    row = _record(history, kept / "good_002.png", "REVIEW", time.time(), version=7)
    outcome = review.decide(history, store, data, row, "OK", "ana")
    assert outcome.recorded and "v7 that judged it no longer exists" in outcome.message
    assert outcome.review is not None and outcome.review.version == 7  # the audit names the version that judged
    assert store.current("demo_metal", "patchcore").version == 2


# -- 4: the Review page ---------------------------------------------------------------------------------------


def _app() -> AppTest:
    return AppTest.from_string((ROOT / "app.py").read_text(), default_timeout=TIMEOUT)


def _goto_review(at: AppTest) -> AppTest:
    at.switch_page(str(ROOT / "pages" / "review.py"))
    at.run()
    assert not at.exception, at.exception
    return at


def _button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def _texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [e.value for e in at.error] + [c.value for c in at.caption]
    parts += [s.value for s in at.success] + [i.value for i in at.info] + [w.value for w in at.warning]
    return "\n".join(str(p) for p in parts)


@pytest.fixture()
def page_queue(env: Path, tmp_path: Path) -> tuple[Path, list[ResultRow]]:
    """Three rows in the history of the dashboard's store: REVIEW (oldest), DEFECT, REVIEW (newest), and an OK."""
    kept = tmp_path / "line_images"
    kept.mkdir()
    test = tmp_path / "data" / "demo_metal" / "test"
    now = time.time()
    with History.open(env) as history:
        rows = []
        for i, (source, verdict) in enumerate([(test / "good" / "000.png", "REVIEW"),
                                               (test / "scratch" / "002.png", "DEFECT"),
                                               (test / "good" / "001.png", "REVIEW")]):
            shutil.copy(source, kept / f"line_{i}.png")
            rows.append(_record(history, kept / f"line_{i}.png", verdict, now - 100 + i * 10,
                                score=_score(ModelStore(env), "patchcore", kept / f"line_{i}.png")))
        _record(history, kept / "line_0.png", "OK", now)
    return env, rows


def test_review_page_answers_ok_and_defect_and_shows_the_next_item_at_once(page_queue, tmp_path: Path) -> None:
    store, rows = page_queue
    at = _goto_review(_app().run())
    assert at.title[0].value == "Review"
    queue = at.dataframe[0].value
    assert list(queue["id"]) == [rows[2].id, rows[1].id, rows[0].id]  # newest first, no OK row
    assert "line_2.png" in _texts(at)  # the newest is the current item
    assert [b.label for b in at.button][:3] == ["OK", "DEFECT", "Skip"]  # the answers come first
    _button(at, "OK").click()
    at.run()
    assert not at.exception, at.exception
    with History.open(store) as history:
        audit = history.reviews()
        assert [(a.result_id, a.decision, a.reviewer) for a in audit] == [(rows[2].id, "OK", "local user")]
    assert ModelStore(store).current("demo_metal", "patchcore").version == 2  # the bank grew: a new version
    assert "line_1.png" in _texts(at)  # the next item at once, in the same answer's run
    assert list(at.dataframe[0].value["id"]) == [rows[1].id, rows[0].id]
    at.selectbox(key="review_defect").set_value("spot")  # (AppTest cannot type a new option; the page accepts one)
    _button(at, "DEFECT").click()
    at.run()
    assert not at.exception, at.exception
    assert len(list((tmp_path / "data" / "demo_metal" / "test" / "spot").glob("feedback_*.png"))) == 1
    assert "line_0.png" in _texts(at)
    _button(at, "Skip").click()
    at.run()
    assert "Nothing to review" in _texts(at)
    with History.open(store) as history:
        assert [a.decision for a in history.reviews()] == ["DEFECT", "OK"]


def test_review_page_filters_by_verdict(page_queue) -> None:
    _, rows = page_queue
    at = _goto_review(_app().run())
    at.multiselect(key="review_verdicts").set_value(["DEFECT"]).run()
    assert list(at.dataframe[0].value["id"]) == [rows[1].id]


def test_review_page_asks_before_an_ok_far_above_the_threshold(page_queue) -> None:
    store, rows = page_queue  # rows[1]: scratch 002, far above the threshold
    at = _goto_review(_app().run())
    at.multiselect(key="review_verdicts").set_value(["DEFECT"]).run()
    _button(at, "OK").click()
    at.run()
    assert not at.exception, at.exception
    assert any("confirm OK" in w.value for w in at.warning)
    assert ModelStore(store).current("demo_metal", "patchcore").version == 1
    _button(at, "Confirm OK").click()
    at.run()
    assert not at.exception, at.exception
    with History.open(store) as history:
        assert [(a.result_id, a.decision) for a in history.reviews()] == [(rows[1].id, "OK")]
    assert ModelStore(store).current("demo_metal", "patchcore").version == 2
    assert "Nothing to review" in _texts(at)


@pytest.fixture()
def exposed() -> Iterator[None]:
    before = st_config.get_option("server.address")
    st_config.set_option("server.address", "0.0.0.0")
    try:
        yield
    finally:
        st_config.set_option("server.address", before)


def test_a_role_without_the_mark_permission_cannot_answer(page_queue, exposed: None,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """No role of core.access lacks MARK today; a viewer (INSPECT only) is made by taking MARK from the operator."""
    from core.access import LoginThrottle, Permission, Role
    from ui import auth

    store, _rows = page_queue
    access.add_user(store / "users.json", "vera", "operator", OPERATOR_PW)
    monkeypatch.setattr(auth, "THROTTLE", LoginThrottle(delay_s=0.0))
    monkeypatch.setitem(access.ROLE_PERMISSIONS, Role.OPERATOR, frozenset({Permission.INSPECT}))  # type: ignore[index]
    at = _app().run()
    at.text_input(key="login_name").input("vera")
    at.text_input(key="login_password").input(OPERATOR_PW)
    _button(at, "Sign in").click()
    at.run()
    at = _goto_review(at)
    assert _button(at, "OK").disabled and _button(at, "DEFECT").disabled
    monkeypatch.setattr(auth, "can", lambda permission: True)  # a page that forgot to disable its buttons
    at.run()
    _button(at, "OK").click()
    at.run()
    assert any("Not allowed: vera is signed in as operator, which may not mark images" in e.value for e in at.error)
    with History.open(store) as history:
        assert history.reviews() == []
    assert ModelStore(store).current("demo_metal", "patchcore").version == 1


def test_a_result_decided_again_counts_by_its_latest_decision(queue) -> None:
    history, _store, _data, kept = queue
    first = _record(history, kept / "good_001.png", "REVIEW", time.time() - 10, kind="efficientad")
    second = _record(history, kept / "good_000.png", "REVIEW", time.time() - 5, kind="efficientad")
    history.record_review(first.id, "OK", "ana", time=time.time() - 4)
    history.record_review(second.id, "OK", "ana", time=time.time() - 3)
    history.record_review(first.id, "DEFECT", "bo", defect="scratch", time=time.time() - 2)  # bo overrules ana
    assert [g.result.id for g in review.confirmed_good(history, "demo_metal", "efficientad", 5)] == [second.id]


def test_two_reviewers_answering_at_once_make_one_decision(queue, monkeypatch: pytest.MonkeyPatch) -> None:
    """The decision is claimed before its action runs (one transaction): a second reviewer answering while the
    first one's image is being filed (seconds, on a real line) is refused, and the action runs once."""
    history, store, data, kept = queue
    row = _record(history, kept / "scratch_000.png", "REVIEW", time.time())
    filed = feedback.mark_defect
    seen: list[str] = []

    def slow_mark_defect(*args, **kwargs):  # the second reviewer answers while the first one's action runs
        with pytest.raises(review.ReviewError, match="found ana's DEFECT"):
            review.decide(history, store, data, row, "OK", "bo")
        seen.append("refused")
        return filed(*args, **kwargs)

    monkeypatch.setattr(feedback, "mark_defect", slow_mark_defect)
    outcome = review.decide(history, store, data, row, "DEFECT", "ana", defect="scratch")
    assert seen == ["refused"] and outcome.recorded
    [audit] = history.reviews(result_id=row.id)
    assert (audit.reviewer, audit.decision) == ("ana", "DEFECT") and str(audit.note).startswith("filed as")
    assert store.current("demo_metal", "patchcore").version == 1  # bo's OK taught nothing


def test_a_decision_whose_action_fails_is_withdrawn(queue, monkeypatch: pytest.MonkeyPatch) -> None:
    history, store, data, kept = queue
    row = _record(history, kept / "scratch_001.png", "REVIEW", time.time())

    def broken(*_args, **_kwargs):
        raise feedback.FeedbackError("expected a writable test folder, found a read-only one")

    monkeypatch.setattr(feedback, "mark_defect", broken)
    with pytest.raises(review.ReviewError, match="read-only one; nothing recorded"):
        review.decide(history, store, data, row, "DEFECT", "ana", defect="scratch")
    assert history.reviews(result_id=row.id) == []  # the claim was withdrawn: the part is still in the queue
    assert [r.id for r in review.pending(history, "demo_metal")] == [row.id]


def test_only_the_first_decision_is_taken_when_asked(queue) -> None:
    from core.store.history import AlreadyReviewed

    history, _store, _data, kept = queue
    row = _record(history, kept / "good_002.png", "REVIEW", time.time())
    history.record_review(row.id, "OK", "ana", first=True)
    with pytest.raises(AlreadyReviewed, match="found ana's OK"):
        history.record_review(row.id, "DEFECT", "bo", defect="scratch", first=True)
    assert len(history.reviews(result_id=row.id)) == 1


def test_review_page_shows_spot_checks_of_ok_verdicts(page_queue, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 24 gap 2: an OK verdict whose image hash is in the spot-check share is in the queue, marked so, and
    the 'Spot checks' box hides it."""
    store, rows = page_queue
    monkeypatch.setenv("INSPECT_SPOT_CHECK", "1")
    kept = tmp_path / "line_images" / "spot.png"
    shutil.copy(tmp_path / "data" / "demo_metal" / "test" / "good" / "002.png", kept)
    with History.open(store) as history:
        made = history.record_line_record({"time": time.time(), "source": "service", "name": "spot.png",
                                           "sha1": hashlib.sha1(kept.read_bytes()).hexdigest(),
                                           "category": "demo_metal", "model": "patchcore", "version": 1,
                                           "verdict": "OK", "score": 0.5, "threshold": 1.0, "path": str(kept)})
    assert made is not None
    at = _goto_review(_app().run())
    table = at.dataframe[0].value
    assert list(table["id"]) == [made.id, rows[2].id, rows[1].id, rows[0].id]
    assert table["verdict"].iloc[0] == "OK (spot check)"
    assert "OK · spot check" in _texts(at) and "Spot check: the model judged this part OK" in _texts(at)
    at.checkbox(key="review_spot").uncheck().run()
    assert list(at.dataframe[0].value["id"]) == [rows[2].id, rows[1].id, rows[0].id]
