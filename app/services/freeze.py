"""Freezing dataset versions: the selected edits' export rows copied and hashed inside the database.

A version is frozen range by range of edit ids. On Postgres each range is one INSERT … SELECT that builds the
rows' JSON text in SQL (`_row_text_sql`, the same bytes as `datasets.export_row` + `row_text`) and returns the
SHA-256 of every row it wrote: nothing passes through Python but the digests. SQLite, the small embedded
default, builds the rows in Python on its one connection.

Two ways to run it:

- `create_version` (command line, tests): in the caller's transaction on one connection, all or nothing.
- `request_version` + a `freeze` job (the pages and the API answer at once; the worker runs `python -m
  app.services.freeze`, see `main`): the version exists from the start in state `freezing`, invisible to
  exports and training. On Postgres the ranges are written by several connections at once
  (REDLINE_FREEZE_CONNECTIONS), each range committed by itself, all reading one snapshot exported by a
  leading transaction, so the rows are those of one moment however long it takes. The version becomes
  `ready` in one last transaction; a failure (or cancel) deletes whatever rows were written and marks it
  `failed` with the reason, and a freeze whose process died is cleaned up by the worker (`discard_abandoned`).

Content hash, format 2 (HASH_FORMAT): the SHA-256 of the concatenated 32-byte SHA-256 digests of the rows'
UTF-8 text (the lines of the pairs-jsonl export, without their newline), in row order. Format 1, of versions
frozen before: the SHA-256 of the pairs-jsonl file itself. `content_hash` computes either from the lines.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from sqlalchemy import (
    ARRAY,
    Connection,
    Engine,
    Integer,
    LargeBinary,
    Select,
    Text,
    case,
    cast,
    create_engine,
    delete,
    func,
    insert,
    literal,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from app.db import session_scope
from app.models import DatasetRow, DatasetState, DatasetVersion, Edit, Job, User, Verdict
from app.services import audit, jobs, webhooks
from app.services.datasets import (
    DatasetError,
    DatasetFilter,
    LatestReview,
    check_name,
    iter_rows,
    pseudonym,
    pseudonym_key,
    selection,
    validate_filter_targets,
    version_summary,
)
from app.settings import get_settings

JOB_KIND = "freeze"
HASH_FORMAT = 2
T = TypeVar("T")
Report = Callable[[float, str], None]  # (progress 0..1, a line for the log or "")


class FreezeStopped(Exception):
    """The freeze was asked to stop (its job cancelled, the worker shutting down)."""


# --- the content hash -----------------------------------------------------------------------------


def content_hash(lines: Iterable[bytes], hash_format: int) -> str:
    """The content hash of a version whose rows are `lines` (UTF-8 JSON text, in order, without newlines)."""
    outer = hashlib.sha256()
    if hash_format == 1:
        for line in lines:
            outer.update(line)
            outer.update(b"\n")
    else:
        for line in lines:
            outer.update(hashlib.sha256(line).digest())
    return outer.hexdigest()


def file_lines(path: Path) -> Iterator[bytes]:
    """The rows of a downloaded pairs-jsonl file."""
    with path.open("rb") as handle:
        for line in handle:
            yield line.rstrip(b"\n")


def stored_lines(session: Session, version_id: int, chunk: int = 1000) -> Iterator[bytes]:
    """The stored rows of a version, in order."""
    low = 0
    while True:
        texts = session.scalars(
            select(DatasetRow.data).where(DatasetRow.dataset_version_id == version_id, DatasetRow.seq >= low)
            .order_by(DatasetRow.seq).limit(chunk)
        ).all()
        yield from (text.encode() for text in texts)
        if len(texts) < chunk:
            return
        low += chunk


# --- one range of edits ---------------------------------------------------------------------------


def _const(text: str) -> Any:
    return literal_column("'" + text.replace("'", "''") + "'", Text)


def _json_string(value: Any) -> Any:
    return func.coalesce(cast(func.to_json(value), Text), _const("null"))


def _json_time(value: Any) -> Any:
    """As `datasets.iso`: `2026-01-01T00:00:00+00:00`, with microseconds only when there are some."""
    utc = func.timezone("UTC", value)
    micro = func.to_char(utc, "US")
    fraction = case((micro == "000000", _const("")), else_=_const(".") + micro)
    return _const('"') + func.to_char(utc, 'YYYY-MM-DD"T"HH24:MI:SS') + fraction + _const('+00:00"')


@dataclass(frozen=True)
class Names:
    """Every user's pseudonyms as annotator and reviewer (`datasets.pseudonym`), for Postgres to look up."""

    ids: list[int]
    ann: list[str]
    rev: list[str]

    @classmethod
    def of_users(cls, conn: Connection) -> Names:
        ids = list(conn.scalars(select(User.id).order_by(User.id)))
        key = pseudonym_key()
        return cls(ids, [pseudonym("ann", i, key) for i in ids], [pseudonym("rev", i, key) for i in ids])

    def table(self, name: str) -> Any:
        return func.unnest(literal(self.ids, ARRAY(Integer)), literal(self.ann, ARRAY(Text)),
                           literal(self.rev, ARRAY(Text))).table_valued("id", "ann", "rev").render_derived(name)


def _row_text_sql(c: Any, annotator: Any, reviewer: Any) -> Any:
    """The row text of `datasets.export_row` + `row_text`, built by Postgres from a subquery of ROW_COLUMNS and the
    pseudonyms of its annotator and reviewer (Names.table). Keys in sorted order; strings through to_json (which
    escapes exactly as orjson does); floats as float8 text (`datasets.float_text`); the stored layers as they are."""
    fixed = (c.verdict == Verdict.FIX_AND_ACCEPT) & c.fixed_text.is_not(None)

    def pick(review: Any, edit: Any) -> Any:
        return case((fixed, review), else_=edit)

    def layer(review: Any, edit: Any) -> Any:
        return func.coalesce(pick(review, edit), _const("null"))

    review = case((c.verdict.is_(None), _const("null")), else_=func.concat(
        _const('{"annotator_edited":'), case((fixed, _json_string(c.edited_text)), else_=_const("null")),
        _const(',"comment":'), _json_string(c.comment),
        _const(',"created_at":'), _json_time(c.review_created_at),
        _const(',"reviewer_id":"'), reviewer.c.rev,
        _const('","verdict":'), _json_string(c.verdict),
        _const("}"),
    ))
    return func.concat(
        _const('{"annotator_id":"'), annotator.c.ann,
        _const('","annotator_kind":'), _json_string(c.annotator_kind),
        _const(',"char_diff":'), layer(c.review_char_diff, c.char_diff),
        _const(',"created_at":'), _json_time(c.created_at),
        _const(',"edited":'), _json_string(pick(c.fixed_text, c.edited_text)),
        _const(',"editor":'), _json_string(c.editor),
        _const(',"editor_model":'), _json_string(func.nullif(c.editor_model, "")),
        _const(',"human_vs_suggestion_rate":'), func.coalesce(cast(c.human_vs_suggestion_rate, Text), _const("null")),
        _const(',"id":"edit-'), c.id,
        _const('","item_id":'), c.item_id,
        _const(',"original":'), _json_string(c.original),
        _const(',"outcome":'), _json_string(c.outcome),
        _const(',"project":'), _json_string(c.project),
        _const(',"prompt":'), _json_string(c.prompt),
        _const(',"prompt_version":'), _json_string(func.nullif(c.prompt_version, "")),
        _const(',"review":'), review,
        _const(',"stats":'), layer(c.review_stats, c.stats),
        _const(',"suggestion_used":'), case((c.suggestion_used, _const("true")), else_=_const("false")),
        _const(',"token_labels":'), layer(c.review_token_labels, c.token_labels),
        _const("}"),
    )


@dataclass(frozen=True)
class Range:
    """Edits with ids in (after, upto], and where their rows start in the version."""

    after: int
    upto: int
    first_seq: int = 0


@dataclass
class Written:
    rows: int
    digests: bytes  # the rows' SHA-256 digests, concatenated in row order


def row_texts(flt: DatasetFilter, span: Range, names: Names, version_id: int = 0) -> Select:
    """(version id, seq, edit id, row text) of every row `span` writes, built by Postgres: what a freeze inserts.
    Also what the `export` benchmark builds and hashes without writing, for the ceiling of any freeze that
    writes the rows' text."""
    rows = selection(flt, after=span.after, upto=span.upto).subquery("edit_rows")
    annotator, reviewer = names.table("annotator_names"), names.table("reviewer_names")
    seq = literal(span.first_seq - 1) + func.row_number().over(order_by=rows.c.id)
    return (
        select(literal(version_id).label("version_id"), seq.label("seq"), rows.c.id.label("edit_id"),
               _row_text_sql(rows.c, annotator, reviewer).label("data"))
        .select_from(rows.join(annotator, annotator.c.id == rows.c.annotator_id)
                     .outerjoin(reviewer, reviewer.c.id == rows.c.reviewer_id))
    )


def row_digest(data: Any) -> Any:
    """The SHA-256 of a row's text (UTF-8), in SQL: what hash format 2 hashes per row."""
    return func.sha256(func.convert_to(data, "UTF8"))


def _write_range_sql(conn: Connection, flt: DatasetFilter, version_id: int, span: Range, names: Names) -> Written:
    source = row_texts(flt, span, names, version_id)
    written = (
        insert(DatasetRow)
        .from_select(["dataset_version_id", "seq", "edit_id", "data"], source)
        .returning(DatasetRow.seq, row_digest(DatasetRow.data).label("digest"))
        .cte("written")
    )
    digests = func.string_agg(written.c.digest, aggregate_order_by(literal(b"", LargeBinary), written.c.seq))
    count, joined = conn.execute(select(func.count(), digests)).one()
    return Written(count, bytes(joined or b""))


def _write_range_python(conn: Connection, flt: DatasetFilter, version_id: int, span: Range, _names: Names) -> Written:
    rows = list(iter_rows(conn, selection(flt, after=span.after, upto=span.upto)))
    if rows:
        conn.execute(insert(DatasetRow), [
            {"dataset_version_id": version_id, "seq": span.first_seq + n, "edit_id": edit_id, "data": text.decode()}
            for n, (edit_id, text) in enumerate(rows)
        ])
    return Written(len(rows), b"".join(hashlib.sha256(text).digest() for _, text in rows))


def write_range(conn: Connection, flt: DatasetFilter, version_id: int, span: Range, names: Names) -> Written:
    """Write the rows of `span` (seq from span.first_seq); Postgres builds them itself."""
    write = _write_range_sql if conn.dialect.name == "postgresql" else _write_range_python
    return write(conn, flt, version_id, span, names)


def count_range(conn: Connection, flt: DatasetFilter, span: Range) -> Counter[tuple[str, bool]]:
    """How many rows `span` will write, by (outcome, reviewed)."""
    reviewed = LatestReview.id.is_not(None)
    query = (selection(flt, (Edit.outcome, reviewed, func.count()), after=span.after, upto=span.upto)
             .order_by(None).group_by(Edit.outcome, reviewed))
    return Counter({(outcome, bool(was_reviewed)): count for outcome, was_reviewed, count in conn.execute(query)})


def plan_ranges(conn: Connection, span_ids: int) -> list[Range]:
    low, high = conn.execute(select(func.min(Edit.id), func.max(Edit.id))).one()
    if low is None:
        return []
    return [Range(after, min(after + span_ids, high)) for after in range(low - 1, high, span_ids)]


# --- a whole version ------------------------------------------------------------------------------


@dataclass
class Plan:
    ranges: list[Range]
    counts: Counter[tuple[str, bool]] = field(default_factory=Counter)

    @property
    def rows(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> dict[str, Any]:
        outcomes: Counter[str] = Counter()
        for (outcome, _), count in self.counts.items():
            outcomes[outcome] += count
        return {"outcomes": dict(sorted(outcomes.items())),
                "reviewed": sum(count for (_, reviewed), count in self.counts.items() if reviewed)}


def _numbered(ranges: list[Range], counts: list[Counter[tuple[str, bool]]]) -> Plan:
    """Where each range's rows start (ranges without rows dropped), and the totals."""
    plan, first = Plan([]), 0
    for span, count in zip(ranges, counts, strict=True):
        rows = sum(count.values())
        if rows:
            plan.ranges.append(Range(span.after, span.upto, first))
            first += rows
        plan.counts += count
    return plan


class _Progress:
    """Counting is the first tenth of the way, writing the rest (by rows)."""

    def __init__(self, report: Report | None) -> None:
        self.report = report or (lambda progress, line: None)
        self.started = time.monotonic()

    def counting(self, done: int, total: int) -> None:
        self.report(0.1 * done / max(total, 1), "")

    def planned(self, plan: Plan) -> None:
        self.report(0.1, f"{plan.rows} rows in {len(plan.ranges)} ranges of edit ids")

    def writing(self, rows: int, plan: Plan) -> None:
        rate = rows / max(time.monotonic() - self.started, 1e-9)
        self.report(0.1 + 0.9 * rows / max(plan.rows, 1), f"written {rows} of {plan.rows} rows ({rate:,.0f} rows/s)")


def _check_rows(plan: Plan) -> None:
    if not plan.rows:
        raise DatasetError("the filter selects no edits: widen it (e.g. include pending reviews)")


def _finish(session: Session, version: DatasetVersion, plan: Plan, written: list[Written]) -> None:
    rows = sum(w.rows for w in written)
    if rows != plan.rows:  # the same snapshot counted and wrote them: anything else is a bug
        raise RuntimeError(f"wrote {rows} rows where {plan.rows} were counted")
    outer = hashlib.sha256()
    for w in written:
        outer.update(w.digests)
    version.row_count, version.content_hash, version.hash_format = rows, outer.hexdigest(), HASH_FORMAT
    version.summary, version.state, version.error = plan.summary(), DatasetState.READY, ""
    session.flush()
    actor = session.get(User, version.created_by_id) if version.created_by_id else None
    audit.record(session, actor, "dataset_version.create", "dataset_version", str(version.id),
                 after={"name": version.name, "row_count": rows, "content_hash": version.content_hash})
    webhooks.enqueue(session, "dataset_version.created", version_summary(version))


def _freeze_serially(session: Session, version: DatasetVersion, flt: DatasetFilter, span_ids: int,
                     progress: _Progress, stop: threading.Event) -> None:
    """Count, write and finish the version on the session's own connection, in its transaction."""
    conn = session.connection()
    ranges = plan_ranges(conn, span_ids)
    counts = []
    for n, span in enumerate(ranges):
        counts.append(count_range(conn, flt, span))
        progress.counting(n + 1, len(ranges))
    plan = _numbered(ranges, counts)
    _check_rows(plan)
    progress.planned(plan)
    names = Names.of_users(conn)
    written: list[Written] = []
    for span in plan.ranges:
        if stop.is_set():
            raise FreezeStopped
        written.append(write_range(conn, flt, version.id, span, names))
        progress.writing(sum(w.rows for w in written), plan)
    _finish(session, version, plan, written)


def _in_parallel(engine: Engine, snapshot: str, connections: int, tasks: list[Callable[[Connection], T]],
                 stop: threading.Event, done: Callable[[int, T], None]) -> list[T]:
    """Run each task in a transaction of its own (committed) on one of `connections` connections, all reading
    the exported `snapshot`; results in task order. The first failure stops the rest and is raised."""
    results: list[Any] = [None] * len(tasks)
    queue = iter(range(len(tasks)))
    lock = threading.Lock()

    def work() -> None:
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            while not stop.is_set():
                with lock:
                    index = next(queue, None)
                if index is None:
                    return
                with conn.begin():
                    conn.exec_driver_sql(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
                    results[index] = tasks[index](conn)
                with lock:
                    done(index, results[index])

    with ThreadPoolExecutor(connections, thread_name_prefix="freeze") as pool:
        futures = [pool.submit(work) for _ in range(min(connections, len(tasks)))]
        finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((future.exception() for future in finished if future.exception()), None)
        if failed is not None:
            stop.set()  # the others stop after the range in hand
            raise failed
    if any(result is None for result in results):
        raise FreezeStopped
    return results


def _freeze_in_parallel(url: str, version_id: int, flt: DatasetFilter, span_ids: int, connections: int,
                        progress: _Progress, stop: threading.Event) -> None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as leader:
            leader = leader.execution_options(isolation_level="REPEATABLE READ")
            with leader.begin():
                leader.exec_driver_sql("SET TRANSACTION READ ONLY")
                snapshot = leader.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
                ranges = plan_ranges(leader, span_ids)
                counted: list[int] = []
                counts = _in_parallel(
                    engine, snapshot, connections, [lambda c, s=s: count_range(c, flt, s) for s in ranges], stop,
                    lambda _i, _r: (counted.append(1), progress.counting(len(counted), len(ranges))))
                plan = _numbered(ranges, counts)
                _check_rows(plan)
                progress.planned(plan)
                names = Names.of_users(leader)
                rows = [0]

                def written_one(_index: int, result: Written) -> None:
                    rows[0] += result.rows
                    progress.writing(rows[0], plan)

                written = _in_parallel(
                    engine, snapshot, connections,
                    [lambda c, s=s: write_range(c, flt, version_id, s, names) for s in plan.ranges], stop, written_one)
        with session_scope(engine) as session:
            version = session.get(DatasetVersion, version_id, with_for_update=True)
            if version is None or version.state != DatasetState.FREEZING:
                raise DatasetError(f"dataset version {version_id} is no longer being frozen")
            _finish(session, version, plan, written)
    finally:
        engine.dispose()


def _new_version(session: Session, flt: DatasetFilter, name: str, actor: User | None) -> DatasetVersion:
    name = check_name(name)
    validate_filter_targets(session, flt)
    version = DatasetVersion(name=name, project_id=flt.project_id, filter=flt.model_dump(mode="json"),
                             content_hash="", hash_format=HASH_FORMAT, created_by_id=actor.id if actor else None)
    session.add(version)
    session.flush()
    return version


def create_version(session: Session, flt: DatasetFilter, name: str, actor: User | None, *,
                   span_ids: int | None = None, report: Report | None = None) -> DatasetVersion:
    """Freeze `flt` into a new ready version now, in the caller's transaction (all or nothing), and announce it
    by webhook. Started before anything else in the session, it reads one snapshot (REPEATABLE READ)."""
    if session.get_bind().dialect.name == "postgresql" and not session.in_transaction():
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    version = _new_version(session, flt, name, actor)
    _freeze_serially(session, version, flt, span_ids or get_settings().freeze_span_ids, _Progress(report),
                     threading.Event())
    return version


def request_version(session: Session, flt: DatasetFilter, name: str, actor: User | None) -> DatasetVersion:
    """A new version in state `freezing` and the job that will fill it (run by a worker); returns at once."""
    version = _new_version(session, flt, name, actor)
    job = jobs.create_job(session, jobs.JobSpec(
        kind=JOB_KIND, config={"dataset_version_id": version.id}, base_model="", project_id=flt.project_id,
        name=f"freeze dataset {version.id}: {version.name}"[:200]), actor)
    version.job_id = job.id
    audit.record(session, actor, "dataset_version.request", "dataset_version", str(version.id),
                 after={"name": version.name, "job_id": job.id})
    return version


def discard(session: Session, version_id: int, error: str) -> None:
    """A freeze that failed: its rows go, the version stays as `failed` with the reason."""
    session.execute(delete(DatasetRow).where(DatasetRow.dataset_version_id == version_id))
    session.execute(update(DatasetVersion).where(DatasetVersion.id == version_id)
                    .values(state=DatasetState.FAILED, error=error[:2000], row_count=0))


def discard_abandoned(session: Session) -> list[int]:
    """Versions still `freezing` whose job ended (its process died, or it was reaped or cancelled): discarded."""
    abandoned = session.execute(
        select(DatasetVersion.id, Job.status, Job.error).join(Job, Job.id == DatasetVersion.job_id)
        .where(DatasetVersion.state == DatasetState.FREEZING, Job.status.in_(jobs.FINISHED))
    ).all()
    for version_id, status, error in abandoned:
        discard(session, version_id, f"the freeze job ended ({status}) before the version was complete"
                + (f": {error.strip().splitlines()[0]}" if error.strip() else ""))
    return [version_id for version_id, _, _ in abandoned]


def freeze_requested(version_id: int, report: Report | None = None, stop: threading.Event | None = None) -> None:
    """Fill a version made by `request_version` (the job's work). On failure it is discarded and the error
    raised."""
    settings = get_settings()
    stop = stop or threading.Event()
    progress = _Progress(report)
    with session_scope() as session:
        version = session.get(DatasetVersion, version_id)
        if version is None or version.state != DatasetState.FREEZING:
            raise DatasetError(f"dataset version {version_id} is not waiting to be frozen")
        flt = DatasetFilter.model_validate(version.filter)
        parallel = session.get_bind().dialect.name == "postgresql" and settings.freeze_connections > 1
    try:
        if parallel:
            _freeze_in_parallel(settings.sqlalchemy_url, version_id, flt, settings.freeze_span_ids,
                                settings.freeze_connections, progress, stop)
        else:
            with session_scope() as session:
                if session.get_bind().dialect.name == "postgresql":
                    session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
                version = session.get(DatasetVersion, version_id)
                _freeze_serially(session, version, flt, settings.freeze_span_ids, progress, stop)
    except BaseException as exc:
        reason = "cancelled" if isinstance(exc, FreezeStopped) else str(exc) or type(exc).__name__
        with session_scope() as session:
            discard(session, version_id, reason)
        raise


# --- the job's process ----------------------------------------------------------------------------


class _JobFiles:
    """progress.json and metrics.jsonl for the worker (app/worker/runner.py), log lines on stdout."""

    def __init__(self, output: Path) -> None:
        self.output = output
        output.mkdir(parents=True, exist_ok=True)

    def __call__(self, progress: float, line: str) -> None:
        tmp = self.output / "progress.json.part"
        tmp.write_text(json.dumps({"step": round(progress * 1000), "total_steps": 1000}))
        tmp.replace(self.output / "progress.json")
        if line:
            print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.services.freeze", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="the job's config.yaml (dataset_version_id)")
    parser.add_argument("--output", type=Path, required=True, help="where progress.json goes")
    args = parser.parse_args(argv)
    version_id = int(yaml.safe_load(args.config.read_text())["dataset_version_id"])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # cancel: stop after the ranges in hand, then discard
    began = time.monotonic()
    try:
        freeze_requested(version_id, _JobFiles(args.output), stop)
    except FreezeStopped:
        print(f"dataset version {version_id}: stopped; its rows were removed", flush=True)
        return 1
    except DatasetError as exc:
        print(f"dataset version {version_id}: {exc}", flush=True)
        return 1
    with session_scope() as session:
        rows = session.get(DatasetVersion, version_id).row_count
    seconds = time.monotonic() - began
    print(f"dataset version {version_id} is ready: {rows} rows in {seconds:.1f} s ({rows / seconds:,.0f} rows/s)",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
