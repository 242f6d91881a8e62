"""editorx: one suggestion per item from each imported source (editor_id NULL), as from each editor

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""
import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

IMPORTED = sa.text('editor_id IS NULL')


def upgrade() -> None:
    op.create_index('uq_suggestions_item_source', 'suggestions', ['item_id', 'source'], unique=True,
                    postgresql_where=IMPORTED, sqlite_where=IMPORTED)


def downgrade() -> None:
    op.drop_index('uq_suggestions_item_source', table_name='suggestions')
