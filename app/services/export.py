"""Streaming export of a dataset version: edit pairs (JSONL, Parquet), TRL preference and SFT rows, card.

`stream_export` yields the file in pieces while reading the frozen rows in ranges of consecutive rows, so a
version of any size is exported with bounded memory (Parquet: plus ~28 KB of footer metadata per row
group). Formats (see docs/datasets.md):

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

import array
import gc
import json
import os
import re
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson
import psycopg.adapt
import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app.errors import DomainError
from app.models import DatasetRow, DatasetState, DatasetVersion, Outcome, Project, User
from app.services.datasets import batched, iso
from labels import ALGORITHM_VERSION, LABEL_NAMES, LabelTokenizer, analyse_edit, load_tokenizer

SessionSource = Session | Callable[[], AbstractContextManager[Session]]
T = TypeVar("T")
U = TypeVar("U")


class ExportError(DomainError):
    """An export that cannot be produced (unknown format or version, bad tokenizer)."""

    status_code = 422


class VersionNotFound(ExportError):
    status_code = 404


class VersionNotReady(ExportError):
    status_code = 409


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

# Frozen rows fetched per round trip: about 5 MB of text, whatever the size of the version.
FETCH_ROWS = 500
PARALLEL_READERS = 3
# Parquet: ranges are turned into Arrow on PARQUET_THREADS threads (Arrow's JSON reader and numpy run without
# the GIL), so the readers stay that far ahead; small ranges keep the memory in flight down.
PARQUET_READERS = 2
PARQUET_FETCH_ROWS = 250
PARQUET_THREADS = max(2, min(4, os.cpu_count() or 1))


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


class _RawText(psycopg.adapt.Loader):
    """Loads a text value as the UTF-8 bytes the server sent: rows that are copied or parsed as bytes skip a
    decode to str and an encode back."""

    def load(self, data: Any) -> bytes:
        return bytes(data)


_RANGE_SQL = (
    "SELECT data::text FROM dataset_rows WHERE dataset_version_id = %s AND seq >= %s AND seq < %s ORDER BY seq"
)


def _fetch_range(engine: Engine, version_id: int, low: int, high: int) -> list[bytes]:
    """The stored JSON text (UTF-8) of rows low..high-1, in order."""
    with engine.connect() as connection:
        if connection.dialect.driver == "psycopg":
            with connection.connection.driver_connection.cursor() as cursor:
                cursor.adapters.register_loader("text", _RawText)
                cursor.execute(_RANGE_SQL, (version_id, low, high))
                return [text for (text,) in cursor]
        query = (
            select(DatasetRow.data)
            .where(DatasetRow.dataset_version_id == version_id, DatasetRow.seq >= low, DatasetRow.seq < high)
            .order_by(DatasetRow.seq)
        )
        return [text.encode() for text in connection.scalars(query)]


def _read_ranges(session: Session, version_id: int, readers: int, rows: int = FETCH_ROWS) -> Iterator[list[bytes]]:
    """The stored JSON text (UTF-8) of the version's rows, `rows` at a time, in order.

    Ranges are fetched by seq (dense, 0..row_count-1) on `readers` background connections, so the database
    decompresses the next ranges while this thread works on the current one; at most 2 × readers ranges are
    in memory at once. Frozen rows never change, so the readers' separate snapshots agree.
    """
    row_count = session.get(DatasetVersion, version_id).row_count
    bind = session.get_bind()
    engine = getattr(bind, "engine", bind)
    with ThreadPoolExecutor(readers, thread_name_prefix="export-read") as pool:
        pending: deque[Future[list[bytes]]] = deque()
        for low in range(0, row_count, rows):
            pending.append(pool.submit(_fetch_range, engine, version_id, low, low + rows))
            if len(pending) >= 2 * readers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _in_order(convert: Callable[[T], U], items: Iterator[T], threads: int) -> Iterator[U]:
    """`convert` of each item, on `threads` threads, in order; at most 2 × threads items in flight."""
    with ThreadPoolExecutor(threads, thread_name_prefix="export-convert") as pool:
        pending: deque[Future[U]] = deque()
        for item in items:
            pending.append(pool.submit(convert, item))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _raw_lines(session: Session, version_id: int, readers: int = 1) -> Iterator[bytes]:
    """The stored JSON text (UTF-8) of each row in order, unparsed."""
    for lines in _read_ranges(session, version_id, readers):
        yield from lines


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
        return (text + b"\n" for text in _raw_lines(session, version_id, PARALLEL_READERS))
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
        ("annotator_kind", pa.string()),
        ("editor", pa.string()),
        ("editor_model", pa.string()),
        ("prompt_version", pa.string()),
        ("suggestion_used", pa.bool_()),
        ("human_vs_suggestion_rate", pa.float64()),
    ]
)


# Rows relabelled in Python are turned into Arrow a few hundred at a time (bounded Python objects).
ARROW_BATCH_ROWS = 256
# A row group is closed once it holds this much Arrow data (about 2,300 rows of ~300-token responses).
# The Parquet writer keeps about 28 KB of metadata per row group (32 leaf columns) until the end and copies
# it once more to write the footer, so memory grows by ~55 KB per row group: row groups of a fixed 1,000
# rows (which the old writer also split into 1,000 + 24) cost ~110 MB at a million rows. Groups of this
# size cost ~12 MB per million rows, and the group itself stays small.
PARQUET_GROUP_BYTES = 16 << 20
# Frozen rows are parsed by Arrow's JSON reader (C++), all but two values: char_diff mixes numbers and strings,
# which that reader cannot type, and the token labels' id lists, which it parses at a quarter of numpy's speed.
_JSON_SCHEMA = pa.schema([f for f in PAIRS_SCHEMA if f.name not in ("char_diff", "token_labels")])
_JSON_PARSE = pa_json.ParseOptions(explicit_schema=_JSON_SCHEMA, unexpected_field_behavior="ignore")
_LABEL_LISTS = {f.name: f.type.value_type for f in TOKEN_LABELS_TYPE if pa.types.is_list(f.type)}
_LABEL_NAMES_PARSE = pa_json.ParseOptions(
    explicit_schema=pa.schema([f for f in TOKEN_LABELS_TYPE if f.name not in _LABEL_LISTS]),
    unexpected_field_behavior="ignore")
_NUMPY_TYPES = {pa.int32(): np.int32, pa.int8(): np.int8}
_CHAR_DIFF_KEY = b'"char_diff":'
_AFTER_CHAR_DIFF = b',"created_at":'
_TOKEN_LABELS_KEY = b',"token_labels":'
def _arrow_column(values: list[Any], kind: pa.DataType) -> pa.Array:
    """One column built directly (struct by struct): several times faster than Table.from_pylist."""
    if not pa.types.is_struct(kind):
        return pa.array(values, type=kind)
    children = [_arrow_column([v[f.name] if v is not None else None for v in values], f.type) for f in kind]
    nulls = [v is None for v in values]
    mask = pa.array(nulls, type=pa.bool_()) if any(nulls) else None
    return pa.StructArray.from_arrays(children, fields=list(kind), mask=mask)


def _char_diff_column(diffs: list[list[list[Any]]]) -> pa.Array:
    """char_diff as a list of {op, text} structs, assembled from buffers: no `pa.array` on Python objects, which
    converts them one by one (and imports pandas, ~50 MB, where it is installed)."""
    segments = list(chain.from_iterable(diffs))
    texts = [text.encode() for _, text in segments]
    text_ends = np.zeros(len(texts) + 1, np.int32)
    np.cumsum(np.fromiter(map(len, texts), np.int32, len(texts)), out=text_ends[1:])
    count = len(segments)
    children = pa.StructArray.from_arrays(
        [pa.Array.from_buffers(pa.int8(), count, [None, pa.py_buffer(array.array("b", [op for op, _ in segments]))]),
         pa.Array.from_buffers(pa.string(), count, [None, pa.py_buffer(text_ends), pa.py_buffer(b"".join(texts))])],
        fields=list(CHAR_DIFF_SEGMENT))
    offsets = np.zeros(len(diffs) + 1, np.int32)
    np.cumsum(np.fromiter(map(len, diffs), np.int32, len(diffs)), out=offsets[1:])
    return pa.Array.from_buffers(pa.list_(CHAR_DIFF_SEGMENT), len(diffs), [None, pa.py_buffer(offsets)],
                                 children=[children])


def pairs_record_batch(rows: list[dict[str, Any]]) -> pa.RecordBatch:
    columns = [
        _char_diff_column([r["char_diff"] for r in rows]) if field.name == "char_diff"
        else _arrow_column([r.get(field.name) for r in rows], field.type)  # older versions lack provenance
        for field in PAIRS_SCHEMA
    ]
    return pa.RecordBatch.from_arrays(columns, schema=PAIRS_SCHEMA)


def _char_diff_slice(line: bytes) -> bytes:
    """The char_diff of a stored row, as its JSON text.

    Stored rows have their keys sorted, the top-level ones without whitespace: `char_diff` is followed by
    `created_at`, no key sorts between them, and `"name":` cannot occur inside a string (its quotes would be
    escaped), so the first of each marks the top-level value. Anything unexpected takes the whole row's."""
    start = line.find(_CHAR_DIFF_KEY) + len(_CHAR_DIFF_KEY)
    end = line.find(_AFTER_CHAR_DIFF, start)
    if start >= len(_CHAR_DIFF_KEY) and end > start:
        return line[start:end]
    return orjson.dumps(orjson.loads(line)["char_diff"])


def _labels_at(line: bytes) -> tuple[bytes, int]:
    """The row and where its `,"token_labels":` key is: it sorts last, and cannot occur inside a string (the quotes
    would be escaped). A row of another layout is first written as the freeze writes rows; one without the key
    gets -1."""
    cut = line.rfind(_TOKEN_LABELS_KEY)
    if cut > 0 and line.endswith(b"}"):
        return line, cut
    line = orjson.dumps(orjson.loads(line), option=orjson.OPT_SORT_KEYS)
    return line, line.rfind(_TOKEN_LABELS_KEY)


@dataclass(frozen=True)
class _Labels:
    """Where a row's token labels object lies in it."""

    line: bytes
    start: int
    end: int

    @property
    def null(self) -> bool:
        return self.end - self.start == 4 and self.line.startswith(b"null", self.start)

    def list_span(self, key: bytes) -> tuple[int, int]:
        """Where the number list after `key` lies (its digits and separators); empty when there is no such key."""
        at = self.line.find(key, self.start, self.end)
        if at < 0:
            return self.start, self.start
        first = self.line.find(b"[", at + len(key), self.end) + 1
        return first, self.line.find(b"]", first, self.end)


def _from_numpy(values: np.ndarray, kind: pa.DataType) -> pa.Array:
    """A numpy array as an Arrow array over its buffer: `pa.array(ndarray)` would import pandas (~50 MB) where it is
    installed."""
    data = np.packbits(values, bitorder="little") if kind == pa.bool_() else values
    return pa.Array.from_buffers(kind, len(values), [None, pa.py_buffer(data)])


def _numbers(labels: list[_Labels], spans: list[tuple[int, int]], name: str) -> pa.Array:
    """One number list per row (the text between its brackets) as a list array, parsed by numpy in one go."""
    kind = _LABEL_LISTS[name]
    pairs = list(zip(labels, spans, strict=True))
    counts = np.fromiter((item.line.count(b",", a, b) + 1 if b > a else 0 for item, (a, b) in pairs), np.int32,
                         len(pairs))
    total = int(counts.sum())
    text = b",".join(memoryview(item.line)[a:b] for item, (a, b) in pairs if b > a)
    try:  # int64 first: numpy wraps numbers too large for the type without a word
        values = np.fromstring(text or b"0", np.int64, sep=",")[:total]
    except ValueError:  # it stops at the first thing that is not a whole number
        values = np.zeros(0, np.int64)
    limits = np.iinfo(_NUMPY_TYPES[kind])
    if len(values) != total or (total and (values.min() < limits.min or values.max() > limits.max)):
        raise ExportError(f"token_labels.{name}: a list holds something other than whole numbers of {kind}")
    offsets = np.zeros(len(counts) + 1, np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(_from_numpy(offsets, pa.int32()),
                                    _from_numpy(values.astype(_NUMPY_TYPES[kind]), kind))


def _without(item: _Labels, spans: list[tuple[int, int]]) -> bytes:
    """The token labels object with its number lists emptied."""
    pieces, at = [], item.start
    for a, b in sorted(span for span in spans if span[1] > span[0]):
        pieces.append(memoryview(item.line)[at:a])
        at = b
    pieces.append(memoryview(item.line)[at:item.end])
    return b"".join(pieces)


def _token_labels_array(labels: list[_Labels]) -> pa.Array:
    """The token labels objects as TOKEN_LABELS_TYPE: the number lists by numpy, the rest (names) by Arrow's JSON
    reader from the objects with their lists emptied."""
    nulls = np.fromiter((item.null for item in labels), bool, len(labels))
    spans = {name: [item.list_span(b'"' + name.encode() + b'":') for item in labels] for name in _LABEL_LISTS}
    lists = {name: _numbers(labels, spans[name], name) for name in _LABEL_LISTS}
    block = b"\n".join(b"{}" if null else _without(item, [span[n] for span in spans.values()])
                       for n, (item, null) in enumerate(zip(labels, nulls, strict=True)))
    parsed = pa_json.read_json(pa.BufferReader(block), parse_options=_LABEL_NAMES_PARSE,
                               read_options=pa_json.ReadOptions(use_threads=False, block_size=len(block) + 1))
    children = [lists[f.name] if f.name in lists else parsed.column(f.name).combine_chunks()
                for f in TOKEN_LABELS_TYPE]
    return pa.StructArray.from_arrays(children, fields=list(TOKEN_LABELS_TYPE),
                                      mask=_from_numpy(nulls, pa.bool_()) if nulls.any() else None)


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Python's cycle collector paused: parsing a range allocates tens of thousands of small lists (char_diff
    segments), none in a cycle, and the collector ran often enough over them to triple the parse time. Only
    cycles wait (refcounting still frees everything); a thread that finds it paused leaves it to the one that
    paused it."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def pairs_table(lines: list[bytes]) -> pa.Table:
    """Stored rows (JSON text, UTF-8) as a table of PAIRS_SCHEMA: the same values as `pairs_record_batch` of the
    parsed rows, several times cheaper in memory and time."""
    with _no_cyclic_gc():
        return _pairs_table(lines)


def _pairs_table(lines: list[bytes]) -> pa.Table:
    rows = [_labels_at(line) for line in lines]
    # The rows without their token labels, for Arrow's JSON reader: one copy, the block itself.
    block = b"".join(chain.from_iterable(
        (memoryview(line)[:cut], b"}\n") if cut > 0 else (line, b"\n") for line, cut in rows))
    parsed = pa_json.read_json(
        pa.BufferReader(block),
        read_options=pa_json.ReadOptions(use_threads=False, block_size=len(block) + 1),
        parse_options=_JSON_PARSE,
    )
    del block
    labels = [_Labels(line, cut + len(_TOKEN_LABELS_KEY), len(line) - 1) if cut > 0 else _Labels(b"null", 0, 4)
              for line, cut in rows]
    special = {
        # All the rows' diffs in one orjson call.
        "char_diff": lambda: _char_diff_column(orjson.loads(b"[" + b",".join(map(_char_diff_slice, lines)) + b"]")),
        "token_labels": lambda: _token_labels_array(labels),
    }
    columns = [special[field.name]() if field.name in special else parsed.column(field.name)
               for field in PAIRS_SCHEMA]
    return pa.Table.from_arrays(columns, schema=PAIRS_SCHEMA)


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


def _leaf_paths(name: str, kind: pa.DataType) -> list[str]:
    if pa.types.is_struct(kind):
        return [p for f in kind for p in _leaf_paths(f"{name}.{f.name}", f.type)]
    if pa.types.is_list(kind):
        return _leaf_paths(f"{name}.list.element", kind.value_type)
    return [name]


# Dictionary encoding where values repeat (names, ops, counts, verdicts). On free text it only builds a large
# dictionary per column chunk before falling back to plain (+48 MB of memory measured while writing a 35 MB row
# group, against +11 MB without); on the token id and label lists it hashed every token for nothing: a third of
# the writing time, and zstd alone made the file a third smaller than with it.
FREE_TEXT_COLUMNS = {"id", "prompt", "original", "edited", "review.comment", "review.annotator_edited", "created_at",
                     "review.created_at"}
TOKEN_LIST_COLUMNS = {f"token_labels.{name}.list.element" for name in _LABEL_LISTS}
DICTIONARY_COLUMNS = [p for f in PAIRS_SCHEMA for p in _leaf_paths(f.name, f.type)
                      if p not in FREE_TEXT_COLUMNS | TOKEN_LIST_COLUMNS]


def _parquet_file(parts: Iterator[pa.Table | pa.RecordBatch]) -> Iterator[bytes]:
    """Write `parts` (PAIRS_SCHEMA) as one Parquet file, a row group per PARQUET_GROUP_BYTES of Arrow data,
    yielding the bytes of each row group as soon as it is written."""
    sink = _Sink()
    writer = pq.ParquetWriter(
        pa.PythonFile(sink, mode="w"), PAIRS_SCHEMA, compression="zstd", write_statistics=STATISTICS_COLUMNS,
        use_dictionary=DICTIONARY_COLUMNS,
    )
    group: list[pa.Table] = []
    size = 0

    def write_group() -> None:
        table = pa.concat_tables(group)
        writer.write_table(table, row_group_size=max(1, table.num_rows))  # the whole group as one row group

    for part in parts:
        group.append(part if isinstance(part, pa.Table) else pa.Table.from_batches([part]))
        size += part.nbytes
        if size >= PARQUET_GROUP_BYTES:
            write_group()
            group, size = [], 0
            # Arrow's allocator keeps freed blocks for reuse; hand them back after each row group.
            pa.default_memory_pool().release_unused()
            yield sink.drain()
    if group:
        write_group()
        group = []
    writer.close()
    yield sink.drain()


def _pairs_parquet(session: Session, version_id: int, tok: LabelTokenizer | None) -> Iterator[bytes]:
    if tok is None:
        # The stored rows are parsed straight into Arrow: no Python object per row but char_diff's.
        ranges = _read_ranges(session, version_id, PARQUET_READERS, PARQUET_FETCH_ROWS)
        return _parquet_file(_in_order(pairs_table, ranges, PARQUET_THREADS))
    rows = (relabel(row, tok) for row in _rows(session, version_id))
    return _parquet_file(pairs_record_batch(batch) for batch in batched(rows, ARROW_BATCH_ROWS))


# --- the dataset card -----------------------------------------------------------------------------


_HASH_EXPLAINED = {
    1: "The content hash is the SHA-256 of the `pairs-jsonl` file: the rows as JSON, one per line in row order.",
    2: "The content hash is the SHA-256 of the concatenated SHA-256 digests of the rows' UTF-8 text (the lines of "
       "the `pairs-jsonl` file without their newline), in row order.",
}


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]{}#+!|~])")


def markdown_text(text: str) -> str:
    """User text (a project or version name) as literal markdown on one line: HTML is escaped, markdown
    syntax backslash-escaped, so a name like `<img src=x>` or `**x** | y` shows as written."""
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(escaped.split()))


def tokenizer_label(name: str, vocab_hash: str | None = None) -> str:
    """How a card names a tokenizer: a hub id as is; a local folder by its folder name, since its path
    means nothing on another machine. The vocabulary hash identifies it either way."""
    path = Path(name).expanduser()
    local = path.is_absolute() or name.startswith(".") or name.count("/") > 1 or path.is_dir()
    label = f"{path.name} (a local copy)" if local else name
    return f"{label}, vocabulary hash {vocab_hash[:16]}" if vocab_hash else label


def card_text(session: Session, version: DatasetVersion, tok: LabelTokenizer | None) -> str:
    project = session.get(Project, version.project_id) if version.project_id else None
    creator = session.get(User, version.created_by_id) if version.created_by_id else None
    counts = version.summary or {"outcomes": {}, "reviewed": 0}  # counted when it was frozen
    labelled_with = (tokenizer_label(tok.name, tok.vocab_hash) if tok
                     else tokenizer_label(project.tokenizer) if project else "as recorded per row")
    lines = [
        "---",
        f"pretty_name: {json.dumps(version.name)}",
        "task_categories: [text-generation]",
        "tags: [redline, minimal-edits, token-level-labels]",
        "---",
        f"# {markdown_text(version.name)}",
        "",
        "Minimal edits of language-model responses collected with Redline, frozen as dataset version "
        f"{version.id}. Each row pairs an original (less-preferred) response with its minimally edited "
        "version and carries token-level labels.",
        "",
        "| | |",
        "|---|---|",
        f"| Version | {version.id} |",
        f"| Project | {markdown_text(project.name) if project else 'all projects'} |",
        f"| Rows | {version.row_count} |",
        f"| Reviewed rows | {counts['reviewed']} |",
        f"| Content hash (SHA-256) | `{version.content_hash}` |",
        f"| Created | {iso(version.created_at)} by {markdown_text(creator.username) if creator else 'unknown'} |",
        f"| Tokenizer of the labels | {markdown_text(labelled_with)} |",
        f"| Label algorithm | `{ALGORITHM_VERSION}` |",
        "",
        "## Rows per outcome",
        "",
        *[f"- {name}: {count}" for name, count in sorted(counts["outcomes"].items())],
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
        + ", ".join(f"`{code}` {name}" for code, name in LABEL_NAMES.items())
        + ". Original tokens are keep/delete/replace, edited tokens keep/insert/replace "
        "(Levenshtein alignment of token ids).",
        "",
        "## Files",
        "",
        *[f"- `{name}`: {f.description}" for name, f in EXPORT_FORMATS.items() if name != "card"],
        "",
        f"{_HASH_EXPLAINED[version.hash_format]} Annotators and reviewers appear under stable pseudonyms.",
        "",
    ]
    return "\n".join(lines)


# --- entry point ----------------------------------------------------------------------------------


def _session_context(source: SessionSource) -> AbstractContextManager[Session]:
    return nullcontext(source) if isinstance(source, Session) else source()


def _format_stream(session: Session, version: DatasetVersion, fmt: str, tok: LabelTokenizer | None):
    streams: dict[str, Callable[[], Iterator[bytes]]] = {
        "pairs-jsonl": lambda: _batched_bytes(_pairs_jsonl(session, version.id, tok)),
        "pairs-parquet": lambda: _pairs_parquet(session, version.id, tok),
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


def _ready_version(session: Session, version_id: int) -> DatasetVersion:
    version = session.get(DatasetVersion, version_id)
    if version is None:
        raise VersionNotFound(f"dataset version {version_id} does not exist")
    if version.state == DatasetState.FREEZING:
        raise VersionNotReady(f"dataset version {version_id} is still being frozen: try again when it is ready")
    if version.state != DatasetState.READY:
        raise VersionNotReady(f"dataset version {version_id} has no rows: its freeze failed ({version.error})")
    return version


def open_export(source: SessionSource, version_id: int, fmt: str, tokenizer: str | None = None):
    """Validate the request up front (so an HTTP handler can answer 4xx before streaming), then return
    (version, iterator of bytes)."""
    check_format(fmt)
    resolve_tokenizer(tokenizer)  # cached, so the stream below reuses the loaded tokenizer
    with _session_context(source) as session:
        version = _ready_version(session, version_id)
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
        version = _ready_version(session, version_id)
        yield from _format_stream(session, version, fmt, tok)
