"""line history: results, reviews, drift alarms, feedback, imported logs

Revision ID: 0001
Revises: (none: the first)
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('drift_alarms',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('time', sa.Double(), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('category', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=60), nullable=False),
    sa.Column('version', sa.Integer(), nullable=True),
    sa.Column('rule', sa.String(length=60), nullable=False),
    sa.Column('statistic', sa.Double(), nullable=True),
    sa.Column('limit', sa.Double(), nullable=True),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('resolved_time', sa.Double(), nullable=True),
    sa.Column('resolved_by', sa.String(length=200), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_drift_alarms'))
    )
    op.create_index(op.f('ix_drift_alarms_category_kind_time'), 'drift_alarms', ['category', 'kind', 'time'])
    op.create_table('feedback',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('dedup', sa.String(length=64), nullable=False),
    sa.Column('time', sa.Double(), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('category', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=60), nullable=False),
    sa.Column('action', sa.String(length=40), nullable=False),
    sa.Column('image', sa.Text(), nullable=True),
    sa.Column('image_sha1', sa.String(length=64), nullable=True),
    sa.Column('defect', sa.String(length=200), nullable=True),
    sa.Column('version_before', sa.Integer(), nullable=True),
    sa.Column('version_after', sa.Integer(), nullable=True),
    sa.Column('user', sa.String(length=200), nullable=True),
    sa.Column('extra', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_feedback')),
    sa.UniqueConstraint('dedup', name=op.f('uq_feedback_dedup'))
    )
    op.create_index(op.f('ix_feedback_category_kind_time'), 'feedback', ['category', 'kind', 'time'])
    op.create_table('imported_logs',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('head_sha256', sa.String(length=64), nullable=False),
    sa.Column('rows', sa.Integer(), nullable=False),
    sa.Column('time', sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_imported_logs')),
    sa.UniqueConstraint('host', 'path', name=op.f('uq_imported_logs_host_path'))
    )
    op.create_table('line_results',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('dedup', sa.String(length=64), nullable=False),
    sa.Column('ref', sa.String(length=200), nullable=False),
    sa.Column('time', sa.Double(), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('source', sa.String(length=40), nullable=False),
    sa.Column('category', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=60), nullable=True),
    sa.Column('version', sa.Integer(), nullable=True),
    sa.Column('verdict', sa.String(length=40), nullable=False),
    sa.Column('score', sa.Double(), nullable=True),
    sa.Column('threshold', sa.Double(), nullable=True),
    sa.Column('name', sa.Text(), nullable=True),
    sa.Column('image_sha1', sa.String(length=64), nullable=True),
    sa.Column('path', sa.Text(), nullable=True),
    sa.Column('latency_ms', sa.Double(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('status', sa.Integer(), nullable=True),
    sa.Column('extra', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_line_results')),
    sa.UniqueConstraint('dedup', name=op.f('uq_line_results_dedup'))
    )
    op.create_index(op.f('ix_line_results_category_kind_time'), 'line_results', ['category', 'kind', 'time'])
    op.create_index(op.f('ix_line_results_time'), 'line_results', ['time'])
    op.create_table('reviews',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('result_id', sa.Integer(), nullable=False),
    sa.Column('time', sa.Double(), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('reviewer', sa.String(length=200), nullable=False),
    sa.Column('decision', sa.String(length=20), nullable=False),
    sa.Column('defect', sa.String(length=200), nullable=True),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('category', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=60), nullable=True),
    sa.Column('version', sa.Integer(), nullable=True),
    sa.Column('model_verdict', sa.String(length=40), nullable=False),
    sa.Column('model_score', sa.Double(), nullable=True),
    sa.ForeignKeyConstraint(['result_id'], ['line_results.id'], name=op.f('fk_reviews_result_id_line_results')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reviews'))
    )
    op.create_index(op.f('ix_reviews_category_time'), 'reviews', ['category', 'time'])
    op.create_index(op.f('ix_reviews_result_id'), 'reviews', ['result_id'])



def downgrade() -> None:
    op.drop_index(op.f('ix_reviews_result_id'), table_name='reviews')
    op.drop_index(op.f('ix_reviews_category_time'), table_name='reviews')
    op.drop_table('reviews')
    op.drop_index(op.f('ix_line_results_time'), table_name='line_results')
    op.drop_index(op.f('ix_line_results_category_kind_time'), table_name='line_results')
    op.drop_table('line_results')
    op.drop_table('imported_logs')
    op.drop_index(op.f('ix_feedback_category_kind_time'), table_name='feedback')
    op.drop_table('feedback')
    op.drop_index(op.f('ix_drift_alarms_category_kind_time'), table_name='drift_alarms')
    op.drop_table('drift_alarms')
