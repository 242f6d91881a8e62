"""freeze branch: dataset versions frozen by a job (state, error, job), hash format 2, card summary; frozen rows
as text kept in the table's pages, without foreign keys

Versions made before this one are ready and keep hash format 1 (the SHA-256 of their pairs-jsonl file).
`dataset_rows.data` becomes `text` (the freeze builds valid JSON itself; `json` would parse it again), with
STORAGE MAIN on Postgres: a row compresses to a few kilobytes and stays in the table's own pages instead of
TOAST chunks and their index, which makes both writing and streaming it cheaper. Its foreign keys go: the freeze alone writes rows, for a
version it made, and deletes them with it; the keys cost a trigger per row written (the version's also locked the
version's row once per row, from every connection writing), and edit_id's made deleting an edit scan every
frozen row, which no index covered. The versions there are get their card's counts (`summary`), counted here once.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05
"""
import sqlalchemy as sa
from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), 'postgresql')


# The dataset card's counts for the versions there are: rows per outcome, and rows with a review.
SUMMARY_SQL = {
    'postgresql': """
        UPDATE dataset_versions v SET summary = jsonb_build_object(
            'outcomes', coalesce((SELECT jsonb_object_agg(outcome, n) FROM (
                SELECT data->>'outcome' AS outcome, count(*) AS n FROM dataset_rows
                WHERE dataset_version_id = v.id GROUP BY 1) counted), '{}'::jsonb),
            'reviewed', (SELECT count(*) FROM dataset_rows
                         WHERE dataset_version_id = v.id AND json_typeof(data->'review') = 'object'))
    """,
    'sqlite': """
        UPDATE dataset_versions SET summary = json_object(
            'outcomes', (SELECT json_group_object(outcome, n) FROM (
                SELECT json_extract(data, '$.outcome') AS outcome, count(*) AS n FROM dataset_rows
                WHERE dataset_version_id = dataset_versions.id GROUP BY 1)),
            'reviewed', (SELECT count(*) FROM dataset_rows
                         WHERE dataset_version_id = dataset_versions.id AND json_type(data, '$.review') = 'object'))
    """,
}


def _supports_lz4(bind) -> bool:
    return bool(bind.execute(sa.text(
        "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
    )).scalar())


def upgrade() -> None:
    with op.batch_alter_table('dataset_versions') as batch:
        batch.add_column(sa.Column('state', sa.String(16), nullable=False, server_default='ready'))
        batch.add_column(sa.Column('error', sa.Text(), nullable=False, server_default=''))
        batch.add_column(sa.Column('job_id', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('hash_format', sa.SmallInteger(), nullable=False, server_default='1'))
        batch.add_column(sa.Column('summary', Json, nullable=True))
        batch.create_check_constraint(op.f('ck_dataset_versions_state'), "state IN ('freezing', 'ready', 'failed')")
        batch.create_foreign_key(op.f('fk_dataset_versions_job_id_jobs'), 'jobs', ['job_id'], ['id'],
                                 ondelete='SET NULL')
    with op.batch_alter_table('dataset_versions') as batch:  # the defaults were for the existing rows only
        for column in ('state', 'error', 'hash_format'):
            batch.alter_column(column, server_default=None)
    op.execute(SUMMARY_SQL[op.get_bind().dialect.name])
    with op.batch_alter_table('dataset_rows') as batch:
        batch.drop_constraint(op.f('fk_dataset_rows_dataset_version_id_dataset_versions'), type_='foreignkey')
        batch.drop_constraint(op.f('fk_dataset_rows_edit_id_edits'), type_='foreignkey')
    bind = op.get_bind()
    if bind.dialect.name == 'postgresql':
        op.execute('ALTER TABLE dataset_rows ALTER COLUMN data TYPE text USING data::text')
        op.execute('ALTER TABLE dataset_rows ALTER COLUMN data SET STORAGE MAIN')
        if _supports_lz4(bind):
            op.execute('ALTER TABLE dataset_rows ALTER COLUMN data SET COMPRESSION lz4')
    else:
        with op.batch_alter_table('dataset_rows') as batch:
            batch.alter_column('data', type_=sa.Text(), existing_type=sa.JSON(), existing_nullable=False)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == 'postgresql':
        op.execute('ALTER TABLE dataset_rows ALTER COLUMN data SET STORAGE EXTENDED')
        op.execute('ALTER TABLE dataset_rows ALTER COLUMN data TYPE json USING data::json')
        if _supports_lz4(bind):
            op.execute('ALTER TABLE dataset_rows ALTER COLUMN data SET COMPRESSION lz4')
    else:
        with op.batch_alter_table('dataset_rows') as batch:
            batch.alter_column('data', type_=sa.JSON(), existing_type=sa.Text(), existing_nullable=False)
    op.execute("DELETE FROM dataset_versions WHERE state <> 'ready'")
    op.execute('DELETE FROM dataset_rows WHERE dataset_version_id NOT IN (SELECT id FROM dataset_versions)')
    op.execute('UPDATE dataset_rows SET edit_id = NULL WHERE edit_id NOT IN (SELECT id FROM edits)')
    with op.batch_alter_table('dataset_rows') as batch:
        batch.create_foreign_key(op.f('fk_dataset_rows_dataset_version_id_dataset_versions'), 'dataset_versions',
                                 ['dataset_version_id'], ['id'], ondelete='CASCADE')
        batch.create_foreign_key(op.f('fk_dataset_rows_edit_id_edits'), 'edits', ['edit_id'], ['id'],
                                 ondelete='SET NULL')
    with op.batch_alter_table('dataset_versions') as batch:
        batch.drop_constraint(op.f('fk_dataset_versions_job_id_jobs'), type_='foreignkey')
        batch.drop_constraint(op.f('ck_dataset_versions_state'), type_='check')
        for column in ('summary', 'hash_format', 'job_id', 'error', 'state'):
            batch.drop_column(column)
