"""`redline import PROJECT FILE`: load items from JSONL, CSV or Parquet, all or nothing (with the edits
an `edited` column holds, when their source is named)."""

from __future__ import annotations

from pathlib import Path

import click

from app.db import session_scope
from app.services.edit_import import EDITS, MODES, EditSource, EditSourceError
from app.services.import_formats import FORMATS, FormatError, import_file, parse_mapping
from app.services.importer import ImportRejected
from app.services.projects import ProjectError, find_project


@click.command("import")
@click.argument("project")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None, help="Default: from the extension.")
@click.option("--map", "mapping", multiple=True, metavar="KEY=COLUMN",
              help="Field mapping, e.g. --map prompt=question --map response=answer (or chosen=, edited=COLUMN).")
@click.option("--edits-from", default=None, metavar="SOURCE",
              help="The file's `edited` column holds edits by SOURCE: import them (account import-SOURCE).")
@click.option("--edits-as", type=click.Choice(MODES), default=EDITS, show_default=True,
              help="Store them as completed edits, or as suggestions people start from.")
def import_command(project: str, path: Path, fmt: str | None, mapping: tuple[str, ...], edits_from: str | None,
                   edits_as: str) -> None:
    """Import items from PATH into PROJECT (a name or an id)."""
    edits = EditSource(edits_from, edits_as) if edits_from is not None else None
    try:
        with session_scope() as session, path.open("rb") as stream:
            target = find_project(session, project)
            result = import_file(
                session, target, stream, filename=path.name, fmt=fmt, mapping=parse_mapping(list(mapping)),
                edits=edits,
            )
    except ImportRejected as exc:
        for error in exc.errors:
            click.echo(f"{path.name}: {error}", err=True)
        raise click.ClickException(str(exc)) from None
    except (FormatError, ProjectError, EditSourceError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"imported {result.imported} item(s) into {target.name!r}; {result.duplicates} duplicate(s) skipped"
               f"{result.edits_note}")
