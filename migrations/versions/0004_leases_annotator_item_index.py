"""leases: index (annotator_id, item_id) for "never offered twice to the same annotator"

"Next" skips the items an annotator has held before. Through the unique constraint (item_id,
annotator_id) that check reads the leases of every annotator on earlier items, so its cost grew with
the project's progress; with this index it reads only the annotator's own history.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_leases_annotator_item', 'leases', ['annotator_id', 'item_id'])


def downgrade() -> None:
    op.drop_index('ix_leases_annotator_item', table_name='leases')
