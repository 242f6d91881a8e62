"""dataset_rows.data: plain json on Postgres (verbatim canonical text, fast streaming)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # SQLite stores both types as the same JSON text: only Postgres changes.
    if op.get_bind().dialect.name == 'postgresql':
        op.alter_column('dataset_rows', 'data', type_=sa.JSON(), existing_nullable=False,
                        postgresql_using='data::json')


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.alter_column('dataset_rows', 'data', type_=postgresql.JSONB(astext_type=sa.Text()),
                        existing_nullable=False, postgresql_using='data::jsonb')
