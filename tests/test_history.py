"""The line history in a database (core/store/history.py): the same cases against SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from core import settings
from core.store import history as hist
from core.store.history import History

ROOT = Path(__file__).resolve().parents[1]
UTC = dt.UTC
BASE = dt.datetime(2026, 3, 2, 8, 0, tzinfo=UTC).timestamp()  # a Monday, 08:00 UTC


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a new database on the session's throwaway PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'history.sqlite3'}"
        return
    with new_database(request.getfixturevalue("postgres_server")) as made:
        yield made


@contextlib.contextmanager
def new_database(server: str) -> Iterator[str]:
    """A new, empty database on the PostgreSQL ``server`` (the session's ``postgres_server``), dropped after."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield sa.make_url(server).set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


@pytest.fixture
def history(url: str) -> Iterator[History]:
    with History(url, host="test-host") as opened:
        yield opened


def result(history: History, *, t: float = BASE, verdict: str = "OK", score: float | None = 1.0,
           category: str = "demo", kind: str = "patchcore", version: int = 1, journal_id: str | None = None,
           sha1: str | None = None, source: str = "watch") -> hist.Recorded:
    return history.record_result(time=t, source=source, category=category, verdict=verdict, kind=kind,
                                 version=version, score=score, threshold=2.0, journal_id=journal_id,
                                 image_sha1=sha1, name=f"img-{t}.png")


# -- migrations ----------------------------------------------------------------------------------------------


def test_an_empty_database_migrates_to_head_and_matches_the_tables(url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = hist.make_engine(url)
    try:
        with engine.connect() as conn:
            assert hist.current_revision(conn) is None
            assert not sa.inspect(conn).get_table_names()
        History(url).close()
        with engine.connect() as conn:
            assert hist.current_revision(conn) == hist.head_revision() == "0004"
            assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                    hist.metadata) == []
            # the comparison sees a difference when there is one (so the empty list above means something)
            other = sa.MetaData()
            for table in hist.metadata.tables.values():
                table.to_metadata(other)
            sa.Table("line_results", other, sa.Column("added", sa.Integer), extend_existing=True)
            assert any(d[0] == "add_column" and d[3].name == "added"
                       for d in compare_metadata(MigrationContext.configure(conn), other))
        History(url).close()  # a second open finds head and changes nothing
        with engine.connect() as conn:
            assert hist.current_revision(conn) == "0004"
    finally:
        engine.dispose()


def test_sqlite_is_one_wal_file_in_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(settings.DATABASE_URL_ENV, raising=False)
    with History.open(tmp_path) as opened:
        assert opened.url.database == str((tmp_path / ".line" / "history.sqlite3").resolve())
        with opened.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == hist.BUSY_TIMEOUT_MS
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    assert (tmp_path / ".line" / "history.sqlite3").is_file()


def test_the_database_url_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(settings.DATABASE_URL_ENV, raising=False)
    assert settings.database_url() is None
    monkeypatch.setenv(settings.DATABASE_URL_ENV, "  postgresql://inspector@db.local/line  ")
    assert settings.database_url() == "postgresql://inspector@db.local/line"
    assert hist.store_url(tmp_path).drivername == "postgresql+psycopg"  # a bare scheme gets psycopg 3
    monkeypatch.setenv(settings.DATABASE_URL_ENV, "mysql://root:secret@db/line")
    with pytest.raises(ValueError, match=r"expected a sqlite or postgresql database URL, found 'mysql://root:\*\*\*@db/line'"):
        hist.store_url(tmp_path)
    with pytest.raises(ValueError, match="expected a database URL"):
        hist.normalise_url("not a url")


# -- results -------------------------------------------------------------------------------------------------


def test_a_result_reads_back_as_written(history: History) -> None:
    recorded = history.record_result(time=BASE, source="watch", category="demo", verdict="REVIEW", kind="patchcore",
                                     version=3, score=2.5, threshold=2.0, name="a.png", image_sha1="ab" * 20,
                                     journal_id="j-1", path="/line/review/a.png", latency_ms=12.5, reason="near",
                                     extra={"familiar": True})
    assert recorded.new
    [row] = history.results()
    assert row == hist.ResultRow(id=recorded.id, time=BASE, host="test-host", source="watch", ref="j-1",
                                 category="demo", kind="patchcore", version=3, verdict="REVIEW", score=2.5,
                                 threshold=2.0, name="a.png", image_sha1="ab" * 20, path="/line/review/a.png",
                                 latency_ms=12.5, reason="near", status=None, extra={"familiar": True},
                                 spot_check=False)
    assert history.result(recorded.id) == row and history.result(recorded.id + 1) is None


def test_a_retried_write_makes_no_second_row(history: History) -> None:
    first = result(history, journal_id="j-1")
    again = result(history, journal_id="j-1", score=9.0)  # a retry after a crash: the first row stands
    assert first.new and not again.new and again.id == first.id
    by_hash = result(history, sha1="cd" * 20, t=BASE + 1)
    assert not result(history, sha1="cd" * 20, t=BASE + 1, score=9.0).new  # the same record written again
    assert result(history, sha1="cd" * 20, t=BASE + 3, version=2).new  # judged again by another version
    assert result(history, sha1="cd" * 20, t=BASE + 4, kind="efficientad").new  # ... or another kind
    row = {"time": BASE + 5, "source": "service", "category": "demo", "name": "b.png", "score": 1.2,
           "threshold": 2.0, "verdict": "OK", "model": "patchcore", "version": 1, "latency_ms": 3.0, "reason": ""}
    service = history.record_line_record(row)
    assert service is not None and service.new
    assert history.record_line_record(dict(row)) == hist.Recorded(service.id, False)
    assert history.record_line_record({"source": "service"}) is None  # no time, category or verdict
    assert len(history.results()) == 5
    assert history.results(version=1, kind="patchcore", source="watch", verdict="OK")[0].score == 1.0
    assert by_hash.new


def test_filters(history: History) -> None:
    rows = [  # (minutes after BASE, category, kind, version, verdict)
        (0, "demo", "patchcore", 1, "OK"), (10, "demo", "patchcore", 1, "DEFECT"),
        (20, "demo", "patchcore", 2, "REVIEW"), (30, "demo", "efficientad", 1, "OK"),
        (40, "tile", "patchcore", 1, "DEFECT"), (50, "demo", "patchcore", 2, "OK")]
    for i, (minutes, category, kind, version, verdict) in enumerate(rows):
        result(history, t=BASE + 60 * minutes, category=category, kind=kind, version=version, verdict=verdict,
               journal_id=f"j{i}")

    def minutes(found: list[hist.ResultRow]) -> list[int]:
        return [round((r.time - BASE) / 60) for r in found]

    assert minutes(history.results()) == [50, 40, 30, 20, 10, 0]  # newest first
    assert minutes(history.results(newest_first=False, limit=2)) == [0, 10]
    assert minutes(history.results(category="demo")) == [50, 30, 20, 10, 0]
    assert minutes(history.results(category="demo", kind="patchcore", version=2)) == [50, 20]
    assert minutes(history.results(verdict="DEFECT")) == [40, 10]
    assert minutes(history.results(verdict=["REVIEW", "DEFECT"], category="demo")) == [20, 10]
    assert minutes(history.results(since=BASE + 600, until=BASE + 1800)) == [20, 10]  # since <= t < until
    since = dt.datetime.fromtimestamp(BASE + 2400, UTC)
    assert minutes(history.results(since=since)) == [50, 40]
    assert minutes(history.results(limit=None)) == [50, 40, 30, 20, 10, 0]
    assert history.results(category="nothing") == []


# -- trends --------------------------------------------------------------------------------------------------


def test_trends_per_hour_count_verdicts_and_take_the_median_score(history: History) -> None:
    rows = [  # (seconds after BASE (08:00 UTC), verdict, score)
        (10, "OK", 1.0), (20, "OK", 3.0), (3599, "DEFECT", 10.0),   # 08:00-09:00: OK 2, DEFECT 1; median 3
        (3600, "REVIEW", 5.0), (4000, "OK", 2.0),                   # 09:00-10:00: median (2 + 5) / 2 = 3.5
        (4100, "REJECTED", None),                                   # refused: not in the trend
        (3 * 3600 + 5, "OK", 4.0)]                                  # 11:00-12:00 (10:00 has none)
    for i, (seconds, verdict, score) in enumerate(rows):
        result(history, t=BASE + seconds, verdict=verdict, score=score, journal_id=f"j{i}")
    result(history, t=BASE + 30, category="tile", verdict="DEFECT", score=99.0, journal_id="other")

    buckets = history.trends("hour", category="demo", tz=UTC)
    assert [(b.label, b.counts, b.total, b.score_median) for b in buckets] == [
        ("2026-03-02 08:00", {"OK": 2, "DEFECT": 1}, 3, 3.0),
        ("2026-03-02 09:00", {"REVIEW": 1, "OK": 1}, 2, 3.5),
        ("2026-03-02 11:00", {"OK": 1}, 1, 4.0)]
    assert (buckets[0].start, buckets[0].end) == (BASE, BASE + 3600)
    assert buckets[0].rate("DEFECT") == pytest.approx(1 / 3) and buckets[0].rate("REVIEW") == 0
    everything = history.trends("hour", tz=UTC, exclude_verdicts=())
    assert everything[0].counts == {"OK": 2, "DEFECT": 2} and everything[0].score_median == 6.5  # (3 + 10) / 2
    assert everything[1].counts == {"REVIEW": 1, "OK": 1, "REJECTED": 1} and everything[1].score_median == 3.5
    assert history.trends("hour", category="demo", tz=UTC, since=BASE + 3600, until=BASE + 7200)[0].total == 2
    with pytest.raises(ValueError, match="expected a bucket of hour or shift, found 'day'"):
        history.trends("day")  # type: ignore[arg-type]


def test_trends_per_shift_run_across_midnight(history: History) -> None:
    day = dt.datetime(2026, 3, 2, tzinfo=UTC).timestamp()
    rows = [  # (hours after midnight of 2 March UTC, verdict, score); shifts start at 06, 14, 22
        (5.5, "OK", 1.0),                         # night shift of 1 March 22:00
        (6.0, "OK", 2.0), (13.99, "DEFECT", 8.0),  # 06:00-14:00
        (23.0, "OK", 1.0), (24 + 5.0, "REVIEW", 3.0), (24 + 5.9, "OK", 2.0)]  # 22:00 - 3 March 06:00
    for i, (hours, verdict, score) in enumerate(rows):
        result(history, t=day + 3600 * hours, verdict=verdict, score=score, journal_id=f"s{i}")
    buckets = history.trends("shift", tz=UTC)
    assert [(b.label, b.counts, b.score_median) for b in buckets] == [
        ("2026-03-01 22:00 shift 3", {"OK": 1}, 1.0),
        ("2026-03-02 06:00 shift 1", {"OK": 1, "DEFECT": 1}, 5.0),
        ("2026-03-02 22:00 shift 3", {"OK": 2, "REVIEW": 1}, 2.0)]
    assert (buckets[2].start, buckets[2].end) == (day + 22 * 3600, day + 30 * 3600)
    two = history.trends("shift", tz=UTC, shift_starts=(18, 6))  # two 12-hour shifts, given in any order
    assert [(b.label, b.total) for b in two] == [("2026-03-01 18:00 shift 2", 1), ("2026-03-02 06:00 shift 1", 2),
                                                 ("2026-03-02 18:00 shift 2", 3)]
    with pytest.raises(ValueError, match="expected shift start hours in 0..23"):
        history.trends("shift", shift_starts=(6, 24))


def test_a_shift_across_a_daylight_saving_change_is_an_hour_shorter(tmp_path: Path) -> None:
    from zoneinfo import ZoneInfo

    berlin = ZoneInfo("Europe/Berlin")  # clocks go from 02:00 to 03:00 on 29 March 2026
    with History(f"sqlite:///{tmp_path / 'h.sqlite3'}") as history:
        result(history, t=dt.datetime(2026, 3, 29, 4, 30, tzinfo=berlin).timestamp())
        [night] = history.trends("shift", tz=berlin)
    assert night.label == "2026-03-28 22:00 shift 3" and night.end - night.start == 7 * 3600


# -- two writers ---------------------------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from core.store.history import History
    url, writer, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    history = History(url, host=writer)
    while not go.exists():
        time.sleep(0.01)
    for i in range(120):
        history.record_result(time=1000.0 + i, source="watch", category="demo", verdict="OK", kind="patchcore",
                              version=1, score=float(i), journal_id=f"{writer}-{i}")
        if i % 3 == 0:  # both writers record these: each must land once
            history.record_result(time=2000.0 + i, source="watch", category="demo", verdict="OK",
                                  kind="patchcore", version=1, score=float(i), journal_id=f"shared-{i}")
    history.close()
""")


def test_two_processes_writing_at_once_lose_no_row_and_double_none(url: str, tmp_path: Path) -> None:
    History(url).close()  # migrated first, so both writers race on rows, not on the schema
    go = tmp_path / "go"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, url, name, str(go)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    go.touch()
    for writer in writers:
        _, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err[-2000:]
    with History(url) as opened:
        rows = opened.results(limit=None)
    refs = [r.ref for r in rows]
    assert len(refs) == len(set(refs)) == 120 + 120 + 40
    assert {r.host for r in rows if r.ref.startswith("a-")} == {"a"}


def test_two_processes_migrate_a_new_database_once(url: str) -> None:
    code = "import sys; from core.store.history import History; History(sys.argv[1]).close()"
    opened = [subprocess.Popen([sys.executable, "-c", code, url], cwd=ROOT, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    for process in opened:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
    with History(url) as history:
        assert result(history).new


# -- reviews, alarms, feedback --------------------------------------------------------------------------------


def test_a_review_keeps_who_when_and_what_the_model_said(history: History) -> None:
    judged = result(history, verdict="REVIEW", score=2.2, version=4, journal_id="j")
    review = history.record_review(judged.id, "DEFECT", "ana", defect="scratch", note="edge", time=BASE + 60)
    assert review == hist.ReviewRow(id=review.id, result_id=judged.id, time=BASE + 60, host="test-host",
                                    reviewer="ana", decision="DEFECT", defect="scratch", note="edge",
                                    category="demo", kind="patchcore", version=4, model_verdict="REVIEW",
                                    model_score=2.2)
    ok = history.record_review(judged.id, "OK", "ben", time=BASE + 120)  # a second opinion is a second row
    assert [r.id for r in history.reviews()] == [ok.id, review.id]
    assert history.reviews(reviewer="ana") == [review]
    assert history.reviews(decision="OK", version=4, result_id=judged.id) == [ok]
    assert history.reviews(since=BASE + 100) == [ok]
    with pytest.raises(ValueError, match="expected a decision of OK or DEFECT, found 'MAYBE'"):
        history.record_review(judged.id, "MAYBE", "ana")
    with pytest.raises(ValueError, match="expected no defect type with an OK decision"):
        history.record_review(judged.id, "OK", "ana", defect="scratch")
    with pytest.raises(ValueError, match="expected the reviewer's name"):
        history.record_review(judged.id, "OK", " ")
    with pytest.raises(ValueError, match=f"found {judged.id + 99}: no such result"):
        history.record_review(judged.id + 99, "OK", "ana")
    assert len(history.reviews()) == 2


def test_a_review_must_name_a_stored_result(history: History) -> None:
    """The foreign key holds on both databases (SQLite: ``PRAGMA foreign_keys``)."""
    with pytest.raises(sa.exc.IntegrityError), history.engine.begin() as conn:
        conn.execute(sa.insert(hist.reviews).values(result_id=12345, time=BASE, host="h", reviewer="r",
                                                    decision="OK", category="demo", model_verdict="OK"))


def test_drift_alarms_open_and_resolved(history: History) -> None:
    first = history.record_alarm(category="demo", kind="patchcore", version=2, rule="cusum", statistic=5.5,
                                 limit=4.0, message="scores drifted up", time=BASE)
    second = history.record_alarm(category="tile", kind="patchcore", rule="cusum", message="x", time=BASE + 10)
    assert [a.id for a in history.alarms(open_only=True)] == [second.id, first.id]
    resolved = history.resolve_alarm(first.id, "ana", time=BASE + 99)
    assert (resolved.resolved_time, resolved.resolved_by, resolved.statistic) == (BASE + 99, "ana", 5.5)
    assert history.resolve_alarm(first.id, "ben", time=BASE + 500).resolved_by == "ana"  # first resolution stays
    assert history.alarms(open_only=True) == [second]
    assert history.alarms(category="demo", kind="patchcore", version=2) == [resolved]
    with pytest.raises(ValueError, match="no such alarm"):
        history.resolve_alarm(second.id + 10, "ana")


def test_feedback_entries_once_each(history: History) -> None:
    entry = {"time": "2026-03-02T08:00:05+00:00", "action": "mark_ok", "image": "a.png", "sha1": "ef" * 20,
             "version_before": 1, "version_after": 2, "score_before": 3.0}
    first = history.record_feedback("demo", "patchcore", entry)
    assert first is not None and first.new
    assert history.record_feedback("demo", "patchcore", dict(entry)) == hist.Recorded(first.id, False)
    assert history.record_feedback("demo", "efficientad", entry).new  # type: ignore[union-attr]
    undo = {"time": BASE + 10, "action": "undo", "undoes": 0, "version_before": 2, "version_after": 1}
    assert history.record_feedback("demo", "patchcore", undo).new  # type: ignore[union-attr]
    assert history.record_feedback("demo", "patchcore", {"action": "undo", "time": "yesterday"}) is None
    [undone, marked] = history.feedback(kind="patchcore")
    assert (marked.time, marked.action, marked.image_sha1, marked.version_after, marked.extra) == (
        BASE + 5, "mark_ok", "ef" * 20, 2, {"score_before": 3.0})
    assert undone.extra == {"undoes": 0} and history.feedback(action="mark_ok", kind="efficientad")[0].image == "a.png"


# -- importing the JSONL logs ----------------------------------------------------------------------------------


def _line(record: dict) -> str:
    return json.dumps(record) + "\n"


def test_jsonl_logs_are_imported_once_and_a_grown_file_only_adds_its_new_lines(
        url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.DATABASE_URL_ENV, url)
    store = tmp_path / "store"
    log = store / ".line" / "results.jsonl"
    log.parent.mkdir(parents=True)
    watch = {"time": BASE, "source": "watch", "id": "j-1", "name": "a.png", "sha1": "ab" * 20, "category": "demo",
             "score": 3.0, "threshold": 2.0, "verdict": "DEFECT", "model": "patchcore", "version": 1,
             "latency_ms": 9.0, "reason": "", "path": "/out/defect/a.png"}
    service = {"time": BASE + 1, "source": "service", "category": "demo", "name": "b.png", "score": 1.0,
               "threshold": 2.0, "verdict": "OK", "model": "patchcore", "version": 1, "latency_ms": 4.0,
               "reason": "", "familiar": True}
    refused = {"time": BASE + 2, "source": "service", "category": "demo", "name": "c.bin", "verdict": "REJECTED",
               "status": 415, "reason": "not an image", "model": "patchcore"}
    cut = '{"time": 5, "source": "watch", "ver'  # a crash cut this line; the writer ended it before appending
    # (the watch row is there twice, as a retried append would leave it: one row)
    log.write_text(_line(watch) + _line(service) + _line(watch) + cut + "\n" + _line(refused) + "[1, 2]\n"
                   + '{"time": 7, "source": "watch", "id": "j-9"')  # being written: no newline yet
    feedback_log = store / "demo" / "patchcore" / "feedback.jsonl"
    feedback_log.parent.mkdir(parents=True)
    mark = {"time": "2026-03-02T08:00:05+00:00", "action": "mark_ok", "image": "b.png", "sha1": "cd" * 20,
            "version_before": 1, "version_after": 2}
    feedback_log.write_text(_line(mark))
    (store / ".training" / "demo" / "feedback.jsonl").parent.mkdir(parents=True)  # hidden folders are not models
    (store / ".training" / "demo" / "feedback.jsonl").write_text(_line(mark))

    with History.open(store) as first:
        rows = first.results(newest_first=False)
        assert [(r.source, r.verdict, r.name) for r in rows] == [
            ("watch", "DEFECT", "a.png"), ("service", "OK", "b.png"), ("service", "REJECTED", "c.bin")]
        assert rows[0].ref == "j-1" and rows[0].path == "/out/defect/a.png" and rows[1].extra == {"familiar": True}
        assert rows[2].status == 415 and rows[2].kind == "patchcore" and rows[2].version is None
        assert [(f.category, f.kind, f.action) for f in first.feedback()] == [("demo", "patchcore", "mark_ok")]
        assert first.import_logs(store) == hist.ImportReport(files=2, lines=0, rows=0)  # nothing new
        first.record_line_record({**watch, "id": "j-2", "time": BASE + 3})  # written directly, then logged too

    with log.open("a") as handle:  # the line being written is finished, two more follow
        handle.write(', "category": "demo", "verdict": "OK", "model": "patchcore", "version": 1}\n')
        handle.write(_line({**watch, "id": "j-2", "time": BASE + 3}) + _line({**watch, "id": "j-3"}))
    with History.open(store) as second:
        report = second.import_logs(store)
        assert report.rows == 0  # History.open imported the new lines already
        refs = [r.ref for r in second.results(source="watch", newest_first=False)]
        assert refs == ["j-9", "j-1", "j-3", "j-2"]  # j-2 once; j-9 at time 7, first
        log.write_text(_line(service) + _line({**watch, "id": "j-4"}))  # the log was replaced (rotated)
        again = second.import_logs(store)
        assert (again.lines, again.rows) == (2, 1)  # read from its start; only j-4 is new
        assert len(second.results(limit=None)) == 7
        with second.engine.connect() as conn:
            imported = {row.path: (row.size, row.rows) for row in conn.execute(sa.select(hist.imported_logs))}
        assert imported[str(log.resolve())] == (log.stat().st_size, 1)  # rows made from it: j-4, not 2 parsed


def test_an_empty_store_imports_nothing(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.DATABASE_URL_ENV, url)
    with History.open(tmp_path / "nothing-here") as opened:
        assert opened.import_logs(tmp_path / "nothing-here") == hist.ImportReport(0, 0, 0)
        assert opened.results() == []


def test_a_crafted_long_model_name_is_stored_cut_and_does_not_jam_the_history(history: History) -> None:
    """A refused request names its ?model= (the service clips it to 64 characters + "…"): longer than the kind
    column (60). PostgreSQL refused the row, and every later import batch with it."""
    long = "m" * 64 + "…"
    first = history.record_line_record({"time": BASE, "source": "service", "category": "demo", "model": long,
                                        "verdict": "REJECTED", "reason": "no such model", "name": "x" * 5000})
    history.record_result(time=BASE + 1, source="service", category="demo", verdict="OK", kind="patchcore")
    assert first is not None and first.new
    rows = {r.verdict: r for r in history.results()}
    assert set(rows) == {"REJECTED", "OK"}
    assert rows["REJECTED"].kind == "m" * 59 + "…" and rows["REJECTED"].name == "x" * 5000  # name is TEXT


# -- gaps of issue 24 (item 4): identities and counts --------------------------------------------------------------


def test_the_same_bytes_sent_at_two_times_are_two_results_and_a_retry_one(history: History, tmp_path: Path) -> None:
    """The service's rows have no journal id: the same bytes uploaded again later (a client resending a frame it
    could not read, the same unreadable file twice) are two requests the service answered, so two rows; the same
    record written directly and imported from the JSONL log stays one."""
    digest = "ef" * 20
    rows = [{"time": BASE + t, "source": "service", "category": "demo", "name": "x.bin", "sha1": digest,
             "verdict": "REJECTED", "reason": "not an image", "model": "patchcore"} for t in (0.0, 60.0)]
    first, second = (history.record_line_record(r) for r in rows)
    assert first is not None and second is not None and first.new and second.new and first.id != second.id
    log = tmp_path / "line.jsonl"
    log.write_text("".join(_line(r) for r in rows))
    assert history.import_logs(tmp_path, log).rows == 0  # recorded directly already: each once
    assert [r.time for r in history.results(verdict="REJECTED", newest_first=False)] == [BASE, BASE + 60.0]
    judged = {**rows[0], "verdict": "OK", "score": 1.0, "version": 1, "time": BASE + 120}
    assert history.record_line_record(judged).new and history.record_line_record({**judged, "time": BASE + 180}).new
    assert not history.record_line_record(dict(judged)).new


def test_imported_logs_count_the_rows_made_not_the_rows_read(history: History, tmp_path: Path) -> None:
    records = [{"time": BASE + i, "source": "watch", "id": f"j-{i}", "category": "demo", "verdict": "OK",
                "model": "patchcore", "version": 1, "score": 1.0} for i in range(3)]
    history.record_line_record(records[0])  # written directly before the log is imported
    log = tmp_path / "line.jsonl"
    log.write_text("".join(_line(r) for r in records))
    assert history.import_logs(tmp_path, log) == hist.ImportReport(files=1, lines=3, rows=2)
    with history.engine.connect() as conn:
        assert conn.execute(sa.select(hist.imported_logs.c.rows)).scalar_one() == 2


def test_an_older_database_keeps_its_service_rows_once_after_the_upgrade(url: str, tmp_path: Path) -> None:
    """A row a version before 0002 wrote directly (keyed by its image hash alone) is not made a second time when
    the JSONL log is imported after the upgrade (0002 gives the old rows the new identity)."""
    from alembic import command

    engine = hist.make_engine(url)
    try:
        with engine.begin() as conn:
            config = hist.alembic_config()
            config.attributes["connection"] = conn
            command.upgrade(config, "0001")
            old_ref = "sha1:" + "ab" * 20
            conn.execute(sa.insert(hist.line_results).values(
                dedup=hist._digest(["service", old_ref, "demo", "patchcore", 1]), ref=old_ref, time=BASE + 0.25,
                host="old", source="service", category="demo", kind="patchcore", version=1, verdict="OK", score=1.0,
                image_sha1="ab" * 20, extra={}))
    finally:
        engine.dispose()
    record = {"time": BASE + 0.25, "source": "service", "category": "demo", "name": "a.png", "sha1": "ab" * 20,
              "verdict": "OK", "score": 1.0, "model": "patchcore", "version": 1}
    log = tmp_path / "line.jsonl"
    log.write_text(_line(record) + _line({**record, "time": BASE + 30}))
    with History(url) as upgraded:
        assert upgraded.import_logs(tmp_path, log).rows == 1  # only the later upload is new
        assert [r.time for r in upgraded.results(newest_first=False)] == [BASE + 0.25, BASE + 30]


def test_spot_checks_are_one_in_n_ok_verdicts_by_image_hash(history: History,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 24 gap 2: 1 in INSPECT_SPOT_CHECK OK verdicts (the first 8 hex digits of the image hash modulo N
    are 0: the same on every host and at every import) are spot checks, which the review queue lists too."""
    chosen, other = "00000004" + "a" * 32, "00000005" + "a" * 32  # 4 % 4 == 0, 5 % 4 == 1
    assert hist.spot_checked("OK", chosen, 4) and not hist.spot_checked("OK", other, 4)
    assert not hist.spot_checked("REVIEW", chosen, 4) and not hist.spot_checked("OK", chosen, 0)
    assert not hist.spot_checked("OK", None, 4) and not hist.spot_checked("OK", "not-hex", 4)
    monkeypatch.setenv(settings.SPOT_CHECK_ENV, "4")
    made = [history.record_line_record({"time": BASE + i, "source": "watch", "id": f"s-{i}", "sha1": sha,
                                        "category": "demo", "verdict": verdict, "model": "patchcore", "version": 1,
                                        "score": 1.0, "path": None if i == 3 else f"/line/{i}.png"})
            for i, (sha, verdict) in enumerate([(chosen, "OK"), (other, "OK"), (chosen, "REVIEW"), (chosen, "OK")])]
    ids = [m.id for m in made if m is not None]
    assert [r.spot_check for r in history.results(newest_first=False)] == [True, False, False, True]
    # the queue: REVIEW plus the spot check that kept its image (the one without a path cannot be looked at)
    assert [r.id for r in history.unreviewed(["REVIEW"], spot_checks=True)] == [ids[2], ids[0]]
    assert [r.id for r in history.unreviewed(["REVIEW"])] == [ids[2]]
    monkeypatch.setenv(settings.SPOT_CHECK_ENV, "0")
    none = history.record_result(time=BASE + 9, source="watch", category="demo", verdict="OK", image_sha1=chosen,
                                 journal_id="s-9")
    assert history.result(none.id).spot_check is False  # type: ignore[union-attr]


def test_archive_re_inspection_stays_out_of_the_drift_watch(history: History) -> None:
    """A batch re-inspection of an archive (source ``batch``) is not the live line: the drift watch's scores are
    the service's and the watch folder's only, however recent the archive's rows are."""
    result(history, t=BASE, score=1.0, source="watch", sha1="a")
    result(history, t=BASE + 1, score=1.5, source="service", sha1="b")
    result(history, t=BASE + 2, score=9.0, source=hist.BATCH_SOURCE, sha1="c")
    assert history.scores_of_version("demo", "patchcore", 1, ["OK"]) == [(BASE, 1.0), (BASE + 1, 1.5)]


def test_archive_re_inspection_stays_out_of_the_review_queue(history: History, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch rows are archive parts judged again, not the line's: no REVIEW of theirs and no spot check of theirs
    reaches the queue (each version re-judging an archive would queue the same parts again)."""
    monkeypatch.setenv("INSPECT_SPOT_CHECK", "1")  # every OK verdict of the line is a spot check
    line = result(history, t=BASE, verdict="REVIEW", source="service", sha1="a")
    archived = result(history, t=BASE + 1, verdict="REVIEW", source=hist.BATCH_SOURCE, sha1="b")
    result(history, t=BASE + 2, verdict="OK", source=hist.BATCH_SOURCE, sha1="c")
    assert [r.id for r in history.unreviewed(["REVIEW", "DEFECT"], spot_checks=True)] == [line.id]
    assert history.results(source=hist.BATCH_SOURCE, verdict="OK")[0].spot_check is False
    # asked for by name, the archive's own results are there to look at
    assert [r.id for r in history.unreviewed(["REVIEW"], source=hist.BATCH_SOURCE)] == [archived.id]


def test_a_claim_finished_meanwhile_is_not_withdrawn(history: History) -> None:
    """Settling an abandoned claim withdraws it only while its note still says it is being decided: a process that
    finished it between the query and the withdrawal keeps its decision and its audit row."""
    judged = result(history, verdict="REVIEW")
    claim = history.record_review(judged.id, "OK", "ana", note="deciding")
    history.set_review_note(claim.id, "marked OK: v1 -> v2")  # the deciding process finished
    assert history.withdraw_review(claim.id, if_note="deciding") is False
    assert [r.note for r in history.reviews(result_id=judged.id)] == ["marked OK: v1 -> v2"]
    assert history.withdraw_review(claim.id) is True and history.reviews(result_id=judged.id) == []
