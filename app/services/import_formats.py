"""Reading JSONL, CSV and Parquet files as a stream of mapped records for the importer.

A mapping names the file's columns: `{"prompt": "question", "response": "answer"}`. Without one the
usual names are recognised. Preference files (`prompt, chosen, rejected`) put `rejected` up for editing
and keep `chosen` in the item's source. An `edited` column (or the one mapped to `edited`) holds edits
the file already has (app.services.edit_import). Every other column is kept in `source` too. Rows are read one
at a time (Parquet: one record batch at a time), so files of any size import in flat memory.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow.parquet as pq
from sqlalchemy.orm import Session

from app.errors import DomainError
from app.models import ImportBatch, Project, User
from app.services.edit_import import EditSource
from app.services.importer import ImportResult, import_records

FORMATS = ("jsonl", "csv", "parquet")
PROMPT_NAMES = ("prompt", "instruction", "question", "input")
RESPONSE_NAMES = ("response", "completion", "output", "answer")
EDITED_NAME = "edited"
MAPPABLE = ("prompt", "response", "chosen", "edited")


class FormatError(DomainError):
    """A file that cannot be read as the format it claims (or an unknown format)."""


def detect_format(filename: str, fmt: str | None = None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise FormatError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
        return fmt
    suffix = Path(filename).suffix.lower().lstrip(".")
    suffix = {"json": "jsonl", "ndjson": "jsonl", "pq": "parquet"}.get(suffix, suffix)
    if suffix not in FORMATS:
        raise FormatError(f"cannot tell the format of {filename!r} from its extension; choose jsonl, csv or parquet")
    return suffix


def parse_mapping(pairs: list[str] | str | None) -> dict[str, str]:
    """`prompt=question,response=answer` (or a list of `key=column`) -> {"prompt": "question", ...}."""
    if not pairs:
        return {}
    items = pairs.split(",") if isinstance(pairs, str) else pairs
    mapping = {}
    for item in (i.strip() for i in items if i.strip()):
        key, sep, column = item.partition("=")
        if not sep or key.strip() not in MAPPABLE or not column.strip():
            raise FormatError(f"mapping entry {item!r}: write prompt=COLUMN, response=COLUMN, chosen=COLUMN "
                              "or edited=COLUMN")
        mapping[key.strip()] = column.strip()
    return mapping


def _pick(columns: list[str], mapping: dict[str, str], key: str, names: tuple[str, ...]) -> str | None:
    if key in mapping:
        return mapping[key]
    return next((name for name in names if name in columns), None)


def resolve_columns(columns: list[str], mapping: dict[str, str]) -> dict[str, str | None]:
    """Which file column feeds prompt, response, chosen and edited."""
    preference = "rejected" in columns and "response" not in mapping
    response = "rejected" if preference else _pick(columns, mapping, "response", RESPONSE_NAMES)
    return {
        "prompt": _pick(columns, mapping, "prompt", PROMPT_NAMES),
        "response": response,
        "chosen": mapping.get("chosen") or ("chosen" if preference else None),
        "edited": mapping.get("edited") or (EDITED_NAME if EDITED_NAME in columns else None),
    }


def map_row(row: dict[str, Any], line: int, mapping: dict[str, str]) -> dict[str, Any]:
    columns = resolve_columns(list(row), mapping)
    missing = [
        (key, f"no column {columns[key] or 'of: ' + ', '.join(PROMPT_NAMES if key == 'prompt' else RESPONSE_NAMES)}"
              "; set a field mapping")
        for key in ("prompt", "response") if columns[key] is None or columns[key] not in row
    ]
    if "edited" in mapping and mapping["edited"] not in row:
        missing.append(("edited", f"no column {mapping['edited']}; check the field mapping"))
    if missing:
        return {"_line": line, "_error": missing}
    used = {c for c in columns.values() if c}
    source = {k: v for k, v in row.items() if k not in used and v not in (None, "")}
    if columns["chosen"]:
        source["chosen"] = row.get(columns["chosen"])
    record = {"_line": line, "prompt": row[columns["prompt"]], "response": row[columns["response"]], "source": source}
    if columns["edited"]:
        record["edited"] = row[columns["edited"]]
    return record


# Bytes that are not UTF-8 are decoded to lone surrogates (U+DC80-U+DCFF) so the row can still be
# parsed, and then the field that holds them is named.
_UNDECODED = re.compile("[\udc80-\udcff]")


def _not_utf8(row: dict[str, Any], fallback: str) -> tuple[str, str]:
    """(field, message) for a row read from bytes that are not UTF-8."""
    for key, value in row.items():
        found = _UNDECODED.search(value) if isinstance(value, str) else None
        if found or (isinstance(key, str) and _UNDECODED.search(key)):
            byte = ord((found or _UNDECODED.search(key)).group()) - 0xDC00
            field = key if found else "(header)"
            return field, _NOT_UTF8.format(byte=byte)
    return fallback, _NOT_UTF8.format(byte=0)


_NOT_UTF8 = ("is not UTF-8 text (it has the byte 0x{byte:02x}, as a Latin-1 or Windows-1252 file would): save the file "
             "as UTF-8 and import it again (Excel: Save As, \"CSV UTF-8\"; LibreOffice: character set "
             "\"Unicode (UTF-8)\")")


def _jsonl_rows(stream: BinaryIO) -> Iterator[tuple[int, dict[str, Any] | tuple[str, str]]]:
    for line_no, raw in enumerate(stream, start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except UnicodeDecodeError:
            try:
                value = json.loads(raw.decode("utf-8", "surrogateescape"))
            except json.JSONDecodeError:
                value = {}
            yield line_no, _not_utf8(value if isinstance(value, dict) else {}, "(json)")
            continue
        except json.JSONDecodeError as exc:
            yield line_no, ("(json)", f"not valid JSON: {exc}")
            continue
        yield line_no, value if isinstance(value, dict) else ("(json)", "each line must be a JSON object")


def _decoded_lines(stream: BinaryIO, undecoded: list[int]) -> Iterator[str]:
    """The file's lines as text; a line that is not UTF-8 is decoded with lone surrogates and counted."""
    for number, raw in enumerate(stream, start=1):
        try:
            yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            undecoded.append(number)
            yield raw.decode("utf-8", "surrogateescape")


def _csv_rows(stream: BinaryIO) -> Iterator[tuple[int, dict[str, Any] | tuple[str, str]]]:
    undecoded: list[int] = []
    reader = csv.DictReader(_decoded_lines(stream, undecoded))
    try:
        if reader.fieldnames and undecoded:  # the header line itself
            undecoded.clear()
            yield 1, _not_utf8(dict.fromkeys(reader.fieldnames, ""), "(header)")
        for row in reader:
            if undecoded:
                undecoded.clear()
                yield reader.line_num, _not_utf8(row, "(csv)")
            elif None in row:
                yield reader.line_num, ("(csv)", "more values than header columns")
            else:
                yield reader.line_num, row
    except csv.Error as exc:
        yield reader.line_num, ("(csv)", str(exc))


def _parquet_rows(stream: BinaryIO) -> Iterator[tuple[int, dict[str, Any] | tuple[str, str]]]:
    try:
        parquet = pq.ParquetFile(stream)
    except Exception as exc:  # pyarrow raises several unrelated types for a damaged file
        yield 1, ("(parquet)", f"not a readable Parquet file: {exc}")
        return
    row = 0
    for batch in parquet.iter_batches(batch_size=1000):
        for record in batch.to_pylist():
            row += 1
            yield row, record


_READERS = {"jsonl": _jsonl_rows, "csv": _csv_rows, "parquet": _parquet_rows}


def read_records(stream: BinaryIO, fmt: str, mapping: dict[str, str]) -> Iterator[dict[str, Any]]:
    """Mapped records, each with its `_line` (for Parquet: its row number)."""
    for line, row in _READERS[fmt](stream):
        if isinstance(row, tuple):
            yield {"_line": line, "_error": row}
        else:
            yield map_row(row, line, mapping)


def file_sha256(stream: BinaryIO) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: stream.read(1 << 20), b""):
        digest.update(block)
    stream.seek(0)
    return digest.hexdigest()


def import_file(
    session: Session, project: Project, stream: BinaryIO, *, filename: str, fmt: str | None = None,
    mapping: dict[str, str] | None = None, actor: User | None = None, edits: EditSource | None = None,
) -> ImportResult:
    """Import a seekable binary file in the caller's transaction (raises ImportRejected / FormatError);
    with `edits`, the edits of its `edited` column too."""
    fmt = detect_format(filename, fmt)
    mapping = mapping or {}
    digest = file_sha256(stream)
    result = import_records(
        session, project, read_records(stream, fmt, mapping), filename=filename, fmt=fmt, mapping=mapping,
        actor=actor, edits=edits,
    )
    session.get(ImportBatch, result.batch_id).file_sha256 = digest
    return result
