"""Streaming export of a dataset version: edit pairs (JSONL, Parquet), TRL preference and SFT rows, card.

`stream_export` yields the file in pieces while reading the frozen rows with a server-side cursor, so a
version of any size is exported with bounded memory. Formats (see docs/datasets.md):

- `pairs-jsonl`, `pairs-parquet`: the edit-pair contract of product.md; in Parquet `char_diff` is a list
  of `{op, text}` structs (a Parquet list cannot mix numbers and strings).
- `preference-jsonl`, `preference-conversational-jsonl`: TRL preference rows `prompt, chosen=edited,
  rejected=original`; rows with no change, and unfixable ones, are skipped.
- `sft-jsonl`, `sft-conversational-jsonl`: TRL prompt-completion rows `prompt, completion=edited`;
  unfixable rows are skipped (their text is not a good response).
- `card`: a README.md describing the version.

Token labels are recomputed through the label engine when `tokenizer` names a tokenizer other than the
one the rows were labelled with.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import Engine, Text, cast, func, select
from sqlalchemy.orm import Session

from app.models import DatasetRow, DatasetVersion, Outcome, Project, User
from app.services.datasets import batched, iso
from app.settings import get_settings
from labels import ALGORITHM_VERSION, LabelTokenizer, analyse_edit, load_tokenizer

SessionSource = Session | Callable[[], AbstractContextManager[Session]]


class ExportError(ValueError):
    """An export that cannot be produced (unknown format or version, bad tokenizer)."""


class VersionNotFound(ExportError):
    pass


@dataclass(frozen=True)
class ExportFormat:
    name: str
    extension: str
    media_type: str
    description: str


EXPORT_FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat("pairs-jsonl", "jsonl", "application/x-ndjson", "Edit pairs with token labels (JSON Lines)"),
        ExportFormat("pairs-parquet", "parquet", "application/vnd.apache.parquet", "Edit pairs (Parquet)"),
        ExportFormat("preference-jsonl", "jsonl", "application/x-ndjson", "TRL preference: prompt/chosen/rejected"),
        ExportFormat(
            "preference-conversational-jsonl", "jsonl", "application/x-ndjson",
            "TRL preference, conversational (message lists)",
        ),
        ExportFormat("sft-jsonl", "jsonl", "application/x-ndjson", "TRL SFT: prompt/completion"),
        ExportFormat(
            "sft-conversational-jsonl", "jsonl", "application/x-ndjson", "TRL SFT, conversational (message lists)"
        ),
        ExportFormat("card", "md", "text/markdown; charset=utf-8", "Dataset card (README.md)"),
    )
}

LABEL_SCHEME = {"keep": 0, "insert": 1, "delete": 2, "replace": 3}
# Frozen rows fetched per round trip: about 5 MB of text, whatever the size of the version.
FETCH_ROWS = 500
PARALLEL_READERS = 3


def export_filename(version: DatasetVersion, fmt: str) -> str:
    if fmt == "card":
        return f"dataset-{version.id}-README.md"
    return f"dataset-{version.id}-{fmt}.{EXPORT_FORMATS[fmt].extension}"


def check_format(fmt: str) -> ExportFormat:
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of: {', '.join(EXPORT_FORMATS)}")
    return EXPORT_FORMATS[fmt]


def resolve_tokenizer(name: str | None) -> LabelTokenizer | None:
    if not name:
        return None
    try:
        return load_tokenizer(name)
    except Exception as exc:  # the label engine's loader reports missing folders and bad files alike
        raise ExportError(f"tokenizer {name!r} cannot be loaded: {exc}") from exc


# --- reading frozen rows --------------------------------------------------------------------------


def _fetch_range(engine: Engine, version_id: int, low: int, high: int) -> list[str]:
    query = (
        select(cast(DatasetRow.data, Text))
        .where(DatasetRow.dataset_version_id == version_id, DatasetRow.seq >= low, DatasetRow.seq < high)
        .order_by(DatasetRow.seq)
    )
    with engine.connect() as connection:
        return list(connection.scalars(query))


def _raw_lines(session: Session, version_id: int, readers: int = 1) -> Iterator[str]:
    """The stored JSON text of each row in order, unparsed.

    Rows are fetched by seq range (seq is dense, 0..row_count-1) on `readers` background connections,
    so the database decompresses the next ranges while this thread works on the current one; at most
    2 × readers ranges are in memory at once. Frozen rows never change, so the readers' separate
    snapshots agree.
    """
    row_count = session.get(DatasetVersion, version_id).row_count
    bind = session.get_bind()
    engine = getattr(bind, "engine", bind)
    with ThreadPoolExecutor(readers, thread_name_prefix="export-read") as pool:
        pending: deque[Future[list[str]]] = deque()
        for low in range(0, row_count, FETCH_ROWS):
            pending.append(pool.submit(_fetch_range, engine, version_id, low, low + FETCH_ROWS))
            if len(pending) >= 2 * readers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def _rows(session: Session, version_id: int) -> Iterator[dict[str, Any]]:
    return (orjson.loads(text) for text in _raw_lines(session, version_id))


def relabel(row: dict[str, Any], tokenizer: LabelTokenizer | None) -> dict[str, Any]:
    """The row with token labels, diff and stats for `tokenizer`, recomputed only when they differ."""
    if tokenizer is None or row["token_labels"].get("tokenizer_hash") == tokenizer.vocab_hash:
        return row
    return {**row, **analyse_edit(row["original"], row["edited"], tokenizer).to_record()}


# --- formats --------------------------------------------------------------------------------------


def _dumps(row: dict[str, Any]) -> bytes:
    return orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE)


def _batched_bytes(lines: Iterator[bytes], target: int = 1 << 20) -> Iterator[bytes]:
    """Join small lines into pieces of about `target` bytes: fewer, larger writes downstream."""
    buffer: list[bytes] = []
    size = 0
    for line in lines:
        buffer.append(line)
        size += len(line)
        if size >= target:
            yield b"".join(buffer)
            buffer, size = [], 0
    if buffer:
        yield b"".join(buffer)


def _pairs_jsonl(session: Session, version_id: int, tok: LabelTokenizer | None) -> Iterator[bytes]:
    if tok is None:
        # The stored text is the canonical row already: copied through without parsing, and the
        # database side is the bottleneck, so several connections read ahead.
        return (f"{text}\n".encode() for text in _raw_lines(session, version_id, PARALLEL_READERS))
    return (_dumps(relabel(row, tok)) for row in _rows(session, version_id))


def _message(role: str, content: str) -> list[dict[str, str]]:
    return [{"role": role, "content": content}]


def preference_row(row: dict[str, Any], conversational: bool) -> dict[str, Any] | None:
    if row["outcome"] == Outcome.UNFIXABLE or row["edited"] == row["original"]:
        return None
    if conversational:
        return {
            "id": row["id"],
            "prompt": _message("user", row["prompt"]),
            "chosen": _message("assistant", row["edited"]),
            "rejected": _message("assistant", row["original"]),
        }
    return {"id": row["id"], "prompt": row["prompt"], "chosen": row["edited"], "rejected": row["original"]}


def sft_row(row: dict[str, Any], conversational: bool) -> dict[str, Any] | None:
    if row["outcome"] == Outcome.UNFIXABLE:
        return None
    if conversational:
        return {
            "id": row["id"],
            "prompt": _message("user", row["prompt"]),
            "completion": _message("assistant", row["edited"]),
        }
    return {"id": row["id"], "prompt": row["prompt"], "completion": row["edited"]}


def _derived_jsonl(
    session: Session, version_id: int, convert: Callable[[dict[str, Any]], dict[str, Any] | None]
) -> Iterator[bytes]:
    for row in _rows(session, version_id):
        converted = convert(row)
        if converted is not None:
            yield _dumps(converted)


CHAR_DIFF_SEGMENT = pa.struct([("op", pa.int8()), ("text", pa.string())])
TOKEN_LABELS_TYPE = pa.struct(
    [
        ("tokenizer", pa.string()),
        ("tokenizer_hash", pa.string()),
        ("algorithm", pa.string()),
        ("original_ids", pa.list_(pa.int32())),
        ("original_labels", pa.list_(pa.int8())),
        ("edited_ids", pa.list_(pa.int32())),
        ("edited_labels", pa.list_(pa.int8())),
    ]
)
STATS_TYPE = pa.struct(
    [
        ("token_edit_distance", pa.int32()),
        ("edit_rate", pa.float64()),
        ("char_edit_distance", pa.int32()),
        ("original_tokens", pa.int32()),
        ("edited_tokens", pa.int32()),
        ("kept", pa.int32()),
        ("inserted", pa.int32()),
        ("deleted", pa.int32()),
        ("replaced", pa.int32()),
    ]
)
REVIEW_TYPE = pa.struct(
    [
        ("verdict", pa.string()),
        ("reviewer_id", pa.string()),
        ("comment", pa.string()),
        ("annotator_edited", pa.string()),
        ("created_at", pa.string()),
    ]
)
PAIRS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("item_id", pa.int64()),
        ("project", pa.string()),
        ("prompt", pa.string()),
        ("original", pa.string()),
        ("edited", pa.string()),
        ("outcome", pa.string()),
        ("token_labels", TOKEN_LABELS_TYPE),
        ("char_diff", pa.list_(CHAR_DIFF_SEGMENT)),
        ("stats", STATS_TYPE),
        ("annotator_id", pa.string()),
        ("review", REVIEW_TYPE),
        ("created_at", pa.string()),
    ]
)


# Rows are turned into Arrow a few hundred at a time (bounded Python objects), then written as row groups
# of `export_chunk_rows`.
ARROW_BATCH_ROWS = 256


def _arrow_column(values: list[Any], kind: pa.DataType) -> pa.Array:
    """One column built directly (struct by struct): several times faster than Table.from_pylist."""
    if not pa.types.is_struct(kind):
        return pa.array(values, type=kind)
    children = [_arrow_column([v[f.name] if v is not None else None for v in values], f.type) for f in kind]
    nulls = [v is None for v in values]
    mask = pa.array(nulls, type=pa.bool_()) if any(nulls) else None
    return pa.StructArray.from_arrays(children, fields=list(kind), mask=mask)


def _char_diff_column(diffs: list[list[list[Any]]]) -> pa.Array:
    offsets = [0]
    for diff in diffs:
        offsets.append(offsets[-1] + len(diff))
    segments = pa.StructArray.from_arrays(
        [pa.array([op for diff in diffs for op, _ in diff], type=pa.int8()),
         pa.array([text for diff in diffs for _, text in diff], type=pa.string())],
        fields=list(CHAR_DIFF_SEGMENT),
    )
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), segments)


def pairs_record_batch(rows: list[dict[str, Any]]) -> pa.RecordBatch:
    columns = [
        _char_diff_column([r["char_diff"] for r in rows]) if field.name == "char_diff"
        else _arrow_column([r[field.name] for r in rows], field.type)
        for field in PAIRS_SCHEMA
    ]
    return pa.RecordBatch.from_arrays(columns, schema=PAIRS_SCHEMA)


class _Sink:
    """A write-only file for ParquetWriter whose bytes are handed on after every row group."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def drain(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


# Min/max statistics only where they help a reader skip row groups: kept for the texts and token lists
# they would add kilobytes per row group to the footer the writer holds until the end.
STATISTICS_COLUMNS = ["id", "item_id", "project", "outcome", "annotator_id", "created_at"]


def _pairs_parquet(session: Session, version_id: int, chunk: int, tok: LabelTokenizer | None) -> Iterator[bytes]:
    sink = _Sink()
    writer = pq.ParquetWriter(
        pa.PythonFile(sink, mode="w"), PAIRS_SCHEMA, compression="zstd", write_statistics=STATISTICS_COLUMNS
    )
    group: list[pa.RecordBatch] = []
    rows = (relabel(row, tok) for row in _rows(session, version_id))
    for batch in batched(rows, min(chunk, ARROW_BATCH_ROWS)):
        group.append(pairs_record_batch(batch))
        if sum(b.num_rows for b in group) >= chunk:
            writer.write_table(pa.Table.from_batches(group), row_group_size=chunk)
            group = []
            # Arrow's allocator keeps freed blocks for reuse; over a thousand row groups that cache
            # fragments and grows. Handing it back each group keeps the export's memory flat.
            pa.default_memory_pool().release_unused()
            yield sink.drain()
    if group:
        writer.write_table(pa.Table.from_batches(group), row_group_size=chunk)
    writer.close()
    yield sink.drain()


# --- the dataset card -----------------------------------------------------------------------------


def _outcome_counts(session: Session, version_id: int) -> dict[str, int]:
    outcome = DatasetRow.data["outcome"].as_string()
    query = (
        select(outcome, func.count())
        .where(DatasetRow.dataset_version_id == version_id)
        .group_by(outcome)
        .order_by(outcome)
    )
    return {name: count for name, count in session.execute(query)}


def _reviewed_count(session: Session, version_id: int) -> int:
    query = select(func.count()).where(
        DatasetRow.dataset_version_id == version_id, DatasetRow.data["review"].as_string().is_not(None)
    )
    return session.scalar(query) or 0


def card_text(session: Session, version: DatasetVersion, tok: LabelTokenizer | None) -> str:
    project = session.get(Project, version.project_id) if version.project_id else None
    creator = session.get(User, version.created_by_id) if version.created_by_id else None
    outcomes = _outcome_counts(session, version.id)
    labelled_with = tok.name if tok else (project.tokenizer if project else "as recorded per row")
    lines = [
        "---",
        f"pretty_name: {json.dumps(version.name)}",
        "task_categories: [text-generation]",
        "tags: [redline, minimal-edits, token-level-labels]",
        "---",
        f"# {version.name}",
        "",
        "Minimal edits of language-model responses collected with Redline, frozen as dataset version "
        f"{version.id}. Each row pairs an original (less-preferred) response with its minimally edited "
        "version and carries token-level labels.",
        "",
        "| | |",
        "|---|---|",
        f"| Version | {version.id} |",
        f"| Project | {project.name if project else 'all projects'} |",
        f"| Rows | {version.row_count} |",
        f"| Reviewed rows | {_reviewed_count(session, version.id)} |",
        f"| Content hash (SHA-256) | `{version.content_hash}` |",
        f"| Created | {iso(version.created_at)} by {creator.username if creator else 'unknown'} |",
        f"| Tokenizer of the labels | `{labelled_with}` |",
        f"| Label algorithm | `{ALGORITHM_VERSION}` |",
        "",
        "## Rows per outcome",
        "",
        *[f"- {name}: {count}" for name, count in outcomes.items()],
        "",
        "## Filter",
        "",
        "```json",
        json.dumps(version.filter, indent=2, sort_keys=True),
        "```",
        "",
        "## Label scheme",
        "",
        "`token_labels.original_labels` has one code per token of `original`, `edited_labels` one per token "
        "of `edited` (tokenised without special tokens). Codes: "
        + ", ".join(f"`{code}` {name}" for name, code in LABEL_SCHEME.items())
        + ". Original tokens are keep/delete/replace, edited tokens keep/insert/replace "
        "(Levenshtein alignment of token ids).",
        "",
        "## Files",
        "",
        *[f"- `{name}`: {f.description}" for name, f in EXPORT_FORMATS.items() if name != "card"],
        "",
        "The content hash is the SHA-256 of the rows serialised as JSON with sorted keys and no "
        "whitespace, one per line in row order. Annotators and reviewers appear under stable pseudonyms.",
        "",
    ]
    return "\n".join(lines)


# --- entry point ----------------------------------------------------------------------------------


def _session_context(source: SessionSource) -> AbstractContextManager[Session]:
    return nullcontext(source) if isinstance(source, Session) else source()


def _format_stream(session: Session, version: DatasetVersion, fmt: str, tok: LabelTokenizer | None):
    chunk = get_settings().export_chunk_rows
    streams: dict[str, Callable[[], Iterator[bytes]]] = {
        "pairs-jsonl": lambda: _batched_bytes(_pairs_jsonl(session, version.id, tok)),
        "pairs-parquet": lambda: _pairs_parquet(session, version.id, chunk, tok),
        "preference-jsonl": lambda: _batched_bytes(
            _derived_jsonl(session, version.id, lambda r: preference_row(r, False))
        ),
        "preference-conversational-jsonl": lambda: _batched_bytes(
            _derived_jsonl(session, version.id, lambda r: preference_row(r, True))
        ),
        "sft-jsonl": lambda: _batched_bytes(_derived_jsonl(session, version.id, lambda r: sft_row(r, False))),
        "sft-conversational-jsonl": lambda: _batched_bytes(
            _derived_jsonl(session, version.id, lambda r: sft_row(r, True))
        ),
        "card": lambda: iter([card_text(session, version, tok).encode()]),
    }
    return streams[fmt]()


def open_export(source: SessionSource, version_id: int, fmt: str, tokenizer: str | None = None):
    """Validate the request up front (so an HTTP handler can answer 4xx before streaming), then return
    (version, iterator of bytes)."""
    check_format(fmt)
    resolve_tokenizer(tokenizer)  # cached, so the stream below reuses the loaded tokenizer
    with _session_context(source) as session:
        version = session.get(DatasetVersion, version_id)
        if version is None:
            raise VersionNotFound(f"dataset version {version_id} does not exist")
        session.expunge(version)
    return version, stream_export(source, version_id, fmt, tokenizer=tokenizer)


def stream_export(
    source: SessionSource, version_id: int, fmt: str, *, tokenizer: str | None = None
) -> Iterator[bytes]:
    """Yield the export of dataset version `version_id` in format `fmt`, piece by piece.

    `source` is an open Session, or a factory returning a context manager that yields one
    (`app.db.session_scope`); with a factory the session lives exactly as long as the stream.
    """
    check_format(fmt)
    tok = resolve_tokenizer(tokenizer)
    with _session_context(source) as session:
        version = session.get(DatasetVersion, version_id)
        if version is None:
            raise VersionNotFound(f"dataset version {version_id} does not exist")
        yield from _format_stream(session, version, fmt, tok)
