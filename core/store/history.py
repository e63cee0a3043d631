"""The line's history in a database: judged images, reviews, drift alarms and feedback actions (SQLAlchemy 2.x,
migrations with Alembic).

Where: ``INSPECT_DATABASE_URL`` (:func:`core.settings.database_url`) when it names a PostgreSQL database (so several
hosts share one history; ``postgresql://`` is read as ``postgresql+psycopg://``), else one SQLite file in the model
store, ``<store>/.line/history.sqlite3`` (WAL, ``synchronous=FULL``: a committed row survives a power loss; busy
timeout 30 s; foreign keys on; WAL wants a local disk: a store on a network share wants PostgreSQL). Open it with
:meth:`History.open` (store-aware: migrates, imports the JSONL logs) or ``History(url)`` (migrates only).

Tables (see :data:`metadata`)::

    line_results   one row per image judged (or request refused) on the line: time, host, source (service,
                   watch), category, kind, version, verdict, raw score, threshold, name, image hash, stored path,
                   latency, reason, HTTP status of a refusal, extra fields as JSON
    reviews        a person's decision on a line result: who, when, OK or DEFECT (+ defect type), and what the
                   model said (the version that judged it, its verdict and score)
    drift_alarms   an alarm of the drift watch: rule, statistic, limit, message; resolved by whom and when; the
                   episode it belongs to (one alarm per category, kind, version and episode: ``dedup``)
    feedback       the feedback actions of the models' ``feedback.jsonl`` logs (Mark as OK, defect, undo)
    imported_logs  each JSONL file imported: bytes consumed and a hash of its head, so a second open imports nothing
                   and a grown file only its new lines

**Exactly once.** A result row's identity is (source, reference, category, kind, version), where the reference is
the watch folder's journal id, else ``sha1:<content hash>@<time>`` (the service: the same bytes sent again later
are another request it answered, so another row), else a hash of the record's own fields (a service row without
either): it is stored as the unique ``dedup`` column, and a write that finds it there inserts nothing and
answers the existing row's id (:class:`Recorded` ``new=False``). A retried write, or a line of the JSONL log imported
after the same result was recorded directly, never makes a second row. Feedback rows are keyed the same way by
their content.

**Migrations.** ``core/store/migrations/`` (``env.py`` + ``versions/``); every open upgrades the database to head
inside one write transaction (SQLite ``BEGIN IMMEDIATE``; PostgreSQL an advisory lock), so two processes opening a
new database at once migrate it once. No ``alembic.ini`` is needed. To add a revision after changing the tables::

    from alembic import command
    from core.store import history
    command.revision(history.alembic_config("sqlite:///scratch.sqlite3"), "what changed", autogenerate=True)

(upgrade ``scratch.sqlite3`` to the previous head first), then read and edit the file it writes.

Times are seconds since the epoch (UTC), as ``time.time()`` gives them; arguments accept a ``datetime`` too (a
naive one is local time, as Python reads it).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import math
import socket
import statistics
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import URL, Connection, Engine

from core import settings
from core.store.model_store import FEEDBACK

logger = logging.getLogger(__name__)
BATCH_SOURCE = "batch"  # an archive re-inspection (core.line.batch): not the live line, outside the drift watch

SQLITE_FILE = "history.sqlite3"
LINE_FOLDER = ".line"
LINE_LOG = "results.jsonl"
BUSY_TIMEOUT_MS = 30_000
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
HEAD_BYTES = 64 * 1024  # the head of an imported file that is hashed to notice a replaced file
IMPORT_BATCH = 2000  # lines per import transaction
DECISIONS = ("OK", "DEFECT")
DEFAULT_SHIFT_STARTS = (6, 14, 22)  # local hours at which the line's shifts begin
_MIGRATION_LOCK = 0x1A5E_C7ED  # PostgreSQL advisory lock key held while migrating
_WRITE = "history_write"  # execution option: this connection writes (SQLite: BEGIN IMMEDIATE)

Time = float | dt.datetime

# -- tables ------------------------------------------------------------------------------------------------------

metadata = sa.MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

line_results = sa.Table(
    "line_results", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dedup", sa.String(64), nullable=False, unique=True),
    sa.Column("ref", sa.String(200), nullable=False),
    sa.Column("time", sa.Double, nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("source", sa.String(40), nullable=False),
    sa.Column("category", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(60)),
    sa.Column("version", sa.Integer),
    sa.Column("verdict", sa.String(40), nullable=False),
    sa.Column("score", sa.Double),
    sa.Column("threshold", sa.Double),
    sa.Column("name", sa.Text),
    sa.Column("image_sha1", sa.String(64)),
    sa.Column("path", sa.Text),
    sa.Column("latency_ms", sa.Double),
    sa.Column("reason", sa.Text),
    sa.Column("status", sa.Integer),
    sa.Column("extra", sa.JSON),
    sa.Column("spot_check", sa.Boolean),  # an OK verdict a person also looks at (spot_checked)
    sa.Index(None, "time"),
    sa.Index(None, "category", "kind", "time"),
)

reviews = sa.Table(
    "reviews", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("result_id", sa.Integer, sa.ForeignKey("line_results.id"), nullable=False),
    sa.Column("time", sa.Double, nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("reviewer", sa.String(200), nullable=False),
    sa.Column("decision", sa.String(20), nullable=False),
    sa.Column("defect", sa.String(200)),
    sa.Column("note", sa.Text),
    sa.Column("category", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(60)),
    sa.Column("version", sa.Integer),
    sa.Column("model_verdict", sa.String(40), nullable=False),
    sa.Column("model_score", sa.Double),
    sa.Index(None, "result_id"),
    sa.Index(None, "category", "time"),
)

drift_alarms = sa.Table(
    "drift_alarms", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("time", sa.Double, nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("category", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(60), nullable=False),
    sa.Column("version", sa.Integer),
    sa.Column("rule", sa.String(60), nullable=False),
    sa.Column("statistic", sa.Double),
    sa.Column("limit", sa.Double),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("resolved_time", sa.Double),
    sa.Column("resolved_by", sa.String(200)),
    sa.Column("episode", sa.Integer),
    sa.Column("dedup", sa.String(64), unique=True),  # NULL: an alarm recorded without an episode (never deduplicated)
    sa.Index(None, "category", "kind", "time"),
)

feedback = sa.Table(
    "feedback", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dedup", sa.String(64), nullable=False, unique=True),
    sa.Column("time", sa.Double, nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("category", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(60), nullable=False),
    sa.Column("action", sa.String(40), nullable=False),
    sa.Column("image", sa.Text),
    sa.Column("image_sha1", sa.String(64)),
    sa.Column("defect", sa.String(200)),
    sa.Column("version_before", sa.Integer),
    sa.Column("version_after", sa.Integer),
    sa.Column("user", sa.String(200)),
    sa.Column("extra", sa.JSON),
    sa.Index(None, "category", "kind", "time"),
)

imported_logs = sa.Table(
    "imported_logs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("head_sha256", sa.String(64), nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("time", sa.Double, nullable=False),
    sa.UniqueConstraint("host", "path"),
)

# -- rows read back ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """A write's answer: the row's id, and whether this write made it (False: it was there already)."""

    id: int
    new: bool


@dataclass(frozen=True)
class ResultRow:
    """One judged image (or refused request) of the line. ``kind``/``version`` are None for a refusal that named
    none; ``score``/``threshold`` for a refusal; ``extra`` holds the record's other fields."""

    id: int
    time: float
    host: str
    source: str
    ref: str
    category: str
    kind: str | None
    version: int | None
    verdict: str
    score: float | None
    threshold: float | None
    name: str | None
    image_sha1: str | None
    path: str | None
    latency_ms: float | None
    reason: str | None
    status: int | None
    extra: dict[str, Any]
    spot_check: bool | None = None  # an OK verdict sent to the review queue too (spot_checked)


@dataclass(frozen=True)
class ReviewRow:
    """A person's decision on line result ``result_id``: who, when, OK or DEFECT (``defect``: the type), and what
    the model said then (``version`` judged it ``model_verdict`` with ``model_score``)."""

    id: int
    result_id: int
    time: float
    host: str
    reviewer: str
    decision: str
    defect: str | None
    note: str | None
    category: str
    kind: str | None
    version: int | None
    model_verdict: str
    model_score: float | None


@dataclass(frozen=True)
class AlarmRow:
    """A drift alarm: ``rule`` saw ``statistic`` beyond ``limit``; ``resolved_time`` is None while it is open.
    ``episode``: the run of scores it was raised on (:meth:`History.record_alarm_once`; None: not given)."""

    id: int
    time: float
    host: str
    category: str
    kind: str
    version: int | None
    rule: str
    statistic: float | None
    limit: float | None
    message: str
    resolved_time: float | None
    resolved_by: str | None
    episode: int | None = None


@dataclass(frozen=True)
class FeedbackRow:
    """A feedback action on a model (``action``: as ``core.verdict.feedback`` writes it); ``extra`` holds the
    entry's other fields (``undoes``, ``filed_as``, scores before and after, ...)."""

    id: int
    time: float
    host: str
    category: str
    kind: str
    action: str
    image: str | None
    image_sha1: str | None
    defect: str | None
    version_before: int | None
    version_after: int | None
    user: str | None
    extra: dict[str, Any]


@dataclass(frozen=True)
class TrendBucket:
    """The results of one hour or shift, ``start <= time < end`` (epoch s): rows per verdict (``counts``; every
    verdict seen in the bucket), ``total`` rows, and the median raw score of the rows that have one (None when
    none has)."""

    start: float
    end: float
    label: str
    counts: dict[str, int]
    total: int
    score_median: float | None

    def rate(self, verdict: str) -> float:
        """The share of this bucket's rows with ``verdict`` (0 in an empty bucket)."""
        return self.counts.get(verdict, 0) / self.total if self.total else 0.0


@dataclass(frozen=True)
class ImportReport:
    """What one import did: ``rows`` new rows from ``lines`` complete lines read in ``files`` files (lines that
    were there already or are not records make no row)."""

    files: int
    lines: int
    rows: int


# -- dialects ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dialect:
    """What differs per database: the INSERT that knows ON CONFLICT, and the lock held while migrating."""

    insert: Callable[[sa.Table], Any]
    migration_lock: Callable[[Connection], None]


def _no_lock(conn: Connection) -> None:
    """SQLite: the write transaction (BEGIN IMMEDIATE) is the lock already."""


def _pg_lock(conn: Connection) -> None:
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})


DIALECTS: dict[str, _Dialect] = {
    "sqlite": _Dialect(sqlite_dialect.insert, _no_lock),
    "postgresql": _Dialect(pg_dialect.insert, _pg_lock),
}
_DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}  # a bare scheme gets psycopg 3


def normalise_url(url: str | URL) -> URL:
    """``url`` as SQLAlchemy reads it, a bare ``postgresql://`` with the psycopg 3 driver.

    Raises:
        ValueError: not a database URL, or a database other than SQLite and PostgreSQL.
    """
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise ValueError(f"expected a database URL such as sqlite:///path or postgresql://host/db, found "
                         f"{str(url)!r}") from None
    parsed = parsed.set(drivername=_DRIVERS.get(parsed.drivername, parsed.drivername))
    if parsed.get_backend_name() not in DIALECTS:
        raise ValueError(f"expected a {' or '.join(DIALECTS)} database URL, found "
                         f"{parsed.render_as_string(hide_password=True)!r}")
    return parsed


def store_url(store_root: Path) -> URL:
    """The history of the model store at ``store_root``: ``INSPECT_DATABASE_URL``, else its SQLite file."""
    named = settings.database_url()
    if named:
        return normalise_url(named)
    return normalise_url(f"sqlite:///{Path(store_root).resolve() / LINE_FOLDER / SQLITE_FILE}")


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # transactions are begun by _sqlite_begin, not by the driver
    cursor = dbapi_connection.cursor()
    for pragma in (f"busy_timeout = {BUSY_TIMEOUT_MS}", "journal_mode = WAL", "synchronous = FULL",
                   "foreign_keys = ON"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    """A writer takes the write lock when it begins (waiting up to the busy timeout), so it never fails on
    upgrading a read snapshot that another writer made stale."""
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")


def make_engine(url: str | URL) -> Engine:
    """An engine for ``url`` with this module's settings (SQLite: WAL, FULL sync, busy timeout, foreign keys;
    the file's folder is created)."""
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed)
        sa.event.listen(engine, "connect", _sqlite_connect)
        sa.event.listen(engine, "begin", _sqlite_begin)
        return engine
    return sa.create_engine(parsed, pool_pre_ping=True)


def alembic_config(url: str | URL | None = None) -> Any:
    """An Alembic ``Config`` for ``core/store/migrations`` built in code (no ini file); ``url`` for commands
    that connect themselves (``revision --autogenerate``), else pass a connection in ``attributes``."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        config.set_main_option("sqlalchemy.url", normalise_url(url).render_as_string(hide_password=False)
                               .replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest revision in ``core/store/migrations/versions``."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"expected a revision in {MIGRATIONS / 'versions'}, found none")
    return head


def current_revision(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


# -- helpers -----------------------------------------------------------------------------------------------------


def _epoch(value: Time) -> float:
    return value.timestamp() if isinstance(value, dt.datetime) else float(value)


def _digest(parts: Sequence[Any]) -> str:
    return hashlib.sha256(json.dumps(list(parts), sort_keys=True, default=str).encode()).hexdigest()


def _int_or_none(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float_or_none(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def fit_columns(table: sa.Table, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with every text longer than its column clipped to the column's length (ending in "…"), so a
    crafted name (a 5,000-character ``?model=``) is stored cut instead of failing the write: PostgreSQL enforces
    VARCHAR lengths (SQLite does not), and one failing row would fail every import batch after it."""
    out = dict(values)
    for key, value in values.items():
        length = getattr(table.c[key].type, "length", None) if key in table.c else None
        if isinstance(value, str) and length is not None and len(value) > length:
            out[key] = value[: length - 1] + "…"
    return out


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def result_ref(journal_id: str | None, image_sha1: str | None, fields: Mapping[str, Any]) -> str:
    """A result's reference: the journal id, else ``sha1:<hash>@<time>`` (``fields["time"]``, epoch s, as
    ``repr`` writes it: the same bytes judged at two times are two results), else ``row:<hash of fields>`` (the
    same for the same record, so a line imported after it was recorded directly is known)."""
    if journal_id:
        return str(journal_id)
    if image_sha1:
        return sha1_ref(image_sha1, float(fields["time"]))
    return "row:" + _digest([[k, fields[k]] for k in sorted(fields)])[:40]


def spot_checked(verdict: str, image_sha1: str | None, every: int) -> bool:
    """Whether an image judged ``verdict`` is a spot check: an OK verdict whose content hash falls in the 1 in
    ``every`` share (the first 8 hex digits modulo ``every`` are 0: the same image is always chosen or never, on
    every host; ``every`` 0: none). A person looks at spot checks too, so the goods confirmed from them are an
    unbiased sample of the line's OK parts (the REVIEW and DEFECT ones are the high-scoring ones)."""
    if verdict != "OK" or not image_sha1 or every <= 0:
        return False
    try:
        return int(image_sha1[:8], 16) % every == 0
    except ValueError:
        return False


def sha1_ref(image_sha1: str, when: float) -> str:
    """The reference of a result known by its image hash and time (migration 0002 gives older rows this form)."""
    return f"sha1:{image_sha1}@{float(when)!r}"


def _result_dedup(source: str, ref: str, category: str, kind: str | None, version: int | None) -> str:
    return _digest([source, ref, category, kind, version])


def _conditions(pairs: Sequence[tuple[sa.ColumnElement[Any], Any]]) -> list[sa.ColumnElement[bool]]:
    """``column == value`` for every pair whose value is not None."""
    return [column == value for column, value in pairs if value is not None]


def _time_window(column: sa.ColumnElement[Any], since: Time | None, until: Time | None) -> list[sa.ColumnElement[bool]]:
    """``since <= time < until`` (either end open when None)."""
    out = []
    if since is not None:
        out.append(column >= _epoch(since))
    if until is not None:
        out.append(column < _epoch(until))
    return out


# -- the history ---------------------------------------------------------------------------------------------------


class AlreadyReviewed(ValueError):
    """A decision was to be the first on a line result that has one: ``earlier`` (who, when, what)."""

    def __init__(self, earlier: ReviewRow) -> None:
        super().__init__(f"expected a result nobody reviewed, found {earlier.reviewer}'s {earlier.decision} of "
                         f"{dt.datetime.fromtimestamp(earlier.time):%Y-%m-%d %H:%M:%S} (review {earlier.id})")
        self.earlier = earlier


class History:
    """The line's history in the database at ``url``, migrated to head when opened.

    Thread-safe (the engine pools connections); several processes and hosts may write at once.
    """

    def __init__(self, url: str | URL, host: str | None = None) -> None:
        self.url = normalise_url(url)
        self.host = host or socket.gethostname()
        self.engine = make_engine(self.url)
        self._writer = self.engine.execution_options(**{_WRITE: True})
        self._dialect = DIALECTS[self.url.get_backend_name()]
        try:
            self.migrate()
        except BaseException:
            self.engine.dispose()
            raise

    @classmethod
    def open(cls, store_root: Path, line_log: Path | None = None, host: str | None = None) -> History:
        """The history of the model store at ``store_root`` (:func:`store_url`), with the store's JSONL logs
        imported: ``line_log`` (default ``<store>/.line/results.jsonl``; the line layer passes
        ``results_log.default_path``) and every ``<store>/<category>/<kind>/feedback.jsonl``. Only what was not
        imported before is read."""
        history = cls(store_url(store_root), host)
        try:
            report = history.import_logs(Path(store_root), line_log)
        except BaseException:
            history.close()
            raise
        if report.rows:
            logger.info("history %s: %d rows imported from %d JSONL files", history.label, report.rows,
                        report.files)
        return history

    @property
    def label(self) -> str:
        """The URL without its password, for messages."""
        return self.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction (committed on leaving, rolled back on an exception)."""
        with self._writer.begin() as conn:
            yield conn

    def migrate(self) -> None:
        """Upgrade the database to head, under the migration lock (nothing done when it is at head)."""
        from alembic import command

        head = head_revision()
        with self.engine.connect() as conn:
            if current_revision(conn) == head:
                return
        with self._write() as conn:
            self._dialect.migration_lock(conn)
            before = current_revision(conn)
            if before == head:
                return  # another process migrated it while this one waited
            config = alembic_config()
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
        logger.info("history %s migrated from %s to %s", self.label, before or "empty", head)

    def _insert_once(self, conn: Connection, table: sa.Table, values: Mapping[str, Any]) -> Recorded:
        """Insert ``values`` unless a row with the same ``dedup`` is there; answers that row's id."""
        values = fit_columns(table, values)
        statement = (self._dialect.insert(table).values(**values)
                     .on_conflict_do_nothing(index_elements=["dedup"]).returning(table.c.id))
        new_id = conn.execute(statement).scalar()
        if new_id is not None:
            return Recorded(int(new_id), True)
        existing = conn.execute(sa.select(table.c.id).where(table.c.dedup == values["dedup"])).scalar_one()
        return Recorded(int(existing), False)

    def _insert_many(self, conn: Connection, table: sa.Table, values: list[dict[str, Any]]) -> int:
        """Insert the rows of ``values`` whose ``dedup`` is not there yet (one statement); returns how many."""
        statement = (self._dialect.insert(table).on_conflict_do_nothing(index_elements=["dedup"])
                     .returning(table.c.id))
        return len(conn.execute(statement, [fit_columns(table, v) for v in values]).all())

    # -- line results -------------------------------------------------------------------------------------------

    def record_result(self, *, time: Time, source: str, category: str, verdict: str, kind: str | None = None,
                      version: int | None = None, score: float | None = None, threshold: float | None = None,
                      name: str | None = None, image_sha1: str | None = None, journal_id: str | None = None,
                      path: str | None = None, latency_ms: float | None = None, reason: str | None = None,
                      status: int | None = None, extra: Mapping[str, Any] | None = None) -> Recorded:
        """Record one judged image once (see the module docstring: the same (source, journal id or image hash,
        category, kind, version) a second time inserts nothing and answers ``new=False``)."""
        when = _epoch(time)
        ref = result_ref(journal_id, image_sha1, {"time": when, "source": source, "category": category,
                                                  "model": kind, "version": version, "verdict": verdict,
                                                  "score": score, "name": name})
        values = {"dedup": _result_dedup(source, ref, category, kind, version), "ref": ref, "time": when,
                  "host": self.host, "source": source, "category": category, "kind": kind, "version": version,
                  "verdict": verdict, "score": _float_or_none(score), "threshold": _float_or_none(threshold),
                  "name": name, "image_sha1": image_sha1, "path": path, "latency_ms": _float_or_none(latency_ms),
                  "reason": reason, "status": status, "extra": dict(extra or {}),
                  "spot_check": source != BATCH_SOURCE and spot_checked(verdict, image_sha1,
                                                                        settings.spot_check_every())}
        with self._write() as conn:
            return self._insert_once(conn, line_results, values)

    def record_line_record(self, record: Mapping[str, Any]) -> Recorded | None:
        """Record a row as ``core.line.results_log`` writes it (the service's and the watch folder's fields:
        ``time, source, id, name, sha1, category, model, version, verdict, score, threshold, latency_ms, reason,
        path, status``; any other field goes to ``extra``). None (nothing written) when it has no time, category
        or verdict."""
        values = self._line_values(record)
        if values is None:
            return None
        with self._write() as conn:
            return self._insert_once(conn, line_results, values)

    def _line_values(self, record: Mapping[str, Any]) -> dict[str, Any] | None:
        when = _float_or_none(record.get("time"))
        category, verdict = record.get("category"), record.get("verdict")
        if when is None or not category or not verdict:
            return None
        source = str(record.get("source") or "unknown")
        kind = _str_or_none(record.get("model"))
        version = _int_or_none(record.get("version"))
        known = {"time", "source", "id", "name", "sha1", "category", "model", "version", "verdict", "score",
                 "threshold", "latency_ms", "reason", "path", "status"}
        ref = result_ref(_str_or_none(record.get("id")), _str_or_none(record.get("sha1")),
                         {"time": when, "source": source, "category": str(category), "model": kind,
                          "version": version, "verdict": str(verdict), "score": _float_or_none(record.get("score")),
                          "name": _str_or_none(record.get("name"))})
        return {"dedup": _result_dedup(source, ref, str(category), kind, version), "ref": ref, "time": when,
                "host": self.host, "source": source, "category": str(category), "kind": kind, "version": version,
                "verdict": str(verdict), "score": _float_or_none(record.get("score")),
                "threshold": _float_or_none(record.get("threshold")), "name": _str_or_none(record.get("name")),
                "image_sha1": _str_or_none(record.get("sha1")), "path": _str_or_none(record.get("path")),
                "latency_ms": _float_or_none(record.get("latency_ms")), "reason": _str_or_none(record.get("reason")),
                "status": _int_or_none(record.get("status")),
                "extra": {k: v for k, v in record.items() if k not in known},
                "spot_check": source != BATCH_SOURCE and spot_checked(str(verdict), _str_or_none(record.get("sha1")),
                                                                      settings.spot_check_every())}

    def results(self, *, category: str | None = None, kind: str | None = None, version: int | None = None,
                verdict: str | Sequence[str] | None = None, source: str | None = None, since: Time | None = None,
                until: Time | None = None, limit: int | None = 1000, newest_first: bool = True) -> list[ResultRow]:
        """Line results matching every filter given (``since <= time < until``; ``verdict``: one or several),
        newest first unless asked, at most ``limit`` (None: all)."""
        t = line_results
        where = _conditions([(t.c.category, category), (t.c.kind, kind), (t.c.version, version),
                             (t.c.source, source)]) + _time_window(t.c.time, since, until)
        if verdict is not None:
            where.append(t.c.verdict.in_([verdict] if isinstance(verdict, str) else list(verdict)))
        order = (t.c.time.desc(), t.c.id.desc()) if newest_first else (t.c.time, t.c.id)
        query = sa.select(t).where(*where).order_by(*order).limit(limit)
        with self.engine.connect() as conn:
            return [ResultRow(**_fields(r)) for r in conn.execute(query).mappings()]

    def record_line_records(self, records: Sequence[Mapping[str, Any]]) -> int:
        """Record many rows as :meth:`record_line_record` reads them, in one transaction, each once (by its
        ``dedup`` key); records without a time, category or verdict are skipped. Returns how many rows were new
        (the batch re-inspection's write: a chunk of verdicts is in the database entirely or not at all)."""
        values = [v for v in (self._line_values(r) for r in records) if v is not None]
        if not values:
            return 0
        with self._write() as conn:
            return self._insert_many(conn, line_results, values)

    def verdicts_by_hash(self, category: str, kind: str, version: int, sha1s: Sequence[str],
                         source: str | None = None) -> dict[str, str]:
        """``{image sha1: verdict}`` for the images among ``sha1s`` that ``version`` of ``category``/``kind`` judged
        (of ``source`` when given; where several rows judged one image, the newest), 500 hashes per query."""
        t = line_results
        found: dict[str, str] = {}
        wanted = list(dict.fromkeys(sha1s))
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), 500):
                where = [t.c.category == category, t.c.kind == kind, t.c.version == version,
                         t.c.image_sha1.in_(wanted[start:start + 500]),
                         *_conditions([(t.c.source, source)])]
                query = sa.select(t.c.image_sha1, t.c.verdict).where(*where).order_by(t.c.time, t.c.id)
                found.update({str(sha1): str(verdict) for sha1, verdict in conn.execute(query)})
        return found

    def result(self, result_id: int) -> ResultRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(line_results).where(line_results.c.id == result_id)).mappings().first()
        return None if row is None else ResultRow(**_fields(row))

    def trends(self, bucket: Literal["hour", "shift"] = "hour", *, category: str | None = None,
               kind: str | None = None, version: int | None = None, source: str | None = None,
               since: Time | None = None, until: Time | None = None, tz: dt.tzinfo | None = None,
               shift_starts: Sequence[int] = DEFAULT_SHIFT_STARTS,
               exclude_verdicts: Sequence[str] = ("REJECTED",)) -> list[TrendBucket]:
        """Counts per verdict and the median raw score per local hour or shift (shifts begin at the local hours
        ``shift_starts``; ``tz`` None: this machine's zone), oldest first, buckets with rows only. Rows with a
        verdict in ``exclude_verdicts`` (refused requests by default) are left out."""
        bucket_of = _BUCKETS.get(bucket)
        if bucket_of is None:
            raise ValueError(f"expected a bucket of {' or '.join(_BUCKETS)}, found {bucket!r}")
        starts = sorted({int(h) for h in shift_starts})
        if not starts or any(not 0 <= h < 24 for h in starts):
            raise ValueError(f"expected shift start hours in 0..23, found {list(shift_starts)}")
        t = line_results
        where = _conditions([(t.c.category, category), (t.c.kind, kind), (t.c.version, version),
                             (t.c.source, source)]) + _time_window(t.c.time, since, until)
        if exclude_verdicts:
            where.append(t.c.verdict.not_in(list(exclude_verdicts)))
        query = sa.select(t.c.time, t.c.verdict, t.c.score).where(*where).order_by(t.c.time)
        groups: dict[float, tuple[float, str, dict[str, int], list[float], list[int]]] = {}
        with self.engine.connect() as conn:
            for when, verdict, score in conn.execute(query):
                start, end, label = bucket_of(float(when), tz, starts)
                group = groups.setdefault(start, (end, label, {}, [], [0]))
                group[2][verdict] = group[2].get(verdict, 0) + 1
                group[4][0] += 1
                if score is not None:
                    group[3].append(float(score))
        return [TrendBucket(start, end, label, counts, total[0], statistics.median(scores) if scores else None)
                for start, (end, label, counts, scores, total) in sorted(groups.items())]

    # -- reviews ----------------------------------------------------------------------------------------------

    def record_review(self, result_id: int, decision: str, reviewer: str, *, defect: str | None = None,
                      note: str | None = None, time: Time | None = None, first: bool = False) -> ReviewRow:
        """A person's decision (``OK`` or ``DEFECT``, with the defect type) on line result ``result_id``; what the
        model said (version, verdict, score) is copied from the result, so the audit row stands alone. ``first``:
        only if nobody decided on the result yet, checked and written in one transaction with the result's row
        locked (SQLite: one writer at a time; PostgreSQL: ``FOR UPDATE``), so two reviewers answering the same
        part at once make one decision, and the other gets :class:`AlreadyReviewed`.

        Raises:
            AlreadyReviewed: ``first`` and the result has a decision already (the error carries it).
            ValueError: an unknown decision, a defect type with OK, an empty reviewer, or no such result.
        """
        if decision not in DECISIONS:
            raise ValueError(f"expected a decision of {' or '.join(DECISIONS)}, found {decision!r}")
        if decision == "OK" and defect:
            raise ValueError(f"expected no defect type with an OK decision, found {defect!r}")
        if not reviewer.strip():
            raise ValueError("expected the reviewer's name, found an empty one")
        when = _epoch(time) if time is not None else dt.datetime.now(dt.UTC).timestamp()
        with self._write() as conn:
            judged = conn.execute(sa.select(line_results).where(line_results.c.id == result_id)
                                  .with_for_update()).mappings().first()
            if judged is None:
                raise ValueError(f"expected the id of a recorded line result, found {result_id}: no such result")
            if first:
                earlier = conn.execute(sa.select(reviews).where(reviews.c.result_id == result_id)
                                       .order_by(reviews.c.time.desc(), reviews.c.id.desc()).limit(1)).mappings().first()
                if earlier is not None:
                    raise AlreadyReviewed(ReviewRow(**_fields(earlier)))
            values: dict[str, Any] = {
                "result_id": result_id, "time": when, "host": self.host, "reviewer": reviewer, "decision": decision,
                "defect": defect, "note": note, "category": judged["category"], "kind": judged["kind"],
                "version": judged["version"], "model_verdict": judged["verdict"], "model_score": judged["score"]}
            new_id = conn.execute(sa.insert(reviews).values(**fit_columns(reviews, values))
                                  .returning(reviews.c.id)).scalar_one()
        return ReviewRow(id=int(new_id), **values)

    def unreviewed(self, verdicts: Sequence[str], *, category: str | None = None, kind: str | None = None,
                   source: str | None = None, since: Time | None = None, until: Time | None = None,
                   skip: Sequence[int] = (), limit: int | None = 1000,
                   spot_checks: bool = False) -> list[ResultRow]:
        """Line results with a verdict in ``verdicts`` (``spot_checks``: or a spot check that kept its image) and
        no review yet, newest first (time, then id), at most ``limit`` (None: all), filtered by every argument
        given (``skip``: ids left out). An archive's :data:`BATCH_SOURCE` results are left out unless
        ``source`` names it: they are not the line's parts, and each version re-judging an archive would queue
        them again."""
        t, r = line_results, reviews
        wanted: sa.ColumnElement[bool] = t.c.verdict.in_(list(verdicts))
        if spot_checks:
            wanted = sa.or_(wanted, sa.and_(t.c.spot_check.is_(True), t.c.path.is_not(None)))
        where = [wanted, ~sa.exists().where(r.c.result_id == t.c.id),
                 *_conditions([(t.c.category, category), (t.c.kind, kind), (t.c.source, source)]),
                 *_time_window(t.c.time, since, until)]
        if source is None:
            where.append(t.c.source != BATCH_SOURCE)
        if skip:
            where.append(t.c.id.not_in(list(skip)))
        query = sa.select(t).where(*where).order_by(t.c.time.desc(), t.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [ResultRow(**_fields(m)) for m in conn.execute(query).mappings()]

    def latest_decisions(self, category: str, kind: str) -> Iterator[tuple[ResultRow, ReviewRow]]:
        """(result, its latest review) of every reviewed line result of ``category``/``kind`` that kept an image
        (``path``), newest decision first; an older decision on a result decided again since is left out."""
        t, r = line_results, reviews
        query = (sa.select(t, *[c.label(f"review_{c.name}") for c in r.c])
                 .join(r, r.c.result_id == t.c.id)
                 .where(t.c.category == category, t.c.kind == kind, t.c.path.is_not(None))
                 .order_by(r.c.time.desc(), r.c.id.desc()))
        decided: set[int] = set()
        with self.engine.connect() as conn:
            for mapping in conn.execute(query).mappings():
                row = dict(mapping)
                review = ReviewRow(**{c.name: row.pop(f"review_{c.name}") for c in r.c})
                if review.result_id in decided:
                    continue
                decided.add(review.result_id)
                yield ResultRow(**_fields(row)), review

    def scores_of_version(self, category: str, kind: str, version: int, verdicts: Sequence[str],
                          since: float | None = None, capped: Sequence[str] = ()) -> list[tuple[float, float]]:
        """(time, raw score) of the finite-scored results ``version`` judged with a verdict in ``verdicts`` at or
        after ``since``, oldest first (a light query: two columns), from the line only (an archive's
        :data:`BATCH_SOURCE` rows are not the line's recent parts). A result with a verdict in ``capped`` reads
        at most its row's threshold (the drift watch's DEFECT rule)."""
        t = line_results
        where = [t.c.category == category, t.c.kind == kind, t.c.version == version, t.c.verdict.in_(list(verdicts)),
                 t.c.score.is_not(None), t.c.source != BATCH_SOURCE, *_time_window(t.c.time, since, None)]
        score: sa.ColumnElement[Any] = t.c.score
        if capped:
            score = sa.case((sa.and_(t.c.verdict.in_(list(capped)), t.c.threshold.is_not(None),
                                     t.c.threshold < t.c.score), t.c.threshold), else_=t.c.score)
        query = sa.select(t.c.time, score).where(*where).order_by(t.c.time, t.c.id)
        with self.engine.connect() as conn:
            return [(float(when), float(score)) for when, score in conn.execute(query) if math.isfinite(score)]

    def set_review_note(self, review_id: int, note: str) -> None:
        """Replace the note of review ``review_id`` (what the decision did, written once it is done)."""
        with self._write() as conn:
            conn.execute(sa.update(reviews).where(reviews.c.id == review_id).values(note=note))

    def withdraw_review(self, review_id: int, *, if_note: str | None = None) -> bool:
        """Remove review ``review_id``: a decision recorded first whose action then failed (nothing was done);
        with ``if_note``, only while its note is still that (a claim its process finished meanwhile stays).
        Returns whether a row was removed."""
        where = [reviews.c.id == review_id, *([] if if_note is None else [reviews.c.note == if_note])]
        with self._write() as conn:
            return bool(conn.execute(sa.delete(reviews).where(*where)).rowcount)

    def reviews(self, *, category: str | None = None, kind: str | None = None, version: int | None = None,
                reviewer: str | None = None, decision: str | None = None, result_id: int | None = None,
                since: Time | None = None, until: Time | None = None, limit: int | None = 1000,
                newest_first: bool = True, note: str | None = None) -> list[ReviewRow]:
        """Review decisions matching every filter given (``note``: exactly), newest first unless asked."""
        t = reviews
        where = _conditions([(t.c.category, category), (t.c.kind, kind), (t.c.version, version),
                             (t.c.reviewer, reviewer), (t.c.decision, decision), (t.c.result_id, result_id),
                             (t.c.note, note)])
        order = (t.c.time.desc(), t.c.id.desc()) if newest_first else (t.c.time, t.c.id)
        query = sa.select(t).where(*where, *_time_window(t.c.time, since, until)).order_by(*order).limit(limit)
        with self.engine.connect() as conn:
            return [ReviewRow(**_fields(r)) for r in conn.execute(query).mappings()]

    # -- drift alarms -------------------------------------------------------------------------------------------

    def record_alarm(self, *, category: str, kind: str, rule: str, message: str, version: int | None = None,
                     statistic: float | None = None, limit: float | None = None,
                     time: Time | None = None) -> AlarmRow:
        """A drift alarm: ``rule`` (e.g. ``"cusum"``) saw ``statistic`` beyond ``limit`` (always a new row; the
        drift watch records through :meth:`record_alarm_once`)."""
        values = self._alarm_values(category, kind, rule, message, version, statistic, limit, time, None)
        with self._write() as conn:
            new_id = conn.execute(sa.insert(drift_alarms).values(**fit_columns(drift_alarms, values))
                                  .returning(drift_alarms.c.id)).scalar_one()
        return AlarmRow(id=int(new_id), **_fields(values))

    def record_alarm_once(self, *, category: str, kind: str, version: int, episode: int, rule: str, message: str,
                          statistic: float | None = None, limit: float | None = None,
                          time: Time | None = None) -> tuple[AlarmRow, bool]:
        """The alarm of ``episode`` (a run of scores of the version: the drift watch passes the id of the alarm
        whose resolution began the run, 0 for the version's first run), recorded unless that episode has one:
        the database's unique ``dedup`` decides, so two processes or hosts alarming at once record one row.
        Returns (the episode's alarm, whether this call recorded it); the alarm may be resolved already."""
        values = self._alarm_values(category, kind, rule, message, version, statistic, limit, time, episode)
        with self._write() as conn:
            made = self._insert_once(conn, drift_alarms, values)
            row = conn.execute(sa.select(drift_alarms).where(drift_alarms.c.id == made.id)).mappings().one()
        return AlarmRow(**_fields(row)), made.new

    def _alarm_values(self, category: str, kind: str, rule: str, message: str, version: int | None,
                      statistic: float | None, limit: float | None, time: Time | None,
                      episode: int | None) -> dict[str, Any]:
        when = _epoch(time) if time is not None else dt.datetime.now(dt.UTC).timestamp()
        return {"time": when, "host": self.host, "category": category, "kind": kind, "version": version,
                "rule": rule, "statistic": _float_or_none(statistic), "limit": _float_or_none(limit),
                "message": message, "resolved_time": None, "resolved_by": None, "episode": episode,
                "dedup": None if episode is None else _digest(["alarm", category, kind, version, int(episode)])}

    def resolve_alarm(self, alarm_id: int, by: str, time: Time | None = None) -> AlarmRow:
        """Mark alarm ``alarm_id`` resolved (a second call keeps the first resolution).

        Raises:
            ValueError: no such alarm.
        """
        when = _epoch(time) if time is not None else dt.datetime.now(dt.UTC).timestamp()
        t = drift_alarms
        with self._write() as conn:
            conn.execute(sa.update(t).where(t.c.id == alarm_id, t.c.resolved_time.is_(None))
                         .values(resolved_time=when, resolved_by=by))
            row = conn.execute(sa.select(t).where(t.c.id == alarm_id)).mappings().first()
        if row is None:
            raise ValueError(f"expected the id of a recorded alarm, found {alarm_id}: no such alarm")
        return AlarmRow(**_fields(row))

    def alarms(self, *, category: str | None = None, kind: str | None = None, version: int | None = None,
               open_only: bool = False, since: Time | None = None, until: Time | None = None,
               limit: int | None = 1000) -> list[AlarmRow]:
        """Drift alarms matching every filter given (``open_only``: not resolved), newest first."""
        t = drift_alarms
        where = _conditions([(t.c.category, category), (t.c.kind, kind), (t.c.version, version)])
        if open_only:
            where.append(t.c.resolved_time.is_(None))
        query = (sa.select(t).where(*where, *_time_window(t.c.time, since, until))
                 .order_by(t.c.time.desc(), t.c.id.desc()).limit(limit))
        with self.engine.connect() as conn:
            return [AlarmRow(**_fields(r)) for r in conn.execute(query).mappings()]

    # -- feedback ---------------------------------------------------------------------------------------------

    def record_feedback(self, category: str, kind: str, entry: Mapping[str, Any]) -> Recorded | None:
        """Record a feedback-log entry as ``core.verdict.feedback`` writes it (``time`` ISO or epoch, ``action``,
        ``image``, ``sha1``, ``defect``, ``version_before``, ``version_after``, ``user``; others go to ``extra``),
        once per content. None (nothing written) when it has no readable time or no action."""
        values = self._feedback_values(category, kind, entry)
        if values is None:
            return None
        with self._write() as conn:
            return self._insert_once(conn, feedback, values)

    def _feedback_values(self, category: str, kind: str, entry: Mapping[str, Any]) -> dict[str, Any] | None:
        raw_time, action = entry.get("time"), entry.get("action")
        when: float | None
        if isinstance(raw_time, str):
            try:
                when = dt.datetime.fromisoformat(raw_time).timestamp()
            except ValueError:
                when = None
        else:
            when = _float_or_none(raw_time)
        if when is None or not action:
            return None
        known = {"time", "action", "image", "sha1", "defect", "version_before", "version_after", "user"}
        return {"dedup": _digest([category, kind, dict(entry)]), "time": when, "host": self.host,
                "category": category, "kind": kind, "action": str(action), "image": _str_or_none(entry.get("image")),
                "image_sha1": _str_or_none(entry.get("sha1")), "defect": _str_or_none(entry.get("defect")),
                "version_before": _int_or_none(entry.get("version_before")),
                "version_after": _int_or_none(entry.get("version_after")), "user": _str_or_none(entry.get("user")),
                "extra": {k: v for k, v in entry.items() if k not in known}}

    def feedback(self, *, category: str | None = None, kind: str | None = None, action: str | None = None,
                 since: Time | None = None, until: Time | None = None, limit: int | None = 1000,
                 newest_first: bool = True) -> list[FeedbackRow]:
        """Feedback actions matching every filter given, newest first unless asked."""
        t = feedback
        where = _conditions([(t.c.category, category), (t.c.kind, kind), (t.c.action, action)])
        order = (t.c.time.desc(), t.c.id.desc()) if newest_first else (t.c.time, t.c.id)
        query = sa.select(t).where(*where, *_time_window(t.c.time, since, until)).order_by(*order).limit(limit)
        with self.engine.connect() as conn:
            return [FeedbackRow(**_fields(r))
                    for r in conn.execute(query).mappings()]

    # -- importing the JSONL logs ---------------------------------------------------------------------------------

    def import_logs(self, store_root: Path, line_log: Path | None = None) -> ImportReport:
        """Import what is new in the store's line log (``line_log``, default ``<store>/.line/results.jsonl``) and
        in every ``<store>/<category>/<kind>/feedback.jsonl`` (hidden folders skipped)."""
        root = Path(store_root)
        jobs: list[tuple[Path, Callable[[Mapping[str, Any]], tuple[sa.Table, dict[str, Any]] | None]]] = [
            (Path(line_log) if line_log is not None else root / LINE_FOLDER / LINE_LOG, self._line_job)]
        for path in sorted(root.glob(f"*/*/{FEEDBACK}")):
            category, kind = path.parent.parent.name, path.parent.name
            if category.startswith(".") or kind.startswith("."):
                continue
            jobs.append((path, self._feedback_job(category, kind)))
        files = lines = rows = 0
        for path, parse in jobs:
            if path.is_file():
                read, made = self.import_file(path, parse)
                files, lines, rows = files + 1, lines + read, rows + made
        return ImportReport(files, lines, rows)

    def _line_job(self, record: Mapping[str, Any]) -> tuple[sa.Table, dict[str, Any]] | None:
        values = self._line_values(record)
        return None if values is None else (line_results, values)

    def _feedback_job(self, category: str, kind: str) -> Callable[[Mapping[str, Any]],
                                                                   tuple[sa.Table, dict[str, Any]] | None]:
        def parse(entry: Mapping[str, Any]) -> tuple[sa.Table, dict[str, Any]] | None:
            values = self._feedback_values(category, kind, entry)
            return None if values is None else (feedback, values)

        return parse

    def import_file(self, path: Path,
                    parse: Callable[[Mapping[str, Any]], tuple[sa.Table, dict[str, Any]] | None]) -> tuple[int, int]:
        """Import the complete lines of JSONL file ``path`` not imported before, ``IMPORT_BATCH`` lines per
        transaction, each with the new position in ``imported_logs``. A file that shrank or whose head changed
        was replaced: it is read again from its start (rows there already are not made twice). A last line
        without its newline (being written, or cut by a crash) waits for the next import. Returns (complete lines
        read, rows made)."""
        key = str(Path(path).resolve())
        t = imported_logs
        lines = made = 0
        while True:
            with self._write() as conn:
                conn.execute(self._dialect.insert(t).values(host=self.host, path=key, size=0,
                                                            head_sha256=_head_hash(path, 0), rows=0,
                                                            time=dt.datetime.now(dt.UTC).timestamp())
                             .on_conflict_do_nothing(index_elements=["host", "path"]))
                seen = conn.execute(sa.select(t.c.size, t.c.head_sha256, t.c.rows)
                                    .where(t.c.host == self.host, t.c.path == key).with_for_update()).one()
                offset, total = int(seen.size), int(seen.rows)
                if Path(path).stat().st_size < offset or _head_hash(path, offset) != seen.head_sha256:
                    logger.warning("%s was replaced since it was imported (%d bytes then): importing it again",
                                   path, offset)
                    offset, total = 0, 0
                batch, end = _read_lines(path, offset, IMPORT_BATCH)
                if end == offset:
                    if offset != seen.size:
                        conn.execute(sa.update(t).where(t.c.host == self.host, t.c.path == key)
                                     .values(size=offset, head_sha256=_head_hash(path, offset)))
                    return lines, made
                per_table: dict[str, tuple[sa.Table, list[dict[str, Any]]]] = {}
                for record in batch:
                    job = parse(record)
                    if job is not None:
                        per_table.setdefault(job[0].name, (job[0], []))[1].append(job[1])
                for table, values in per_table.values():
                    inserted = self._insert_many(conn, table, values)
                    made, total = made + inserted, total + inserted  # rows made from the file, not rows read
                lines += len(batch)
                conn.execute(sa.update(t).where(t.c.host == self.host, t.c.path == key)
                             .values(size=end, head_sha256=_head_hash(path, end), rows=total,
                                     time=dt.datetime.now(dt.UTC).timestamp()))


def _head_hash(path: Path, size: int) -> str:
    """sha256 of the first ``min(size, HEAD_BYTES)`` bytes of ``path``."""
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read(min(size, HEAD_BYTES))).hexdigest()


def _read_lines(path: Path, offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
    """Up to ``limit`` complete lines from byte ``offset``: the JSON objects among them (damaged lines skipped)
    and the offset after the last complete line read."""
    records: list[dict[str, Any]] = []
    end = offset
    with open(path, "rb") as handle:
        handle.seek(offset)
        for _ in range(limit):
            line = handle.readline()
            if not line.endswith(b"\n"):
                break
            end += len(line)
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records, end


def _fields(row: Any) -> dict[str, Any]:
    """A row's columns as the dataclasses take them: ``dedup`` left out, a NULL ``extra`` read as ``{}``."""
    fields: dict[str, Any] = {k: v for k, v in dict(row).items() if k != "dedup"}
    if "extra" in fields and fields["extra"] is None:
        fields["extra"] = {}
    return fields


# -- trend buckets -------------------------------------------------------------------------------------------------


def _local(when: float, tz: dt.tzinfo | None) -> dt.datetime:
    """``when`` in ``tz``; None: a naive local time, whose ``timestamp()`` follows this machine's zone rules
    (so a bucket that spans a daylight-saving change still starts and ends at the right instants)."""
    return dt.datetime.fromtimestamp(when, tz)


def hour_bucket(when: float, tz: dt.tzinfo | None, _starts: Sequence[int] = ()) -> tuple[float, float, str]:
    """The local hour holding ``when``: (start, end, label), epoch s."""
    local = _local(when, tz).replace(minute=0, second=0, microsecond=0)
    start = local.timestamp()
    return start, start + 3600.0, local.strftime("%Y-%m-%d %H:00")


def shift_bucket(when: float, tz: dt.tzinfo | None,
                 starts: Sequence[int] = DEFAULT_SHIFT_STARTS) -> tuple[float, float, str]:
    """The shift holding ``when``: (start, end, label), epoch s, from the latest start hour (``starts``: local
    hours, sorted) at or before it (yesterday's last one before the day's first) to the next start. The one shift
    rule: trends, the shift report and its default range use it."""
    local = _local(when, tz)
    zone = local.tzinfo
    day = local.date()
    candidates = [(day - dt.timedelta(days=1), starts[-1])] + [(day, h) for h in starts]
    begin_day, begin_hour = next(c for c in reversed(candidates)
                                 if dt.datetime.combine(c[0], dt.time(c[1]), zone).timestamp() <= when)
    index = starts.index(begin_hour)
    end_day, end_hour = (begin_day, starts[index + 1]) if index + 1 < len(starts) else (
        begin_day + dt.timedelta(days=1), starts[0])
    begin = dt.datetime.combine(begin_day, dt.time(begin_hour), zone)
    end = dt.datetime.combine(end_day, dt.time(end_hour), zone)
    return begin.timestamp(), end.timestamp(), f"{begin:%Y-%m-%d %H:00} shift {index + 1}"


_BUCKETS: dict[str, Callable[[float, dt.tzinfo | None, Sequence[int]], tuple[float, float, str]]] = {
    "hour": hour_bucket,
    "shift": shift_bucket,
}

__all__ = ["DIALECTS", "AlarmRow", "FeedbackRow", "History", "ImportReport", "Recorded", "ResultRow", "ReviewRow",
           "TrendBucket", "alembic_config", "head_revision", "hour_bucket", "make_engine", "metadata", "normalise_url",
           "sha1_ref", "shift_bucket", "spot_checked", "store_url"]
