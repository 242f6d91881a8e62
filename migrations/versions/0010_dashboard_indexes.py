"""indexes for the admin dashboard at a million edits: counts and the edit-rate histogram from indexes

At a million edits the edits table is gigabytes (labels, diffs), and the dashboard's outcome counts and
edit-rate histogram read all of it; at a million items the per-project progress read all items. These
two narrow indexes let Postgres answer both from index-only scans (SQLite gets them too).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_edits_outcome_rate', 'edits', ['outcome', 'edit_rate'])
    op.create_index('ix_items_progress', 'items', ['project_id', 'status', 'completed_count'])


def downgrade() -> None:
    op.drop_index('ix_items_progress', table_name='items')
    op.drop_index('ix_edits_outcome_rate', table_name='edits')
