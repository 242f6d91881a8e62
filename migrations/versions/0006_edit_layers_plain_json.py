"""edits, reviews: labels, character diff and statistics as plain json (lz4 where supported) on Postgres

An edit layer is written once and read whole; nothing queries inside it. JSONB parsed each submit's
labels into its binary form (about 0.2 ms of Postgres CPU per submit, measured) only to print them back
as text on export; `json` stores the text verbatim after a syntax check, and lz4 compresses it several
times faster than the default pglz. SQLite stores both as the same JSON text: only Postgres changes.
The type change rewrites the two tables.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""
from alembic import op
import sqlalchemy as sa

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

LAYERS = {'edits': ('char_diff', 'token_labels', 'stats'), 'reviews': ('char_diff', 'token_labels', 'stats')}


def _supports_lz4(bind) -> bool:
    return bool(bind.execute(sa.text(
        "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
    )).scalar())


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != 'postgresql':
        return
    compression = 'lz4' if _supports_lz4(bind) else 'default'
    for table, columns in LAYERS.items():
        changes = ', '.join(f'ALTER COLUMN {c} TYPE json USING {c}::json, ALTER COLUMN {c} SET COMPRESSION '
                            f'{compression}' for c in columns)
        op.execute(f'ALTER TABLE {table} {changes}')


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    for table, columns in LAYERS.items():
        changes = ', '.join(f'ALTER COLUMN {c} TYPE jsonb USING {c}::jsonb, ALTER COLUMN {c} SET COMPRESSION '
                            'default' for c in columns)
        op.execute(f'ALTER TABLE {table} {changes}')
