"""The `redline` console script. Each command group lives in its own module under app/commands/."""

from __future__ import annotations

import click

from app.commands import db, models, serve, train, worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Redline: minimal-edit annotation and token-level training."""


for command in (db.db, models.models, serve.serve, train.train, worker.worker):
    main.add_command(command)
