"""editorx: a partial index of the edits that started from a suggestion, for the dashboard's per-editor figures

The dashboard aggregates people's edits that started from a model editor's suggestion (the share kept
unchanged, the edit rate on top) over the latest of them; at a million edits, finding those among all
edits would read the whole table. The index holds only them, with what the aggregate reads.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04
"""
import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_edits_suggestion_used', 'edits', ['id', 'editor_id', 'human_vs_suggestion_rate', 'item_id'],
                    postgresql_where=sa.text('suggestion_used'), sqlite_where=sa.text('suggestion_used = 1'))


def downgrade() -> None:
    op.drop_index('ix_edits_suggestion_used', table_name='edits')
