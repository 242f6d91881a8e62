"""Importing items into a project: validation with line and field, content-hash dedup, all-or-nothing.

`import_records` takes records already mapped to `prompt`, `response`, an optional `source` dict and an
optional `edited` text (an edit the file already has: stored through app.services.edit_import, which needs
an `EditSource`; a file with edits and no source is refused rather than its edits dropped).
A record may carry `_line` (its position in the source file, used in error messages) and `_error`
(a `(field, message)` pair, or a list of them, from a reader that could not use that line). The records are inserted in
chunks inside the caller's transaction; if any row is bad, `ImportRejected` lists every bad row and the
caller's rollback leaves nothing behind. Nothing here holds the whole file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from app.errors import DomainError
from app.models import ImportBatch, Item, ItemStatus, Project, User
from app.services import audit
from app.services.edit_import import SUGGESTIONS, EditImporter, EditSource
from app.text_input import find_nul, nul_error

CHUNK = 1000
MAX_TEXT_CHARS = 200_000
MAX_REPORTED_ERRORS = 500


@dataclass(frozen=True)
class RowError:
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}, field {self.field!r}: {self.message}"


class ImportRejected(DomainError):
    """The import was refused; nothing was written. `errors` lists the bad rows (the first 500)."""

    def __init__(self, errors: list[RowError], total: int) -> None:
        self.errors = errors
        self.total = total
        more = f" (showing the first {len(errors)})" if total > len(errors) else ""
        super().__init__(f"{total} bad row(s){more}; nothing was imported")


@dataclass
class ImportResult:
    batch_id: int
    imported: int
    duplicates: int
    rows: int
    errors: list[RowError] = field(default_factory=list)
    edits: int = 0  # edits (or suggestions) stored from an `edited` column
    edit_duplicates: int = 0  # edits this source had given already
    edits_source: EditSource | None = None

    @property
    def edits_note(self) -> str:
        """What became of the file's edits, for the messages that report an import; "" without edits."""
        if self.edits_source is None:
            return ""
        kind = "suggestion(s)" if self.edits_source.mode == SUGGESTIONS else "completed edit(s)"
        return (f"; {self.edits} {kind} from {self.edits_source.name!r} stored, "
                f"{self.edit_duplicates} given before")


def content_hash(prompt: str, response: str) -> str:
    """Identity of an item within a project: the same prompt and response are one item."""
    return hashlib.sha256(f"{prompt}\x00{response}".encode()).hexdigest()


def _text_error(record: dict[str, Any], key: str) -> str | None:
    value = record.get(key)
    if value is None:
        return "missing"
    if not isinstance(value, str):
        return f"must be text, got {type(value).__name__}"
    if not value.strip():
        return "empty"
    if len(value) > MAX_TEXT_CHARS:
        return f"longer than {MAX_TEXT_CHARS} characters"
    return nul_error(value)


def edit_of(record: dict[str, Any]) -> str | None:
    """The edit a record brings: its `edited` value, unless that is missing or empty (no edit)."""
    value = record.get("edited")
    return None if value is None or value == "" else value


def validate_record(record: dict[str, Any], line: int) -> list[RowError]:
    if "_error" in record:
        found = record["_error"]
        return [RowError(line, name, message) for name, message in ([found] if isinstance(found, tuple) else found)]
    keys = ("prompt", "response", "edited") if edit_of(record) is not None else ("prompt", "response")
    errors = [RowError(line, key, msg) for key in keys if (msg := _text_error(record, key))]
    source = record.get("source", {})
    if not isinstance(source, dict):
        errors.append(RowError(line, "source", "must be an object"))
    elif found := find_nul(source):
        errors.append(RowError(line, found[0], found[1]))
    return errors


class _Importer:
    """The running state of one import: seen hashes, counts, errors, and a digest of the content."""

    def __init__(self, session: Session, project: Project, batch: ImportBatch, edits: EditImporter | None) -> None:
        self.session, self.project, self.batch, self.edits = session, project, batch, edits
        self.seen: set[bytes] = set()
        self.errors: list[RowError] = []
        self.error_count = self.rows = self.imported = self.duplicates = 0
        self.digest = hashlib.sha256()

    def _refuse(self, problems: list[RowError]) -> None:
        self.error_count += len(problems)
        self.errors.extend(problems[: max(0, MAX_REPORTED_ERRORS - len(self.errors))])

    def add_chunk(self, chunk: list[tuple[int, dict[str, Any]]]) -> None:
        candidates = []
        for line, record in chunk:
            self.rows += 1
            problems = validate_record(record, line)
            if problems:
                self._refuse(problems)
                continue
            edit = edit_of(record)
            if edit is not None and self.edits is None:
                # Refused at once: the edits of this file would otherwise be lost without a word.
                raise ImportRejected([RowError(line, "edited", NO_SOURCE)], 1)
            digest = content_hash(record["prompt"], record["response"])
            self.digest.update(digest.encode())
            key = bytes.fromhex(digest)[:16]  # 128 bits is plenty to spot repeats; a third of the memory
            if key in self.seen:
                self.duplicates += 1
                if edit is not None and (problem := self.edits.repeated(key, edit)):
                    self._refuse([RowError(line, "edited", problem)])
                continue
            self.seen.add(key)
            if edit is not None:
                self.edits.note(key, line, edit)
            candidates.append((line, digest, record))
        if self.error_count:
            return  # the import will be refused: stop writing, keep validating
        existing = dict(self.session.execute(
            select(Item.content_hash, Item.id).where(
                Item.project_id == self.project.id, Item.content_hash.in_([d for _, d, _ in candidates])
            )
        ).tuples().all()) if candidates else {}
        rows = [self._row(digest, record) for _, digest, record in candidates if digest not in existing]
        self.duplicates += len(candidates) - len(rows)
        if rows:
            self.session.execute(insert(Item), rows)
            self.imported += len(rows)
        if self.edits is not None:
            self._store_edits(candidates, existing)

    def _store_edits(self, candidates: list[tuple[int, str, dict[str, Any]]], existing: dict[str, int]) -> None:
        with_edits = [(line, digest, edit) for line, digest, record in candidates
                      if (edit := edit_of(record)) is not None]
        new = [digest for _, digest, _ in with_edits if digest not in existing]
        ids = {**existing, **dict(self.session.execute(
            select(Item.content_hash, Item.id).where(Item.import_batch_id == self.batch.id,
                                                     Item.content_hash.in_(new))
        ).tuples().all())} if new else existing
        for line, digest, edit in with_edits:
            if problem := self.edits.store(ids[digest], edit, new_item=digest not in existing):
                self._refuse([RowError(line, "edited", problem)])
                return  # nothing more is written; the import is refused

    def _row(self, digest: str, record: dict[str, Any]) -> dict[str, Any]:
        return {
            "project_id": self.project.id,
            "import_batch_id": self.batch.id,
            "prompt": record["prompt"],
            "original": record["response"],
            "source": record.get("source") or {},
            "content_hash": digest,
            "status": ItemStatus.OPEN.value,
            "completed_count": 0,
        }


NO_SOURCE = ("this file holds edits (an `edited` column): name the source they come from to import them as "
             "its edits or suggestions, or leave the column out")


def _numbered(records: Iterable[dict[str, Any]]) -> Iterator[tuple[int, dict[str, Any]]]:
    for index, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            yield index, {"_error": ("(row)", f"expected an object, got {type(record).__name__}")}
        else:
            yield record.get("_line", index), record


def import_records(
    session: Session,
    project: Project,
    records: Iterable[dict[str, Any]],
    *,
    filename: str,
    fmt: str = "records",
    mapping: dict[str, Any] | None = None,
    actor: User | None = None,
    edits: EditSource | None = None,
) -> ImportResult:
    """Insert `records` as items of `project` in the caller's transaction, or raise ImportRejected; with
    `edits`, the records' edits too (completed edits by that source, or its suggestions)."""
    batch = ImportBatch(
        project_id=project.id, filename=filename[:500], format=fmt[:16], mapping=mapping or {},
        file_sha256="", created_by_id=actor.id if actor else None,
    )
    session.add(batch)
    session.flush()
    state = _Importer(session, project, batch, EditImporter(session, project, edits) if edits else None)
    numbered = _numbered(records)
    while chunk := list(islice(numbered, CHUNK)):
        state.add_chunk(chunk)
    if state.error_count:
        raise ImportRejected(state.errors, state.error_count)
    batch.rows_imported, batch.rows_duplicate = state.imported, state.duplicates
    batch.file_sha256 = state.digest.hexdigest()
    stored = state.edits.stored if state.edits else 0
    skipped = state.edits.duplicates if state.edits else 0
    audit.record(
        session, actor, "import", "import_batch", batch.id,
        after={"project_id": project.id, "filename": filename, "format": fmt, "imported": state.imported,
               "duplicates": state.duplicates, "mapping": json.loads(json.dumps(mapping or {})),
               **({"edits_from": edits.name, "edits_as": edits.mode, "edits": stored, "edit_duplicates": skipped}
                  if edits else {})},
    )
    return ImportResult(batch.id, state.imported, state.duplicates, state.rows, edits=stored, edit_duplicates=skipped,
                        edits_source=edits)
