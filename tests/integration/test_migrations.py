"""The migrated schema equals the models, on SQLite and on the real Postgres."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from app import migrate
from app.models import Base

# Expression indexes made by migrations alone (autogenerate cannot compare expressions).
MIGRATION_ONLY_INDEXES = {"ix_items_search"}


def _compared(obj, name, type_, reflected, compare_to) -> bool:
    return not (type_ == "index" and name in MIGRATION_ONLY_INDEXES)


def schema_diff(url: str) -> list:
    engine = create_engine(url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "include_object": _compared})
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    return diff


def test_migrated_schema_matches_models(db_url: str) -> None:
    assert schema_diff(db_url) == []


def test_downgrade_to_base_and_back(db_url: str) -> None:
    migrate.downgrade(db_url, "base")
    engine = create_engine(db_url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    migrate.upgrade(db_url)
    assert schema_diff(db_url) == []
