"""editorx: the stages of a job that runs as a chain (generate → score → import → revise → version)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('stages', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'),
                                   nullable=False, server_default='[]'))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('stages')
