"""drift alarms: one per category, kind, version and episode across processes (episode, dedup)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

The drift watch recorded an alarm after checking, under a lock of its own process, that none was open: two
processes (the service and a watch folder, two hosts on one PostgreSQL) alarming at the same instant each recorded
one. An alarm now names its episode (the run of scores it was raised on) and carries a unique ``dedup`` of
(category, kind, version, episode), so the database keeps one. Older alarms keep NULL (never deduplicated).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('drift_alarms') as batch:  # SQLite: the table is copied (batch mode)
        batch.add_column(sa.Column('episode', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('dedup', sa.String(length=64), nullable=True))
        batch.create_unique_constraint(op.f('uq_drift_alarms_dedup'), ['dedup'])


def downgrade() -> None:
    with op.batch_alter_table('drift_alarms') as batch:
        batch.drop_constraint(op.f('uq_drift_alarms_dedup'), type_='unique')
        batch.drop_column('dedup')
        batch.drop_column('episode')
