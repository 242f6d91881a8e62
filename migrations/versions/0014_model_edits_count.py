"""projects.model_edits_count: whether a model editor's edits count toward N (branch suggest)

On by default, as before: a model editor's completed edit counts toward the item's N like a person's.
Off, model edits come on top of N people's (and imports') edits.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04
"""
import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('projects') as batch:
        batch.add_column(sa.Column('model_edits_count', sa.Boolean(), nullable=False, server_default=sa.true()))


def downgrade() -> None:
    with op.batch_alter_table('projects') as batch:
        batch.drop_column('model_edits_count')
