"""The editor job: a model editor works a project's items (or precomputes suggestions for them).

The worker runs it as the job's process (`python -m app.editors.bulk --config … --output …`), like a
training run: it heartbeats, honours cancel (SIGTERM) and is marked failed if it dies. Progress goes to
`progress.json` (written once the job is ready to work, then at most every `REPORT_EVERY_S`), throughput
and how busy the endpoint was kept to `metrics.jsonl`, failures to the log and to `editor_job_items`.

Annotate mode works as the editor's annotator account through the queue's own "Next" and the one submit a
person's edit goes through. The queue gives an annotator one live lease per project, so the job leases
one item at a time and keeps the endpoint busy by asking the model ahead, for the items the queue will
offer next (`queue.upcoming`: the queue's own rule and order, read a window at a time); an answer for an
item someone else took meanwhile (the queue offered a later one) is dropped unused. A lease this account
still holds from a killed run is finished first, so after a crash nothing is lost, and the queue never
offers an item twice to one account, so nothing is edited twice.

With `batch_id` (the FIGA pipeline's revise stage) the job works only the items of that import batch:
it leases each of them with the queue's own leasing statement (`queue.lease_item`, on the locked item)
instead of "Next", which would hand out the project's other items too; everything else is the same.

An answer the model gets wrong for good (empty, cut off) fails only its item: the account skips it with
the reason, as a person would. An endpoint that keeps failing after the retries (down, timing out,
refusing) stops the job instead, before it burns through the queue; the lease in hand is kept, and the
next run of the job starts with it.

The database work runs as steps (app.driver) on the process's `Database`: on Postgres the driver's pool,
straight from the event loop, as the web app's hot paths; per edit that is "Next", the submit and the
job's record of the item, and a share of one look-ahead query.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from sqlalchemy import bindparam, exists, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.db import session_scope
from app.driver import Database, Steps, model_default, process_database, run
from app.editors import service
from app.editors.client import EditorClient, EditorFailure
from app.editors.prompts import PromptTemplate
from app.editors.propose import Proposal, Target, propose
from app.errors import DomainError, NotFound
from app.heap import freeze_startup_heap
from app.models import (
    Edit,
    EditorJobItem,
    Item,
    ItemStatus,
    Lease,
    LeaseState,
    ModelEditor,
    Outcome,
    Project,
    Suggestion,
    User,
    utcnow,
)
from app.services import annotation, queue
from app.services.annotation import Provenance
from labels import load_tokenizer

T = TypeVar("T")

# The worker reads progress and metrics every second or so: writing them after every item costs more than
# the item's own statements.
REPORT_EVERY_S = 1.0
APPLICATION_NAME = "redline-editor-job"  # its connections, in pg_stat_activity
SUGGEST_CONNECTIONS = 4  # at most, for suggest mode's answers stored as they come


@dataclass
class Tally:
    done: int = 0
    failed: int = 0
    unused: int = 0  # answers for items someone else took first
    started: float = field(default_factory=time.monotonic)

    @property
    def processed(self) -> int:
        return self.done + self.failed

    def row(self, client: EditorClient) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return {"step": self.processed, "done": self.done, "failed": self.failed, "edits_per_s": self.done / elapsed,
                "model_calls": client.calls, "retries": client.retries, "unused_answers": self.unused,
                "mean_in_flight": client.in_flight.mean()}


class EndpointDown(Exception):
    """The endpoint failed for good on an item; the job stops and keeps that item's lease."""


class Reporter:
    """Progress and metrics files the worker reads, and log lines (stdout goes to the job's log). Made when
    the job is ready to work: its progress (step 0) says so."""

    def __init__(self, output: Path, total: int, client: EditorClient) -> None:
        self.output, self.total, self.client = output, total, client
        self.tally = Tally()
        output.mkdir(parents=True, exist_ok=True)
        self.last_report = 0.0
        self.counted(now=True)

    def log(self, line: str) -> None:
        print(line, flush=True)

    def counted(self, *, now: bool = False) -> None:
        """Report the tally, if `now` or the last report is `REPORT_EVERY_S` old."""
        if not now and time.monotonic() - self.last_report < REPORT_EVERY_S:
            return
        self.last_report = time.monotonic()
        row = self.tally.row(self.client)
        tmp = self.output / "progress.json.part"
        tmp.write_text(json.dumps({"step": row["step"], "total_steps": max(self.total, row["step"])}))
        tmp.replace(self.output / "progress.json")
        with (self.output / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps(row) + "\n")


# --- the job's own records -------------------------------------------------------------------------

_JOB_ITEMS = EditorJobItem.__table__


def _new_row(insert: Callable, table: Any, names: tuple[str, ...]) -> Any:
    """An INSERT that names every column, for the driver to run compiled once (SQLAlchemy's per-execution
    defaults never run there): `names` each bound as `new_<name>` (a parameter named like its column would be
    read as a value for it), the others but the key at their model default."""
    return insert(table).values({
        column.name: bindparam(f"new_{column.name}", type_=column.type) if column.name in names
        else model_default(column)
        for column in table.c if column.name in names or not column.primary_key
    })


def _upserting_record(insert: Callable) -> Any:
    """One item's fate in the job, inserted or updated (its tries add up over runs), in one statement."""
    row = _new_row(insert, _JOB_ITEMS, ("job_id", "item_id", "status", "attempts", "error", "edit_id", "updated_at"))
    return row.on_conflict_do_update(index_elements=[_JOB_ITEMS.c.job_id, _JOB_ITEMS.c.item_id], set_={
        "status": row.excluded.status, "error": row.excluded.error, "edit_id": row.excluded.edit_id,
        "updated_at": row.excluded.updated_at, "attempts": _JOB_ITEMS.c.attempts + row.excluded.attempts,
    }).returning(_JOB_ITEMS.c.job_id)


_RECORD = {"postgresql": _upserting_record(pg_insert), "sqlite": _upserting_record(sqlite_insert)}


def recording(job_id: int, item_id: int, status: str, error: str = "", edit_id: int | None = None,
              attempts: int = 1) -> Steps[None]:
    yield _RECORD, {"new_job_id": job_id, "new_item_id": item_id, "new_status": status, "new_error": error[:2000],
                    "new_edit_id": edit_id, "new_attempts": attempts, "new_updated_at": utcnow()}


def _in_scope(query, project_id: int, batch_id: int | None):
    """The job's items: the project's, or only those of one import batch."""
    query = query.where(Item.project_id == project_id)
    return query if batch_id is None else query.where(Item.import_batch_id == batch_id)


def _lease_in_batch(session: Session, project: Project, account: User, batch_id: int) -> queue.Task | None:
    """The next item of the batch this account never held, leased to it (None when none is left)."""
    after = 0
    while candidates := run(session, queue.upcoming(project, account, after, queue.CANDIDATE_TRIES, batch_id)):
        for candidate in candidates:
            item = queue.lock_item(session, candidate.id)
            if (lease := queue.lease_item(session, item, project, account)) is not None:
                return queue.Task(lease, item, project)
        after = candidates[-1].id
    return None


def _left_behind(session: Session, project_id: int, account_id: int) -> list[queue.Task]:
    """Leases of this account a killed run left without a decision, oldest first."""
    rows = session.execute(
        select(Lease, Item, Project).join(Item, Item.id == Lease.item_id).join(Project, Project.id == Item.project_id)
        .where(Lease.annotator_id == account_id, Item.project_id == project_id,
               Lease.state.in_((LeaseState.ACTIVE, LeaseState.EXPIRED)),
               ~exists().where(Edit.lease_id == Lease.id))
        .order_by(Lease.id)
    ).all()
    return [queue.Task(*row) for row in rows]


def _remaining(session: Session, project: Project, account_id: int, batch_id: int | None = None) -> int:
    held = select(Lease.item_id).where(Lease.annotator_id == account_id, Lease.state.in_(
        (LeaseState.SUBMITTED, LeaseState.SKIPPED)))
    return session.scalar(_in_scope(
        select(func.count()).select_from(Item).where(Item.status == ItemStatus.OPEN, Item.id.not_in(held)),
        project.id, batch_id,
    )) or 0


@dataclass(frozen=True)
class JobContext:
    job_id: int
    editor: ModelEditor
    account: User
    project: Project
    template: PromptTemplate
    limit: int | None
    batch_id: int | None = None  # only this import batch's items (the FIGA pipeline's revise stage)

    def provenance(self, proposal: Proposal) -> Provenance:
        return Provenance(editor_id=self.editor.id, editor_model=proposal.model,
                          prompt_version=proposal.prompt_version)

    def target(self, prompt: str, original: str) -> Target:
        project = self.project
        return Target(prompt, original, project.tokenizer, project.minimality_budget, project.guidelines_md)


async def _db(fn: Callable[..., T], *args) -> T:
    """`fn(session, *args)` in a unit of work of its own, off the event loop."""
    def work() -> T:
        with session_scope() as session:
            return fn(session, *args)
    return await asyncio.to_thread(work)


# --- annotate mode --------------------------------------------------------------------------------

# Answers asked for ahead of the lease, per request the editor may have in flight: the endpoint stays busy
# while the job stores one edit and leases the next.
AHEAD_PER_SLOT = 2
# Items read ahead per query, per answer asked ahead: one query serves many items.
WINDOW_PER_AHEAD = 8


def _drop(answer: asyncio.Task) -> None:
    """Cancel an answer no longer wanted; of one that failed already, take the failure (else asyncio warns)."""
    if not answer.cancel() and not answer.cancelled():
        answer.exception()


class Annotator:
    def __init__(self, ctx: JobContext, client: EditorClient, report: Reporter, db: Database) -> None:
        self.ctx, self.client, self.report, self.db = ctx, client, report, db
        self.ahead: dict[int, asyncio.Task[Proposal]] = {}  # by item id
        self.upcoming: deque[queue.Upcoming] = deque()  # read ahead, not yet asked
        self.after = 0  # the last item id read ahead
        self.stopping = False

    def _ask(self, item_id: int, target: Target) -> asyncio.Task[Proposal]:
        def retried(reason: str) -> None:
            self.report.log(f"item {item_id}: retrying ({reason})")
        return asyncio.create_task(propose(self.client, self.ctx.template, target, retried))

    async def _top_up(self) -> None:
        """Ask ahead for the items the queue will offer next, as many as keep the endpoint busy (and no more
        than the job's limit leaves). The items are read a window at a time, in the queue's own order."""
        want = AHEAD_PER_SLOT * self.client.config.max_concurrency
        if self.ctx.limit is not None:
            want = min(want, self.ctx.limit - self.report.tally.processed)
        if len(self.ahead) >= want:
            return
        if len(self.upcoming) < want - len(self.ahead):
            found = await self.db.run(queue.upcoming(self.ctx.project, self.ctx.account, self.after,
                                                     WINDOW_PER_AHEAD * want, self.ctx.batch_id))
            self.upcoming.extend(found)
            self.after = found[-1].id if found else self.after
        while self.upcoming and len(self.ahead) < want:
            item = self.upcoming.popleft()
            self.ahead[item.id] = self._ask(item.id, self.ctx.target(item.prompt, item.original))

    async def _submit(self, task: queue.Task, proposal: Proposal | EditorFailure) -> None:
        """Through the one submit a person's edit goes through; then the job's own record of the item."""
        account = self.ctx.account
        if isinstance(proposal, EditorFailure):
            # The account gives the item back as a person would, with the reason; it stays visible.
            await annotation.submit(self.db, task.lease.id, account, Outcome.SKIPPED,
                                    skip_reason=f"model editor failed: {proposal.reason}")
            await self.db.run(recording(self.ctx.job_id, task.item.id, "failed", proposal.reason, None,
                                        proposal.attempts))
            return
        edit = await annotation.submit(self.db, task.lease.id, account, proposal.outcome, proposal.text,
                                       provenance=self.ctx.provenance(proposal), known=proposal.analysed)
        await self.db.run(recording(self.ctx.job_id, task.item.id, "done", "", edit.id))

    async def _finish(self, task: queue.Task) -> None:
        item = task.item
        pending = self.ahead.pop(item.id, None) or self._ask(item.id, self.ctx.target(item.prompt, item.original))
        try:
            proposal: Proposal | EditorFailure = await pending
        except EditorFailure as failure:
            if failure.endpoint:
                await self.db.run(recording(self.ctx.job_id, item.id, "failed", failure.reason, None,
                                            failure.attempts))
                raise EndpointDown(f"item {item.id}: the endpoint failed {failure.attempts} times: "
                                   f"{failure.reason}") from None
            proposal = failure
        try:
            await self._submit(task, proposal)
        except DomainError as exc:  # e.g. the lease ran out and the slot went to someone else
            self.report.log(f"item {item.id}: not stored: {exc}")
            await self.db.run(recording(self.ctx.job_id, item.id, "failed", f"not stored: {exc}"))
            self.report.tally.failed += 1
            return
        if isinstance(proposal, EditorFailure):
            self.report.log(f"item {item.id}: failed after {proposal.attempts} attempts: {proposal.reason}")
            self.report.tally.failed += 1
        else:
            self.report.tally.done += 1

    async def _lease(self) -> queue.Task | None:
        if self.ctx.batch_id is not None:
            task = await _db(_lease_in_batch, self.ctx.project, self.ctx.account, self.ctx.batch_id)
        else:
            task = (await queue.next_task(self.db, self.ctx.project.id, self.ctx.account))[1]
        if task is not None:
            self._passed(task.item.id)
        return task

    def _passed(self, offered: int) -> None:
        """The queue offers in id order: items below the one it offered now went to others meanwhile. Their
        answers are dropped (pending ones cancelled), so the look-ahead stays on what comes next."""
        for item_id in [item_id for item_id in self.ahead if item_id < offered]:
            _drop(self.ahead.pop(item_id))
            self.report.tally.unused += 1
        while self.upcoming and self.upcoming[0].id < offered:
            self.upcoming.popleft()

    async def run(self, left_behind: list[queue.Task]) -> None:
        for task in left_behind:
            self.report.log(f"item {task.item.id}: resuming the lease a previous run left")
            await self._finish(task)
            self.report.counted()
        try:
            while not self.stopping:
                if self.ctx.limit is not None and self.report.tally.processed >= self.ctx.limit:
                    break
                await self._top_up()
                task = await self._lease()
                if task is None:
                    break
                await self._finish(task)
                self.report.counted()
        finally:
            # Answers asked ahead and not used: cancelled and collected, also when the endpoint went down
            # (else each failed one ends the process with a "never retrieved" traceback after the reason).
            for pending in self.ahead.values():
                pending.cancel()
            await asyncio.gather(*self.ahead.values(), return_exceptions=True)
            self.report.tally.unused += len(self.ahead)


# --- suggest mode ---------------------------------------------------------------------------------


def _unsuggested(session: Session, project_id: int, editor_id: int, limit: int | None) -> list[Item]:
    query = (
        select(Item).where(Item.project_id == project_id, Item.status == ItemStatus.OPEN,
                           ~exists().where(Suggestion.item_id == Item.id, Suggestion.editor_id == editor_id))
        .order_by(Item.id)
    )
    return list(session.scalars(query.limit(limit) if limit else query))


_SUGGESTIONS = Suggestion.__table__


def _inserting_suggestion(insert: Callable) -> Any:
    """A suggestion, unless the editor has one for the item already (a run killed after storing it)."""
    names = ("item_id", "editor_id", "text", "editor_model", "prompt_version", "edit_rate", "not_minimal", "created_at")
    return _new_row(insert, _SUGGESTIONS, names).on_conflict_do_nothing(
        index_elements=[_SUGGESTIONS.c.item_id, _SUGGESTIONS.c.editor_id]).returning(_SUGGESTIONS.c.id)


_SUGGEST = {"postgresql": _inserting_suggestion(pg_insert), "sqlite": _inserting_suggestion(sqlite_insert)}


def storing_suggestion(ctx: JobContext, item_id: int, proposal: Proposal) -> Steps[None]:
    yield _SUGGEST, {
        "new_item_id": item_id, "new_editor_id": ctx.editor.id, "new_text": proposal.text,
        "new_editor_model": proposal.model, "new_prompt_version": proposal.prompt_version,
        "new_edit_rate": proposal.edit_rate, "new_not_minimal": proposal.not_minimal, "new_created_at": utcnow(),
    }
    yield from recording(ctx.job_id, item_id, "done")


async def suggest(ctx: JobContext, client: EditorClient, report: Reporter, db: Database, items: list[Item]) -> None:
    async def one(item: Item) -> None:
        try:
            proposal = await propose(client, ctx.template, ctx.target(item.prompt, item.original),
                                     lambda reason: report.log(f"item {item.id}: retrying ({reason})"))
        except EditorFailure as failure:
            await db.run(recording(ctx.job_id, item.id, "failed", failure.reason, None, failure.attempts))
            if failure.endpoint:
                raise EndpointDown(f"item {item.id}: the endpoint failed {failure.attempts} times: "
                                   f"{failure.reason}") from None
            report.log(f"item {item.id}: failed after {failure.attempts} attempts: {failure.reason}")
            report.tally.failed += 1
        else:
            await db.run(storing_suggestion(ctx, item.id, proposal), transaction=True)
            report.tally.done += 1
        report.counted()

    # The client's semaphore bounds the calls; tasks beyond it wait their turn. One EndpointDown cancels
    # the rest (a later run suggests only for the items still without one).
    try:
        async with asyncio.TaskGroup() as group:
            for item in items:
                group.create_task(one(item))
    except* EndpointDown as down:
        raise down.exceptions[0] from None


# --- the process ----------------------------------------------------------------------------------


def load_context(session: Session, config: dict[str, Any]) -> JobContext:
    editor = service.get_editor(session, int(config["editor_id"]))
    project = session.get(Project, int(config["project_id"]))
    if project is None:
        raise NotFound(f"project {config['project_id']} does not exist")
    limit, batch_id = config.get("limit"), config.get("batch_id")
    if batch_id is not None and config.get("mode", "annotate") != "annotate":
        raise SystemExit("config: batch_id works in annotate mode only")
    return JobContext(int(config["job_id"]), editor, session.get(User, editor.user_id), project,
                      service.template(editor), int(limit) if limit else None,
                      int(batch_id) if batch_id is not None else None)


async def run_job(config: dict[str, Any], output: Path) -> Tally:
    mode = config.get("mode", "annotate")
    if mode not in service.MODES:
        raise SystemExit(f"config: mode must be one of {', '.join(service.MODES)}, not {mode!r}")
    with session_scope() as session:
        ctx = load_context(session, config)
        endpoint = service.endpoint(ctx.editor)
        items = _unsuggested(session, ctx.project.id, ctx.editor.id, ctx.limit) if mode == "suggest" else []
        left_behind = _left_behind(session, ctx.project.id, ctx.account.id) if mode == "annotate" else []
        total = len(items) if mode == "suggest" else _remaining(session, ctx.project, ctx.account.id, ctx.batch_id)
    if ctx.limit is not None:
        total = min(total, ctx.limit)
    load_tokenizer(ctx.project.tokenizer)  # the guard's: a missing one stops the job before any model call
    freeze_startup_heap()
    # Annotate mode runs its statements one after the other, on one connection; suggest mode stores answers
    # as they come.
    pool_size = 0 if mode == "annotate" else min(endpoint.max_concurrency, SUGGEST_CONNECTIONS)
    async with process_database(APPLICATION_NAME, pool_size=pool_size) as db:
        client = EditorClient(endpoint)
        try:
            report = Reporter(output, total, client)
            report.log(f"editor {ctx.editor.name} ({endpoint.model} at {endpoint.base_url}), prompt "
                       f"{ctx.template.version}, {mode} mode, project {ctx.project.name}: {total} items, up to "
                       f"{endpoint.max_concurrency} at once")
            try:
                if mode == "suggest":
                    await suggest(ctx, client, report, db, items)
                else:
                    annotator = Annotator(ctx, client, report, db)
                    asyncio.get_running_loop().add_signal_handler(
                        signal.SIGTERM, lambda: setattr(annotator, "stopping", True))
                    await annotator.run(left_behind)
            finally:
                report.counted(now=True)
        finally:
            await client.close()
    tally = report.tally
    report.log(f"finished: {tally.done} done, {tally.failed} failed, {tally.unused} answers unused, "
               f"{client.calls} model calls, {client.retries} retries, {client.in_flight.mean():.2f} requests in "
               f"flight on average")
    return tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.editors.bulk", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    config = yaml.safe_load(args.config.read_text())
    try:
        asyncio.run(run_job(config, args.output))
    except EndpointDown as exc:
        print(f"stopped: {exc}. The next run of this job resumes here.", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
