"""service rows known by their image hash and time: the same bytes judged at two times are two results

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

Before 0002 a line result without a journal id was known by ``sha1:<hash>`` alone, so a second upload of the
same bytes (a REJECTED file sent again, a frame judged twice) made no row. 0002 gives those rows the reference
``sha1:<hash>@<time>`` (``core.store.history.sha1_ref``) and the identity (``dedup``) that goes with it, so the
JSONL lines of rows written directly before the upgrade are still known when the log is imported after it. The
digest is written out here (not imported) so that this revision keeps doing what it did when later code changes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_results = sa.table("line_results", sa.column("id", sa.Integer), sa.column("dedup", sa.String),
                    sa.column("ref", sa.String), sa.column("time", sa.Double), sa.column("source", sa.String),
                    sa.column("category", sa.String), sa.column("kind", sa.String),
                    sa.column("version", sa.Integer))


def _dedup(source: str, ref: str, category: str, kind: str | None, version: int | None) -> str:
    parts = [source, ref, category, kind, version]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def upgrade() -> None:
    conn = op.get_bind()
    t = _results
    old = conn.execute(sa.select(t).where(t.c.ref.like("sha1:%"), ~t.c.ref.contains("@"))).mappings().all()
    for row in old:
        ref = f"{row['ref']}@{float(row['time'])!r}"
        conn.execute(sa.update(t).where(t.c.id == row["id"]).values(
            ref=ref, dedup=_dedup(row["source"], ref, row["category"], row["kind"], row["version"])))


def downgrade() -> None:
    """Nothing to undo: the longer references are read by 0001's code as they are (they are only compared)."""
