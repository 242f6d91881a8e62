"""The editor job: a model editor works a project's items (or precomputes suggestions for them).

The worker runs it as the job's process (`python -m app.editors.bulk --config … --output …`), like a
training run: it heartbeats, honours cancel (SIGTERM) and is marked failed if it dies. Progress goes to
`progress.json`, throughput to `metrics.jsonl`, failures to the log and to `editor_job_items`.

Annotate mode works as the editor's annotator account through the queue's own "Next" and the one submit a
person's edit goes through. The queue gives an annotator one live lease per project, so the job leases
one item at a time and keeps the endpoint busy by asking the model ahead, for the items the queue will
hand out next (open, never held by this account, in id order); an answer for an item someone else took
meanwhile is dropped unused. A lease this account still holds from a killed run is finished first, so
after a crash nothing is lost, and the queue never offers an item twice to one account, so nothing is
edited twice.

With `batch_id` (the FIGA pipeline's revise stage) the job works only the items of that import batch:
it leases each of them with the queue's own leasing statement (`queue.lease_item`, on the locked item)
instead of "Next", which would hand out the project's other items too; everything else is the same.

An answer the model gets wrong for good (empty, cut off) fails only its item: the account skips it with
the reason, as a person would. An endpoint that keeps failing after the retries (down, timing out,
refusing) stops the job instead, before it burns through the queue; the lease in hand is kept, and the
next run of the job starts with it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from sqlalchemy import exists, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.db import session_scope
from app.driver import SessionDatabase
from app.editors import service
from app.editors.client import EditorClient, EditorFailure
from app.editors.prompts import PromptTemplate
from app.editors.propose import Proposal, Target, propose
from app.errors import DomainError, NotFound
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

T = TypeVar("T")

METRICS_EVERY_S = 1.0


@dataclass
class Tally:
    done: int = 0
    failed: int = 0
    unused: int = 0  # answers for items someone else took first
    started: float = field(default_factory=time.monotonic)

    def row(self, step: int, client: EditorClient) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return {"step": step, "done": self.done, "failed": self.failed, "edits_per_s": self.done / elapsed,
                "model_calls": client.calls, "retries": client.retries, "unused_answers": self.unused}


class EndpointDown(Exception):
    """The endpoint failed for good on an item; the job stops and keeps that item's lease."""


class Reporter:
    """Progress and metrics files the worker reads, and log lines (stdout goes to the job's log)."""

    def __init__(self, output: Path, total: int, client: EditorClient) -> None:
        self.output, self.total, self.client = output, total, client
        self.tally = Tally()
        self.last_metrics = 0.0
        output.mkdir(parents=True, exist_ok=True)

    def log(self, line: str) -> None:
        print(line, flush=True)

    def counted(self, *, final: bool = False) -> None:
        step = self.tally.done + self.tally.failed
        tmp = self.output / "progress.json.part"
        tmp.write_text(json.dumps({"step": step, "total_steps": max(self.total, step)}))
        tmp.replace(self.output / "progress.json")
        if final or time.monotonic() - self.last_metrics >= METRICS_EVERY_S:
            self.last_metrics = time.monotonic()
            with (self.output / "metrics.jsonl").open("a") as fh:
                fh.write(json.dumps(self.tally.row(step, self.client)) + "\n")


# --- database steps (each its own short transaction, run in a thread) -----------------------------


def _record(session: Session, job_id: int, item_id: int, status: str, error: str = "", edit_id: int | None = None,
            attempts: int = 1) -> None:
    row = session.get(EditorJobItem, (job_id, item_id))
    if row is None:
        row = EditorJobItem(job_id=job_id, item_id=item_id, attempts=0)
        session.add(row)
    row.status, row.error, row.edit_id, row.updated_at = status, error[:2000], edit_id, utcnow()
    row.attempts += attempts


def _target(item: Item, project: Project) -> Target:
    return Target(item.prompt, item.original, project.tokenizer, project.minimality_budget, project.guidelines_md)


def _in_scope(query, project_id: int, batch_id: int | None):
    """The job's items: the project's, or only those of one import batch."""
    query = query.where(Item.project_id == project_id)
    return query if batch_id is None else query.where(Item.import_batch_id == batch_id)


def _upcoming(session: Session, project: Project, account_id: int, skip: set[int], limit: int,
              batch_id: int | None = None) -> list[Item]:
    """The items the queue is likely to hand this account next (the queue itself decides)."""
    held = select(Lease.item_id).where(Lease.annotator_id == account_id)
    query = _in_scope(
        select(Item).where(Item.status == ItemStatus.OPEN, Item.completed_count < project.annotations_per_item,
                           Item.id.not_in(held)),
        project.id, batch_id,
    ).order_by(Item.id).limit(limit + len(skip))
    return [item for item in session.scalars(query) if item.id not in skip][:limit]


def _lease_in_batch(session: Session, project: Project, account: User, batch_id: int) -> queue.Task | None:
    """The next item of the batch this account never held, leased to it (None when none is left)."""
    tried: set[int] = set()
    while candidates := _upcoming(session, project, account.id, tried, queue.CANDIDATE_TRIES, batch_id):
        for candidate in candidates:
            tried.add(candidate.id)
            item = queue.lock_item(session, candidate.id)
            if (lease := queue.lease_item(session, item, project, account)) is not None:
                return queue.Task(lease, item, project)
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


async def _db(fn: Callable[..., T], *args) -> T:
    """`fn(session, *args)` in a unit of work of its own, off the event loop."""
    def work() -> T:
        with session_scope() as session:
            return fn(session, *args)
    return await asyncio.to_thread(work)


# --- annotate mode --------------------------------------------------------------------------------


class Annotator:
    def __init__(self, ctx: JobContext, client: EditorClient, report: Reporter) -> None:
        self.ctx, self.client, self.report = ctx, client, report
        self.db = SessionDatabase()  # each step its own unit of work, in the thread pool
        self.ahead: dict[int, asyncio.Task[Proposal]] = {}
        self.stopping = False

    def _ask(self, item: Item) -> asyncio.Task[Proposal]:
        def retried(reason: str) -> None:
            self.report.log(f"item {item.id}: retrying ({reason})")
        return asyncio.create_task(propose(self.client, self.ctx.template, _target(item, self.ctx.project), retried))

    async def _top_up(self) -> None:
        want = 2 * self.client.config.max_concurrency - len(self.ahead)
        if want <= 0:
            return
        items = await _db(_upcoming, self.ctx.project, self.ctx.account.id, set(self.ahead), want, self.ctx.batch_id)
        for item in items:
            self.ahead[item.id] = self._ask(item)

    async def _submit(self, task: queue.Task, proposal: Proposal | EditorFailure) -> None:
        """Through the one submit a person's edit goes through; then the job's own record of the item."""
        account = self.ctx.account
        if isinstance(proposal, EditorFailure):
            # The account gives the item back as a person would, with the reason; it stays visible.
            await annotation.submit(self.db, task.lease.id, account, Outcome.SKIPPED,
                                    skip_reason=f"model editor failed: {proposal.reason}")
            await _db(_record, self.ctx.job_id, task.item.id, "failed", proposal.reason, None, proposal.attempts)
            return
        edit = await annotation.submit(self.db, task.lease.id, account, proposal.outcome, proposal.text,
                                       provenance=self.ctx.provenance(proposal))
        await _db(_record, self.ctx.job_id, task.item.id, "done", "", edit.id)

    async def _finish(self, task: queue.Task) -> None:
        pending = self.ahead.pop(task.item.id, None) or self._ask(task.item)
        try:
            proposal: Proposal | EditorFailure = await pending
        except EditorFailure as failure:
            if failure.endpoint:
                await _db(_record, self.ctx.job_id, task.item.id, "failed", failure.reason, None, failure.attempts)
                raise EndpointDown(f"item {task.item.id}: the endpoint failed {failure.attempts} times: "
                                   f"{failure.reason}") from None
            proposal = failure
        try:
            await self._submit(task, proposal)
        except DomainError as exc:  # e.g. the lease ran out and the slot went to someone else
            self.report.log(f"item {task.item.id}: not stored: {exc}")
            await _db(_record, self.ctx.job_id, task.item.id, "failed", f"not stored: {exc}")
            self.report.tally.failed += 1
            return
        if isinstance(proposal, EditorFailure):
            self.report.log(f"item {task.item.id}: failed after {proposal.attempts} attempts: {proposal.reason}")
            self.report.tally.failed += 1
        else:
            self.report.tally.done += 1

    async def _lease(self) -> queue.Task | None:
        if self.ctx.batch_id is not None:
            return await _db(_lease_in_batch, self.ctx.project, self.ctx.account, self.ctx.batch_id)
        return (await queue.next_task(self.db, self.ctx.project.id, self.ctx.account))[1]

    async def run(self) -> None:
        try:
            await self._work()
        finally:
            # Answers asked ahead and not used: cancelled and collected, also when the endpoint went down
            # (else each failed one ends the process with a "never retrieved" traceback after the reason).
            for pending in self.ahead.values():
                pending.cancel()
            await asyncio.gather(*self.ahead.values(), return_exceptions=True)
            self.report.tally.unused += len(self.ahead)

    async def _work(self) -> None:
        for task in await _db(_left_behind, self.ctx.project.id, self.ctx.account.id):
            self.report.log(f"item {task.item.id}: resuming the lease a previous run left")
            await self._finish(task)
            self.report.counted()
        while not self.stopping:
            if self.ctx.limit is not None and self.report.tally.done + self.report.tally.failed >= self.ctx.limit:
                break
            await self._top_up()
            task = await self._lease()
            if task is None:
                break
            await self._finish(task)
            self.report.counted()


# --- suggest mode ---------------------------------------------------------------------------------


def _unsuggested(session: Session, project_id: int, editor_id: int, limit: int | None) -> list[Item]:
    query = (
        select(Item).where(Item.project_id == project_id, Item.status == ItemStatus.OPEN,
                           ~exists().where(Suggestion.item_id == Item.id, Suggestion.editor_id == editor_id))
        .order_by(Item.id)
    )
    return list(session.scalars(query.limit(limit) if limit else query))


def _store_suggestion(session: Session, ctx: JobContext, item_id: int, proposal: Proposal) -> None:
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(insert(Suggestion).values(
        item_id=item_id, editor_id=ctx.editor.id, text=proposal.text, editor_model=proposal.model,
        prompt_version=proposal.prompt_version, edit_rate=proposal.edit_rate, not_minimal=proposal.not_minimal,
        created_at=utcnow(),
    ).on_conflict_do_nothing(index_elements=["item_id", "editor_id"]))
    _record(session, ctx.job_id, item_id, "done")


async def suggest(ctx: JobContext, client: EditorClient, report: Reporter, items: list[Item]) -> None:
    async def one(item: Item) -> None:
        try:
            proposal = await propose(client, ctx.template, _target(item, ctx.project),
                                     lambda reason: report.log(f"item {item.id}: retrying ({reason})"))
        except EditorFailure as failure:
            await _db(_record, ctx.job_id, item.id, "failed", failure.reason, None, failure.attempts)
            if failure.endpoint:
                raise EndpointDown(f"item {item.id}: the endpoint failed {failure.attempts} times: "
                                   f"{failure.reason}") from None
            report.log(f"item {item.id}: failed after {failure.attempts} attempts: {failure.reason}")
            report.tally.failed += 1
        else:
            await _db(_store_suggestion, ctx, item.id, proposal)
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
        total = len(items) if mode == "suggest" else _remaining(session, ctx.project, ctx.account.id, ctx.batch_id)
    if ctx.limit is not None:
        total = min(total, ctx.limit)
    client = EditorClient(endpoint)
    report = Reporter(output, total, client)
    report.log(f"editor {ctx.editor.name} ({endpoint.model} at {endpoint.base_url}), prompt {ctx.template.version}, "
               f"{mode} mode, project {ctx.project.name}: {total} items, up to {endpoint.max_concurrency} at once")
    try:
        if mode == "suggest":
            await suggest(ctx, client, report, items)
        else:
            annotator = Annotator(ctx, client, report)
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, lambda: setattr(annotator, "stopping", True))
            await annotator.run()
    finally:
        await client.close()
        report.counted(final=True)
    tally = report.tally
    report.log(f"finished: {tally.done} done, {tally.failed} failed, {tally.unused} answers unused, "
               f"{client.calls} model calls, {client.retries} retries")
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
