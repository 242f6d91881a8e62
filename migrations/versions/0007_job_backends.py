"""jobs: the backend that runs a job (local process or Slurm batch job) and the engine's id for it

Workers claim only jobs of the backends they serve; `external_id` is the Slurm job id, so a cancel,
a reaped job or the dashboard can name the scheduler's job.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('backend', sa.String(16), nullable=False, server_default='local'))
        batch.add_column(sa.Column('external_id', sa.String(64), nullable=True))
        batch.create_check_constraint(op.f('ck_jobs_backend'), "backend IN ('local', 'slurm')")


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_constraint(op.f('ck_jobs_backend'), type_='check')
        batch.drop_column('external_id')
        batch.drop_column('backend')
