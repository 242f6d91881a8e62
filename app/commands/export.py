"""`redline export ...`: freeze dataset versions and write them to files in any export format."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError
from sqlalchemy import select

from app.db import session_scope
from app.errors import validation_messages
from app.models import DatasetState, DatasetVersion, User
from app.services import datasets, export, freeze


def _filter_from(raw_json: str | None, options: dict[str, Any]) -> datasets.DatasetFilter:
    """Merge `--filter` JSON (or @file) with the individual options; options win."""
    base: dict[str, Any] = {}
    if raw_json:
        text = Path(raw_json[1:]).read_text() if raw_json.startswith("@") else raw_json
        try:
            base = json.loads(text)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--filter") from exc
        if not isinstance(base, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--filter")
    base.update({key: value for key, value in options.items() if value is not None and value != []})
    try:
        return datasets.DatasetFilter.model_validate(base)
    except ValidationError as exc:
        raise click.UsageError("; ".join(validation_messages(exc, prefix="filter."))) from exc


def _actor(session, username: str | None) -> User | None:
    if username is None:
        return None
    user = session.scalars(select(User).where(User.username == username)).first()
    if user is None:
        raise click.BadParameter(f"no user {username!r}", param_hint="--as")
    return user


@click.group("export")
def export_group() -> None:
    """Dataset versions: freeze a filter, list versions, write exports."""


@export_group.command("create")
@click.option("--name", required=True, help="Name of the new version.")
@click.option("--filter", "filter_json", help="Filter as JSON, or @file.json (see docs/datasets.md).")
@click.option("--project", "project_id", type=int, help="Only this project id.")
@click.option("--outcome", "outcomes", multiple=True, type=click.Choice(["edited", "no_change_needed", "unfixable"]))
@click.option("--review-status", "review_statuses", multiple=True,
              type=click.Choice(["accepted", "pending", "rejected"]), help="Default: accepted only.")
@click.option("--min-edit-rate", type=float)
@click.option("--max-edit-rate", type=float)
@click.option("--exclude-not-minimal", is_flag=True, default=None)
@click.option("--after", "created_after", type=click.DateTime(), help="Edits created at or after (UTC).")
@click.option("--before", "created_before", type=click.DateTime(), help="Edits created before (UTC).")
@click.option("--as", "username", help="Record this user as the creator.")
def create(name: str, filter_json: str | None, username: str | None, **options: Any) -> None:
    """Freeze the edits matching a filter into a new, immutable dataset version, here and now (one transaction
    on one connection; the pages and the API hand it to a worker instead)."""
    flt = _filter_from(filter_json, {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()})

    def report(_progress: float, line: str) -> None:
        if line:
            click.echo(line, err=True)

    with session_scope() as session:
        try:
            version = freeze.create_version(session, flt, name, _actor(session, username), report=report)
        except datasets.DatasetError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"dataset version {version.id}: {version.row_count} rows, sha256 {version.content_hash}")


@export_group.command("list")
def list_versions() -> None:
    """List dataset versions, newest first."""
    with session_scope() as session:
        for version in session.scalars(select(DatasetVersion).order_by(DatasetVersion.id.desc())):
            click.echo(
                f"{version.id:>5}  {version.row_count:>9} rows  {version.content_hash[:16] or version.state:<16}  "
                f"{datasets.iso(version.created_at)[:19]}  {version.name}"
            )


def _write_atomically(chunks: Iterable[bytes], path: Path) -> int:
    """Write to a temporary sibling and rename, so a failed export never leaves a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    size = 0
    try:
        with tmp.open("wb") as out:
            for chunk in chunks:
                out.write(chunk)
                size += len(chunk)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return size


def _open(version_id: int, fmt: str, tokenizer: str | None):
    try:
        return export.open_export(session_scope, version_id, fmt, tokenizer)
    except export.ExportError as exc:
        raise click.ClickException(str(exc)) from exc


@export_group.command("download")
@click.argument("version_id", type=int)
@click.option("--format", "-f", "fmt", type=click.Choice(list(export.EXPORT_FORMATS)), default="pairs-jsonl",
              show_default=True)
@click.option("--output", "-o", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
              help="File to write ('-' for stdout). Default: dataset-<id>-<format>.<ext> here.")
@click.option("--tokenizer", help="Recompute token labels for this tokenizer (folder or hub id).")
def download(version_id: int, fmt: str, output: Path | None, tokenizer: str | None) -> None:
    """Stream one format of a dataset version to a file."""
    version, stream = _open(version_id, fmt, tokenizer)
    if str(output) == "-":
        for chunk in stream:
            sys.stdout.buffer.write(chunk)
        return
    path = output or Path(export.export_filename(version, fmt))
    started = datetime.now()
    size = _write_atomically(stream, path)
    seconds = (datetime.now() - started).total_seconds()
    click.echo(f"wrote {path} ({size / 1e6:.1f} MB, {version.row_count} rows in the version, {seconds:.1f} s)")


@export_group.command("verify")
@click.argument("version_id", type=int)
@click.option("--file", "path", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="A downloaded pairs-jsonl file to check instead of the stored rows.")
def verify(version_id: int, path: Path | None) -> None:
    """Recompute a version's content hash from its stored rows (or a downloaded pairs-jsonl file) and compare."""
    with session_scope() as session:
        version = session.get(DatasetVersion, version_id)
        if version is None or version.state != DatasetState.READY:
            raise click.ClickException(f"dataset version {version_id} does not exist or is not ready")
        lines = freeze.file_lines(path) if path else freeze.stored_lines(session, version_id)
        digest = freeze.content_hash(lines, version.hash_format)
    if digest != version.content_hash:
        raise click.ClickException(f"content hash {digest} differs from the version's {version.content_hash}")
    click.echo(f"dataset version {version_id}: content hash {digest} verified ({path or 'stored rows'})")


@export_group.command("all")
@click.argument("version_id", type=int)
@click.option("--dir", "directory", type=click.Path(path_type=Path, file_okay=False), required=True)
@click.option("--tokenizer", help="Recompute token labels for this tokenizer (folder or hub id).")
def export_all(version_id: int, directory: Path, tokenizer: str | None) -> None:
    """Write every format of a version into DIR, with the dataset card as README.md."""
    for fmt in export.EXPORT_FORMATS:
        version, stream = _open(version_id, fmt, tokenizer)
        name = "README.md" if fmt == "card" else export.export_filename(version, fmt)
        _write_atomically(stream, directory / name)
        click.echo(f"wrote {directory / name}")
