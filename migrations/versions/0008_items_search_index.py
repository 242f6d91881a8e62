"""items: a full-text index of prompt and response for the item browser's phrase search (Postgres)

The browser finds items by a phrase among a million: `to_tsvector('simple', prompt || ' ' || original)
@@ phraseto_tsquery('simple', phrase)` goes through this GIN index, and only the rows it returns are
checked for the exact phrase. The 'simple' configuration (no stemming, no stop words) works for every
language alike. SQLite has no such index; its browser scans, which is fine at its scale.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("CREATE INDEX ix_items_search ON items USING gin "
                   "(to_tsvector('simple'::regconfig, prompt || ' ' || original))")


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('DROP INDEX ix_items_search')
