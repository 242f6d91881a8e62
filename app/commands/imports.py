"""`redline import PROJECT FILE`: load items from JSONL, CSV or Parquet, all or nothing."""

from __future__ import annotations

from pathlib import Path

import click

from app.db import session_scope
from app.services.import_formats import FORMATS, FormatError, import_file, parse_mapping
from app.services.importer import ImportRejected
from app.services.projects import ProjectError, find_project


@click.command("import")
@click.argument("project")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None, help="Default: from the extension.")
@click.option("--map", "mapping", multiple=True, metavar="KEY=COLUMN",
              help="Field mapping, e.g. --map prompt=question --map response=answer (or chosen=COLUMN).")
def import_command(project: str, path: Path, fmt: str | None, mapping: tuple[str, ...]) -> None:
    """Import items from PATH into PROJECT (a name or an id)."""
    try:
        with session_scope() as session, path.open("rb") as stream:
            target = find_project(session, project)
            result = import_file(
                session, target, stream, filename=path.name, fmt=fmt, mapping=parse_mapping(list(mapping))
            )
    except ImportRejected as exc:
        for error in exc.errors:
            click.echo(f"{path.name}: {error}", err=True)
        raise click.ClickException(str(exc)) from None
    except (FormatError, ProjectError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"imported {result.imported} item(s) into {target.name!r}; {result.duplicates} duplicate(s) skipped")
