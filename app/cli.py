"""The `redline` console script. Each command group lives in its own module under app/commands/."""

from __future__ import annotations

import click

from app.commands import db, demo, editors, export, imports, models, serve, train, users, webhooks, worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Redline: minimal-edit annotation and token-level training."""


for command in (db.db, models.models, serve.serve, train.train, worker.worker, export.export_group,
                webhooks.webhooks, users.createuser, imports.import_command,
                demo.demo, editors.editors):
    main.add_command(command)
