"""dataset_rows.data: lz4 TOAST compression on Postgres where the server supports it

Frozen rows are large (thousands of token ids) and streamed whole; lz4 compresses and decompresses
several times faster than the default pglz. Servers built without lz4 keep pglz.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""
from alembic import op
import sqlalchemy as sa

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def _supports_lz4(bind) -> bool:
    return bool(bind.execute(sa.text(
        "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
    )).scalar())


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == 'postgresql' and _supports_lz4(bind):
        op.execute('ALTER TABLE dataset_rows ALTER COLUMN data SET COMPRESSION lz4')


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('ALTER TABLE dataset_rows ALTER COLUMN data SET COMPRESSION default')
