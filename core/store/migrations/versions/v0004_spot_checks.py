"""line results: spot checks (an OK verdict a person also looks at)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

*Recalibrate from the line* fitted thresholds from goods confirmed in the review queue, which only REVIEW and
DEFECT verdicts reached: the high-scoring goods, a biased sample. 1 in N OK verdicts (by image hash,
``core.store.history.spot_checked``) now reaches the queue too; ``spot_check`` marks them. Older rows keep NULL.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('line_results') as batch:
        batch.add_column(sa.Column('spot_check', sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('line_results') as batch:
        batch.drop_column('spot_check')
