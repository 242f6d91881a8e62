"""projects.return_rejected, and the review status "returned" (a rejected edit back with its annotator)

A project may send a rejected edit back to the annotator who wrote it, to revise or give back, instead of
reopening the item for anyone. Such an edit is `returned` until its annotator acts.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""
from alembic import op
import sqlalchemy as sa

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

OLD = "review_status IN ('pending', 'accepted', 'rejected')"
NEW = "review_status IN ('pending', 'accepted', 'rejected', 'returned')"


def upgrade() -> None:
    with op.batch_alter_table('projects') as batch_op:
        batch_op.add_column(sa.Column('return_rejected', sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table('edits') as batch_op:
        batch_op.drop_constraint(op.f('ck_edits_review_status'), type_='check')
        batch_op.create_check_constraint('review_status', NEW)


def downgrade() -> None:
    op.execute("UPDATE edits SET review_status = 'rejected' WHERE review_status = 'returned'")
    with op.batch_alter_table('edits') as batch_op:
        batch_op.drop_constraint(op.f('ck_edits_review_status'), type_='check')
        batch_op.create_check_constraint('review_status', OLD)
    with op.batch_alter_table('projects') as batch_op:
        batch_op.drop_column('return_rejected')
