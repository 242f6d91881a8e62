"""Submitting an annotation, and the server-rendered diff the editor shows while the annotator types.

The server never trusts the client's diff: labels, char diff and statistics are recomputed from the
submitted text with the project's (cached) tokenizer. A submit locks only its item's and its lease's
rows, so only another submit of the same item waits for it. A double submit returns the first edit: the
lease is read under that lock, and `edits.lease_id` is unique as the last line of defence. On Postgres
the usual submit is a single statement (see "the one-statement submit" below).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from psycopg import AsyncConnection
from sqlalchemy import (
    CTE,
    Column,
    ColumnElement,
    Connection,
    Select,
    bindparam,
    case,
    func,
    insert,
    literal,
    select,
    true,
    type_coerce,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from app import driver
from app.db import is_postgres
from app.driver import Steps
from app.errors import Conflict, DomainError, NotFound
from app.models import (
    COMPLETED_OUTCOMES,
    Edit,
    Item,
    ItemStatus,
    Lease,
    LeaseState,
    Outcome,
    Project,
    User,
    Webhook,
    WebhookDelivery,
    as_utc,
    utcnow,
)
from app.services import webhooks
from app.services.queue import Task, active_lease_count, lock_task, task_columns
from labels import LABEL_NAMES, EditAnalysis, TokenizerNotFound, analyse_edit, load_tokenizer

MAX_EDIT_CHARS = 200_000


@dataclass(frozen=True)
class EditorMetrics:
    """What the editor measured; clamped to sane ranges, since the client could send anything."""

    time_to_first_key_ms: int | None = None
    active_ms: int | None = None
    keystrokes: int = 0
    pastes: int = 0

    @staticmethod
    def _clamp(value: int | None, high: int) -> int | None:
        return None if value is None else max(0, min(int(value), high))

    def clamped(self) -> EditorMetrics:
        day_ms = 24 * 3600 * 1000
        return EditorMetrics(
            self._clamp(self.time_to_first_key_ms, day_ms), self._clamp(self.active_ms, day_ms),
            self._clamp(self.keystrokes, 10_000_000) or 0, self._clamp(self.pastes, 1_000_000) or 0,
        )


def found(task: Task | None) -> Task:
    """The task `queue.finding_task` found; a 404 if it found none."""
    if task is None:
        raise NotFound("This task is not yours or does not exist.")
    return task


def analyse(tokenizer: str, original: str, edited: str) -> EditAnalysis:
    """Labels, diff and statistics of an edit with the named tokenizer (a project's)."""
    if len(edited) > MAX_EDIT_CHARS:
        raise DomainError(f"The edited text is longer than {MAX_EDIT_CHARS} characters.", 413)
    return analyse_edit(original, edited, load_tokenizer(tokenizer))


def preload_tokenizers(session: Session) -> list[str]:
    """Load the active projects' tokenizers now; returns the names loaded. A load takes about 0.2 s and
    holds the interpreter, so a web process does this at startup instead of making its first submits wait
    behind it. A tokenizer that cannot be loaded is left for the request that needs it to report."""
    names = session.scalars(select(Project.tokenizer).where(Project.archived.is_(False)).distinct()).all()
    loaded = []
    for name in names:
        with suppress(TokenizerNotFound):
            load_tokenizer(name)
            loaded.append(name)
    return loaded


def _shallow(obj) -> dict:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def stored_record(analysis: EditAnalysis) -> dict:
    """`EditAnalysis.to_record()` without its deep copies (the label lists are fresh and never shared);
    on the submit path that copy cost more than the alignment itself."""
    return {
        "token_labels": _shallow(analysis.labels),
        "char_diff": [[op, piece] for op, piece in analysis.char_diff],
        "stats": _shallow(analysis.stats),
    }


_ITEM_PROJECT = select(Item.project_id).where(Item.id == bindparam("item_id"))


def project_of_item(item_id: int) -> Steps[int | None]:
    """The project of an item, as a step (see app.driver)."""
    row = yield _ITEM_PROJECT, {"item_id": item_id}
    return None if row is None else row[0]


def _existing_edit(session: Session, lease_id: int) -> Edit | None:
    return session.scalars(select(Edit).where(Edit.lease_id == lease_id)).first()


def _check_slot(session: Session, lease: Lease, item: Item, project: Project, now: datetime) -> None:
    """A lease that ran out still counts if its slot was not handed to someone else meanwhile."""
    if item.status != ItemStatus.OPEN:
        raise Conflict("This item already has all its annotations.")
    if lease.state == LeaseState.ACTIVE and as_utc(lease.expires_at) > now:
        return
    others = active_lease_count(session, item.id, now, exclude_lease=lease.id)
    if item.completed_count + others >= project.annotations_per_item:
        raise Conflict("Your lease on this item expired and it was given to someone else.")


def _edit_values(lease_id: int, annotator_id: int, item_id: int, budget: float, outcome: Outcome, text: str,
                 analysis: EditAnalysis | None, metrics: EditorMetrics, skip_reason: str) -> dict[str, Any]:
    """The edit's columns (all but those the database or the model fill in)."""
    record = stored_record(analysis) if analysis else {"token_labels": {}, "char_diff": [], "stats": {}}
    rate = analysis.stats.edit_rate if analysis else 0.0
    return dict(
        item_id=item_id, annotator_id=annotator_id, lease_id=lease_id, outcome=outcome.value,
        edited_text=text, skip_reason=skip_reason, char_diff=record["char_diff"],
        token_labels=record["token_labels"], tokenizer_hash=analysis.labels.tokenizer_hash if analysis else "",
        algorithm=analysis.labels.algorithm if analysis else "", stats=record["stats"], edit_rate=rate,
        not_minimal=rate > budget, time_to_first_key_ms=metrics.time_to_first_key_ms,
        active_ms=metrics.active_ms, keystrokes=metrics.keystrokes, pastes=metrics.pastes,
    )


# The three writes of a submit as Core statements built once: the ORM's unit of work cost more CPU than
# everything else in the transaction. The ORM objects are brought in line with set_committed_value.
_EDITS, _ITEMS, _LEASES = Edit.__table__, Item.__table__, Lease.__table__
_INSERT_EDIT = insert(_EDITS).returning(_EDITS.c.id, _EDITS.c.review_status, _EDITS.c.created_at, _EDITS.c.version)
_UPDATE_ITEM = (
    update(_ITEMS).where(_ITEMS.c.id == bindparam("item_id"))
    .values(completed_count=bindparam("completed_count"), status=bindparam("status"))
)
_UPDATE_LEASE = update(_LEASES).where(_LEASES.c.id == bindparam("lease_id")).values(state=bindparam("state"))


def _store(session: Session, values: dict[str, Any], item: Item, lease: Lease, lease_state: str) -> Edit:
    """Insert the edit and record the item's count and the lease's state; returns the edit, persistent."""
    returned = session.execute(_INSERT_EDIT, values).one()
    session.execute(_UPDATE_ITEM, {"item_id": item.id, "completed_count": item.completed_count,
                                   "status": item.status})
    session.execute(_UPDATE_LEASE, {"lease_id": lease.id, "state": lease_state})
    set_committed_value(lease, "state", lease_state)
    edit = Edit(**values, **returned._asdict())
    make_transient_to_detached(edit)
    session.add(edit)
    return edit


def _decide(outcome: Outcome, text: str, original: str) -> tuple[Outcome, str]:
    """The outcome and text to store: the untouched text is "no change needed"; only edits keep a text."""
    text = text.replace("\r\n", "\n")
    if outcome == Outcome.EDITED and text == original:
        outcome = Outcome.NO_CHANGE_NEEDED
    return outcome, text if outcome == Outcome.EDITED else original


def submit(
    session: Session, lease_id: int, user: User, outcome: Outcome, text: str = "", *,
    metrics: EditorMetrics = EditorMetrics(), skip_reason: str = "",
) -> Edit:
    """Store the annotator's decision on a leased item in one short transaction (the caller commits).

    On Postgres a completed annotation under a live lease is one statement (`_submit_at_once`); every
    other case (skips, expired leases, double submits, errors, SQLite) takes the locking path below."""
    if outcome in COMPLETED_OUTCOMES and is_postgres(session.get_bind()):
        edit = _submit_at_once(session, lease_id, user, outcome, text, metrics.clamped(), skip_reason.strip()[:2000])
        if edit is not None:
            return edit
    return submit_locking(session, lease_id, user, outcome, text, metrics=metrics, skip_reason=skip_reason)


def submit_locking(
    session: Session, lease_id: int, user: User, outcome: Outcome, text: str = "", *,
    metrics: EditorMetrics = EditorMetrics(), skip_reason: str = "",
) -> Edit:
    """`submit`'s general path: one transaction that locks the item and the lease first. For a caller that
    already tried the one-statement submit (`submit_on_driver`) and was declined."""
    if (task := lock_task(session, lease_id, user)) is None:
        raise NotFound("This task is not yours or does not exist.")
    lease, item, project = task.lease, task.item, task.project
    if lease.state in (LeaseState.SUBMITTED, LeaseState.SKIPPED) and (done := _existing_edit(session, lease.id)):
        return done
    if outcome == Outcome.SKIPPED and not skip_reason.strip():
        raise DomainError("Say why you skip this item.")
    outcome, text = _decide(outcome, text, item.original)
    analysis = analyse(project.tokenizer, item.original, text) if outcome != Outcome.SKIPPED else None
    now = utcnow()
    if outcome in COMPLETED_OUTCOMES:
        _check_slot(session, lease, item, project, now)
        completed = item.completed_count + 1
        set_committed_value(item, "completed_count", completed)
        if completed >= project.annotations_per_item:
            set_committed_value(item, "status", ItemStatus.COMPLETE.value)
    lease_state = LeaseState.SKIPPED if outcome == Outcome.SKIPPED else LeaseState.SUBMITTED
    values = _edit_values(lease.id, lease.annotator_id, item.id, project.minimality_budget, outcome, text, analysis,
                          metrics.clamped(), skip_reason.strip()[:2000])
    try:
        edit = _store(session, values, item, lease, lease_state.value)
    except IntegrityError:
        session.rollback()
        if done := _existing_edit(session, lease_id):
            return done
        raise
    _notify(session, edit, item)
    return edit


def _submitted_event(item_id: int, project_id: int, outcome: str, edit_rate: float, not_minimal: bool) -> dict:
    """Payload of `edit.submitted`, less the edit's id (the one-statement path adds it in SQL)."""
    return {"item_id": item_id, "project_id": project_id, "outcome": outcome, "edit_rate": edit_rate,
            "not_minimal": not_minimal}


def _completed_event(item_id: int, project_id: int) -> dict:
    """Payload of `item.completed`, less the final `completed_count`."""
    return {"item_id": item_id, "project_id": project_id}


def _notify(session: Session, edit: Edit, item: Item) -> None:
    """Webhook deliveries, queued in this transaction so they exist exactly when the edit does."""
    if edit.outcome == Outcome.SKIPPED:
        return
    submitted = _submitted_event(item.id, item.project_id, edit.outcome, edit.edit_rate, edit.not_minimal)
    events = [("edit.submitted", {"edit_id": edit.id, **submitted})]
    if item.status == ItemStatus.COMPLETE:
        events.append(("item.completed", {**_completed_event(item.id, item.project_id),
                                          "completed_count": item.completed_count}))
    webhooks.enqueue_many(session, events)


# --- the one-statement submit (Postgres) -----------------------------------------------------------
#
# The common submit, a completed annotation under a live lease, in one statement: lock the lease (and
# re-read it), count the item's annotation, close the lease, insert the edit and queue its webhook
# deliveries. Each step runs only if the one before it did, so the statement does all of it or nothing,
# and by itself it is a transaction: no BEGIN, no COMMIT, no lock held while Python computes labels
# (they are computed first, from the unlocked read; an item's original never changes). A live lease
# holds its slot, so no count is needed. When it does nothing, `submit` takes the locking path, which
# tells a double submit, an expired lease or a lost task apart.

# Only leases this far from expiry take the fast path: their slot cannot be handed on while it runs.
AT_ONCE_MARGIN = timedelta(seconds=30)

_DELIVERIES, _HOOKS = WebhookDelivery.__table__, Webhook.__table__
_AT_ONCE_READ = task_columns(
    Lease.state, Lease.expires_at, Item.id, Item.project_id, Item.original, Project.tokenizer,
    Project.minimality_budget, Project.annotations_per_item,
)


def _model_default(column: Column) -> ColumnElement:
    """A column's scalar default from the model, as a value in the statement: an INSERT … SELECT that
    names every column (two INSERTs into one table cannot both leave the defaults to SQLAlchemy)."""
    return literal(column.default.arg, type_=column.type)


def _build_at_once() -> Select:
    # No parameter is named like a column: SQLAlchemy would read it as a value for the INSERTs and UPDATEs.
    live = (
        select(_LEASES.c.id, _LEASES.c.item_id)
        .where(_LEASES.c.id == bindparam("the_lease"), _LEASES.c.annotator_id == bindparam("the_annotator"),
               _LEASES.c.state == LeaseState.ACTIVE.value, _LEASES.c.expires_at > bindparam("live_until"))
        .with_for_update()
        .cte("live")
    )
    counted = _ITEMS.c.completed_count + 1
    item = (
        update(_ITEMS)
        .where(_ITEMS.c.id == live.c.item_id, _ITEMS.c.status == ItemStatus.OPEN.value)
        .values(completed_count=counted, status=case(
            (counted >= bindparam("per_item"), ItemStatus.COMPLETE.value), else_=_ITEMS.c.status))
        .returning(_ITEMS.c.id, _ITEMS.c.completed_count, _ITEMS.c.status)
        .cte("item")
    )
    closed = (
        update(_LEASES).where(_LEASES.c.id == live.c.id, live.c.item_id == item.c.id)
        .values(state=LeaseState.SUBMITTED.value).returning(_LEASES.c.id).cte("closed")
    )
    # The columns `_edit_values` gives, bound as edit_<name>; the statement supplies the others.
    own = ("id", "item_id", "lease_id", "review_status", "created_at", "version")
    given = [column.name for column in _EDITS.c if column.name not in own]
    edit = (
        insert(_EDITS)
        .from_select([*own[1:], *given], select(
            item.c.id, closed.c.id, _model_default(_EDITS.c.review_status),
            bindparam("now", type_=_EDITS.c.created_at.type), _model_default(_EDITS.c.version),
            *(bindparam(f"edit_{name}", type_=_EDITS.c[name].type) for name in given),
        ).select_from(item.join(closed, true())))
        .returning(_EDITS.c.id, _EDITS.c.review_status, _EDITS.c.created_at, _EDITS.c.version)
        .cte("edit")
    )

    # The deliveries, in the order the locking path queues them: per event, per webhook.
    def event(rank: int, name: str, source: CTE, template: str, key: str, value: ColumnElement) -> Select:
        payload = bindparam(template, type_=JSONB).op("||")(func.jsonb_build_object(key, value))
        return select(literal(rank).label("rank"), literal(name).label("event"), payload.label("payload")).select_from(
            source)

    events = union_all(
        event(1, "edit.submitted", edit, "submitted_event", "edit_id", edit.c.id),
        event(2, "item.completed", item, "completed_event", "completed_count", item.c.completed_count)
        .where(item.c.status == ItemStatus.COMPLETE.value),
    ).subquery("events")
    subscribed = type_coerce(_HOOKS.c.events, JSONB)
    wants = subscribed.contains(func.jsonb_build_array(events.c.event)) | subscribed.contains([webhooks.ALL_EVENTS])
    columns = ("webhook_id", "event", "payload", "status", "attempts", "last_error", "next_attempt_at", "created_at")
    deliveries = insert(_DELIVERIES).from_select(columns, select(
        _HOOKS.c.id, events.c.event, events.c.payload, _model_default(_DELIVERIES.c.status),
        _model_default(_DELIVERIES.c.attempts), _model_default(_DELIVERIES.c.last_error), bindparam("now"),
        bindparam("now"),
    ).select_from(_HOOKS.join(events, wants)).where(_HOOKS.c.active.is_(True)).order_by(events.c.rank, _HOOKS.c.id))
    return (
        select(edit.c.id, edit.c.review_status, edit.c.created_at, edit.c.version, item.c.completed_count,
               item.c.status)
        .select_from(edit.join(item, true()))
        .add_cte(deliveries.cte("deliveries"))
    )


_AT_ONCE = _build_at_once()


def _connection_for_one_statement(session: Session) -> AbstractContextManager[Connection]:
    """A session with work in progress lends its transaction (the statement sees that work, and cannot
    wait on its locks); otherwise the statement runs alone, in autocommit."""
    if session.in_transaction():
        return nullcontext(session.connection())
    return session.get_bind().connect().execution_options(isolation_level="AUTOCOMMIT")


def _at_once(lease_id: int, user: User, outcome: Outcome, text: str, metrics: EditorMetrics,
             skip_reason: str) -> Steps[Edit | None]:
    """The one-statement submit, as steps (see app.driver): read the task unlocked, compute the labels, then
    the statement; None when it does not apply or did nothing (the caller falls back)."""
    now = utcnow()
    read = yield _AT_ONCE_READ, {"lease_id": lease_id, "user_id": user.id}
    if read is None:
        return None
    state, expires_at, item_id, project_id, original, tokenizer, budget, per_item = read
    if state != LeaseState.ACTIVE or as_utc(expires_at) <= now + AT_ONCE_MARGIN:
        return None
    outcome, text = _decide(outcome, text, original)
    values = _edit_values(lease_id, user.id, item_id, budget, outcome, text, analyse(tokenizer, original, text),
                          metrics, skip_reason)
    submitted = _submitted_event(item_id, project_id, outcome.value, values["edit_rate"], values["not_minimal"])
    done = yield _AT_ONCE, {
        **{f"edit_{name}": value for name, value in values.items()},
        "the_lease": lease_id, "the_annotator": user.id, "now": now, "live_until": now + AT_ONCE_MARGIN,
        "per_item": per_item, "submitted_event": submitted, "completed_event": _completed_event(item_id, project_id),
    }
    if done is None:
        return None
    edit_id, review_status, created_at, version, *_ = done
    return Edit(**values, id=edit_id, review_status=review_status, created_at=created_at, version=version)


def _submit_at_once(
    session: Session, lease_id: int, user: User, outcome: Outcome, text: str, metrics: EditorMetrics,
    skip_reason: str,
) -> Edit | None:
    with _connection_for_one_statement(session) as conn:
        edit = driver.run(conn, _at_once(lease_id, user, outcome, text, metrics, skip_reason))
    if edit is not None:
        make_transient_to_detached(edit)
        session.add(edit)
    return edit


async def submit_on_driver(
    conn: AsyncConnection, lease_id: int, user: User, outcome: Outcome, text: str, *,
    metrics: EditorMetrics = EditorMetrics(),
) -> Edit | None:
    """The usual submit on Postgres from the event loop (app.driver), on an autocommit connection: the
    edit, not attached to any session; None when `submit`'s locking path must decide (a skip, an expired
    lease, a double submit, a lost task)."""
    if outcome not in COMPLETED_OUTCOMES:
        return None
    return await driver.run_on_driver(conn, _at_once(lease_id, user, outcome, text, metrics.clamped(), ""))


# --- the live diff --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    text: str
    label: str  # keep | insert | delete | replace | gap (characters no token covers)


def token_spans(text: str, offsets: list[tuple[int, int]], labels: list[int]) -> list[Span]:
    """The text cut at token boundaries, each piece tagged with its token's label."""
    spans: list[Span] = []
    pos = 0
    for (start, end), label in zip(offsets, labels, strict=True):
        start = max(start, pos)  # byte-level tokenizers can report overlapping offsets
        if start > pos:
            spans.append(Span(text[pos:start], "gap"))
        if end > start:
            spans.append(Span(text[start:end], LABEL_NAMES[label]))
            pos = end
    if pos < len(text):
        spans.append(Span(text[pos:], "gap"))
    return spans


@dataclass(frozen=True)
class DiffView:
    analysis: EditAnalysis
    budget: float
    original_spans: list[Span]
    edited_spans: list[Span]

    @property
    def over_budget(self) -> bool:
        return not self.analysis.is_minimal(self.budget)

    @property
    def meter_percent(self) -> float:
        return min(100.0, 100.0 * self.analysis.stats.edit_rate / self.budget)


def diff_view(project: Project, original: str, edited: str) -> DiffView:
    analysis = analyse(project.tokenizer, original, edited.replace("\r\n", "\n"))
    labels = analysis.labels
    return DiffView(
        analysis=analysis,
        budget=project.minimality_budget,
        original_spans=token_spans(original, analysis.original_offsets, labels.original_labels),
        edited_spans=token_spans(edited.replace("\r\n", "\n"), analysis.edited_offsets, labels.edited_labels),
    )
