"""Alembic's environment for the line history (``core/store/history.py``).

Run by :meth:`core.store.history.History.migrate` with the connection it holds in ``config.attributes
["connection"]`` (inside its write transaction, under the migration lock), or by an Alembic command given a
``sqlalchemy.url`` (:func:`core.store.history.alembic_config`): online against that URL, or offline (``--sql``)
to print the SQL for a database administrator.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from core.store.history import make_engine, metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, compare_type=True,
                      render_as_batch=connection.dialect.name == "sqlite")  # SQLite alters tables by copying them
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    config = context.config
    if context.is_offline_mode():
        context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=metadata,
                          literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("expected a connection in config.attributes or a sqlalchemy.url, found neither")
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


main()
