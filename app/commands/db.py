"""`redline db ...`: schema migrations."""

from __future__ import annotations

import click

from app import migrate
from app.settings import get_settings


@click.group()
def db() -> None:
    """Database schema."""


@db.command()
@click.option("--revision", default="head", show_default=True)
def upgrade(revision: str) -> None:
    """Apply migrations up to REVISION."""
    get_settings().data_dir.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(revision=revision)
    click.echo(f"database at {revision}")


@db.command()
@click.option("--revision", default="-1", show_default=True)
def downgrade(revision: str) -> None:
    """Revert migrations down to REVISION."""
    migrate.downgrade(revision=revision)
    click.echo(f"database at {revision}")
