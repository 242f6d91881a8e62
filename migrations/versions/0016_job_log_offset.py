"""jobs: how far the worker has read the job's log file (branch vllm)

A Slurm job outlives the worker that submitted it; the worker that adopts it goes on reading its log
from this byte offset (stored in the same transaction as the log text), so no line is stored twice.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('log_offset', sa.BigInteger(), nullable=False, server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('log_offset')
