"""users, web_sessions: notify `redline_auth` on every change that can end a login

Each web process caches the login sessions it has checked (app/session_cache.py) and empties the cache
when this notification arrives: an update, delete or truncate of either table (deactivation, role
change, password reset, logout). Inserts need none: a new session was never cached. Postgres only;
SQLite has no notifications, and the cache stays off there.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

CHANNEL = 'redline_auth'
TABLES = ('users', 'web_sessions')


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute(f"""
        CREATE FUNCTION redline_notify_auth_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', TG_TABLE_NAME);
            RETURN NULL;
        END $$
    """)
    for table in TABLES:
        op.execute(f"CREATE TRIGGER {table}_notify_auth_change AFTER UPDATE OR DELETE OR TRUNCATE ON {table} "
                   "FOR EACH STATEMENT EXECUTE FUNCTION redline_notify_auth_change()")


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    for table in TABLES:
        op.execute(f"DROP TRIGGER {table}_notify_auth_change ON {table}")
    op.execute("DROP FUNCTION redline_notify_auth_change()")
