"""freeze branch: the `tallies` ledger of counts over items and edits, kept by triggers, for the dashboard

At a million items and edits the dashboard's progress, queue health and edit-rate histogram counted every row
(index-only scans of a million entries, 70–700 ms each). Triggers now append each change's deltas per project
to `tallies` (app/services/tallies.py sums and folds them): on Postgres once per statement from its transition
tables (an import of 100,000 items appends a handful of rows), on SQLite once per row. The existing items and
edits are counted into it here.

The edit-rate bins are app.services.dashboard.RATE_BINS as they are now: changing those needs a migration that
replaces the triggers (tests/integration/test_tallies.py compares the two).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
RATE_BINS = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.75, 1.0]


def _bin(rate: str) -> str:
    steps = ' '.join(f'WHEN {rate} < {high!r} THEN {index}' for index, high in enumerate(RATE_BINS[1:]))
    return f'(CASE {steps} ELSE {len(RATE_BINS) - 1} END)'


def _item_counts(row: str) -> list[tuple[str, str]]:
    """(count name, value) contributed by one items row."""
    return [("'items'", '1'), ("'complete'", f"CASE WHEN {row}.status = 'complete' THEN 1 ELSE 0 END"),
            ("'open'", f"CASE WHEN {row}.status = 'open' THEN 1 ELSE 0 END"),
            ("'annotations'", f'{row}.completed_count')]


def _edit_counts(row: str) -> list[tuple[str, str]]:
    """(count name, value) contributed by one edits row."""
    return [(f"'outcome:' || {row}.outcome", '1'),
            (f"'rate:' || {_bin(row + '.edit_rate')}", f"CASE WHEN {row}.outcome = 'edited' THEN 1 ELSE 0 END")]


# --- Postgres: statement-level triggers over transition tables ----------------------------------------------


def _pg_deltas(table: str, relation: str, sign: str) -> str:
    """The (project_id, name, n) deltas of every row in `relation` (a transition table)."""
    if table == 'items':
        values = ', '.join(f'({name}, {value})' for name, value in _item_counts('r'))
        return (f'SELECT r.project_id, v.name, v.n * {sign} AS n FROM {relation} r '
                f'CROSS JOIN LATERAL (VALUES {values}) AS v(name, n)')
    values = ', '.join(f'({name}, {value})' for name, value in _edit_counts('r'))
    # An edit's project is its item's (edits are never deleted by the application, items neither).
    return (f'SELECT i.project_id, v.name, v.n * {sign} AS n FROM {relation} r JOIN items i ON i.id = r.item_id '
            f'CROSS JOIN LATERAL (VALUES {values}) AS v(name, n)')


def _pg_insert(deltas: str) -> str:
    return (f'INSERT INTO tallies (project_id, name, n) SELECT project_id, name, sum(n) FROM ({deltas}) d '
            'GROUP BY project_id, name HAVING sum(n) <> 0;')


def _pg_function(table: str) -> str:
    new, old = _pg_deltas(table, 'new_rows', '1'), _pg_deltas(table, 'old_rows', '-1')
    return f"""
        CREATE FUNCTION redline_tally_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'INSERT' THEN {_pg_insert(new)}
            ELSIF TG_OP = 'DELETE' THEN {_pg_insert(old)}
            ELSE {_pg_insert(f'{new} UNION ALL {old}')}
            END IF;
            RETURN NULL;
        END $$"""


def _names(table: str) -> list[str]:
    """The count names a table's rows contribute, as SQL LIKE patterns."""
    return ["'items'", "'complete'", "'open'", "'annotations'"] if table == 'items' else ["'outcome:%'", "'rate:%'"]


def _pg_truncate(table: str) -> str:
    """TRUNCATE fires no row or statement DELETE triggers: it gets one of its own that drops the table's counts."""
    where = ' OR '.join(f'name LIKE {pattern}' for pattern in _names(table))
    return f"""
        CREATE FUNCTION redline_untally_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM tallies WHERE {where};
            RETURN NULL;
        END $$"""


PG_EVENTS = {'insert': 'REFERENCING NEW TABLE AS new_rows', 'update': 'REFERENCING OLD TABLE AS old_rows NEW TABLE AS '
             'new_rows', 'delete': 'REFERENCING OLD TABLE AS old_rows'}


# --- SQLite: row-level triggers --------------------------------------------------------------------------------


def _sqlite_deltas(table: str, row: str, sign: str) -> str:
    counts = _item_counts(row) if table == 'items' else _edit_counts(row)
    project = f'{row}.project_id' if table == 'items' else f'(SELECT project_id FROM items WHERE id = {row}.item_id)'
    return ' UNION ALL '.join(f'SELECT {project} AS project_id, {name} AS name, ({value}) * {sign} AS n'
                              for name, value in counts)


def _sqlite_trigger(table: str, event: str) -> str:
    rows = {'insert': [('NEW', '1')], 'delete': [('OLD', '-1')], 'update': [('NEW', '1'), ('OLD', '-1')]}[event]
    deltas = ' UNION ALL '.join(_sqlite_deltas(table, row, sign) for row, sign in rows)
    return (f'CREATE TRIGGER tally_{table}_{event} AFTER {event.upper()} ON {table} BEGIN '
            f'INSERT INTO tallies (project_id, name, n) SELECT project_id, name, sum(n) FROM ({deltas}) '
            'GROUP BY project_id, name HAVING sum(n) <> 0; END')


# --- the migration ---------------------------------------------------------------------------------------------


def _backfill() -> list[str]:
    """The counts of the items and edits there are, one statement per count."""
    sources = [(_item_counts('i'), 'items i'), (_edit_counts('e'), 'edits e JOIN items i ON i.id = e.item_id')]
    return [f'INSERT INTO tallies (project_id, name, n) SELECT i.project_id, {name}, sum({value}) FROM {source} '
            f'GROUP BY 1, 2 HAVING sum({value}) <> 0' for counts, source in sources for name, value in counts]


def upgrade() -> None:
    op.create_table(
        'tallies',
        sa.Column('id', BigId, primary_key=True),
        sa.Column('project_id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(40), nullable=False),
        sa.Column('n', sa.BigInteger(), nullable=False),
    )
    for statement in _backfill():
        op.execute(statement)
    if op.get_bind().dialect.name == 'postgresql':
        for table in ('items', 'edits'):
            op.execute(_pg_function(table))
            for event, referencing in PG_EVENTS.items():
                op.execute(f'CREATE TRIGGER tally_{table}_{event} AFTER {event.upper()} ON {table} {referencing} '
                           f'FOR EACH STATEMENT EXECUTE FUNCTION redline_tally_{table}()')
            op.execute(_pg_truncate(table))
            op.execute(f'CREATE TRIGGER tally_{table}_truncate AFTER TRUNCATE ON {table} '
                       f'FOR EACH STATEMENT EXECUTE FUNCTION redline_untally_{table}()')
    else:
        for table in ('items', 'edits'):
            for event in ('insert', 'update', 'delete'):
                op.execute(_sqlite_trigger(table, event))


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == 'postgresql'
    for table in ('items', 'edits'):
        for event in ('insert', 'update', 'delete', *(['truncate'] if postgres else [])):
            op.execute(f'DROP TRIGGER IF EXISTS tally_{table}_{event}' + (f' ON {table}' if postgres else ''))
        if postgres:
            op.execute(f'DROP FUNCTION IF EXISTS redline_tally_{table}()')
            op.execute(f'DROP FUNCTION IF EXISTS redline_untally_{table}()')
    op.drop_table('tallies')
