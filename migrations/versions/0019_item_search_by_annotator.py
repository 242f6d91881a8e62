"""freeze branch: the item browser's edit filters by annotator at a million edits

`/items?annotator=…&outcome=…&min_rate=…` found items newest first by checking each item's edits in turn, which
ends early when the filter matches often and reads every edit when it matches rarely or never (1.3–3 s at a
million edits for an annotator who never edited that way). An index on an annotator's edits by outcome and edit
rate, carrying the item id, answers such filters from the index alone; and on Postgres, statistics on how
annotators and outcomes go together let the planner see which case it is in.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07
"""
from alembic import op

revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_edits_annotator_outcome_rate', 'edits', ['annotator_id', 'outcome', 'edit_rate', 'item_id'])
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('CREATE STATISTICS st_edits_annotator_outcome (mcv) ON annotator_id, outcome FROM edits')
        op.execute('ANALYZE edits')


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('DROP STATISTICS IF EXISTS st_edits_annotator_outcome')
    op.drop_index('ix_edits_annotator_outcome_rate', table_name='edits')
