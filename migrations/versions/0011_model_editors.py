"""model editors: endpoints, suggestions, editor jobs' per-item record, provenance of edits, account kinds

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""
import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    with op.batch_alter_table('users') as batch:
        batch.add_column(sa.Column('kind', sa.String(16), nullable=False, server_default='human'))
        batch.create_check_constraint(op.f('ck_users_kind'), "kind IN ('human', 'model', 'import')")
    op.create_table(
        'model_editors',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('name', sa.String(64), nullable=False),
        sa.Column('base_url', sa.String(1000), nullable=False),
        sa.Column('model', sa.String(200), nullable=False),
        sa.Column('api_key_encrypted', sa.Text(), nullable=False),
        sa.Column('temperature', sa.Float(), nullable=False),
        sa.Column('max_tokens', sa.Integer(), nullable=False),
        sa.Column('timeout_s', sa.Float(), nullable=False),
        sa.Column('max_concurrency', sa.Integer(), nullable=False),
        sa.Column('requests_per_minute', sa.Integer(), nullable=False),
        sa.Column('prompt_kind', sa.String(16), nullable=False),
        sa.Column('custom_template', sa.Text(), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('created_by_id', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("prompt_kind IN ('one_stage', 'two_stage', 'custom')", name='ck_model_editors_prompt_kind'),
        sa.CheckConstraint('max_tokens >= 1', name='ck_model_editors_max_tokens'),
        sa.CheckConstraint('max_concurrency >= 1', name='ck_model_editors_max_concurrency'),
        sa.CheckConstraint('timeout_s > 0', name='ck_model_editors_timeout_s'),
        sa.CheckConstraint('requests_per_minute >= 0', name='ck_model_editors_requests_per_minute'),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], name='fk_model_editors_user_id_users', ondelete='RESTRICT'),
        sa.ForeignKeyConstraint(['created_by_id'], ['users.id'], name='fk_model_editors_created_by_id_users',
                                ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id', name='pk_model_editors'),
        sa.UniqueConstraint('name', name='uq_model_editors_name'),
        sa.UniqueConstraint('user_id', name='uq_model_editors_user_id'),
    )
    with op.batch_alter_table('edits') as batch:
        batch.add_column(sa.Column('editor_id', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('editor_model', sa.String(200), nullable=False, server_default=''))
        batch.add_column(sa.Column('prompt_version', sa.String(16), nullable=False, server_default=''))
        batch.add_column(sa.Column('suggestion_used', sa.Boolean(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('human_vs_suggestion_rate', sa.Float(), nullable=True))
        batch.create_foreign_key('fk_edits_editor_id_model_editors', 'model_editors', ['editor_id'], ['id'],
                                 ondelete='SET NULL')
    op.create_table(
        'editor_job_items',
        sa.Column('job_id', sa.Integer(), nullable=False),
        sa.Column('item_id', BigId, nullable=False),
        sa.Column('status', sa.String(16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('error', sa.Text(), nullable=False),
        sa.Column('edit_id', BigId, nullable=True),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name='fk_editor_job_items_job_id_jobs', ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['item_id'], ['items.id'], name='fk_editor_job_items_item_id_items',
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['edit_id'], ['edits.id'], name='fk_editor_job_items_edit_id_edits',
                                ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('job_id', 'item_id', name='pk_editor_job_items'),
    )
    op.create_table(
        'suggestions',
        sa.Column('id', BigId, primary_key=True),
        sa.Column('item_id', BigId, nullable=False),
        sa.Column('editor_id', sa.Integer(), nullable=True),
        sa.Column('source', sa.String(200), nullable=False),
        sa.Column('text', sa.Text(), nullable=False),
        sa.Column('editor_model', sa.String(200), nullable=False),
        sa.Column('prompt_version', sa.String(16), nullable=False),
        sa.Column('edit_rate', sa.Float(), nullable=False),
        sa.Column('not_minimal', sa.Boolean(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['item_id'], ['items.id'], name='fk_suggestions_item_id_items', ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['editor_id'], ['model_editors.id'], name='fk_suggestions_editor_id_model_editors',
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name='pk_suggestions'),
        sa.UniqueConstraint('item_id', 'editor_id', name='uq_suggestions_item_editor'),
    )


def downgrade() -> None:
    op.drop_table('suggestions')
    op.drop_table('editor_job_items')
    with op.batch_alter_table('edits') as batch:
        batch.drop_constraint('fk_edits_editor_id_model_editors', type_='foreignkey')
        for column in ('human_vs_suggestion_rate', 'suggestion_used', 'prompt_version', 'editor_model', 'editor_id'):
            batch.drop_column(column)
    op.drop_table('model_editors')
    with op.batch_alter_table('users') as batch:
        batch.drop_constraint(op.f('ck_users_kind'), type_='check')
        batch.drop_column('kind')
