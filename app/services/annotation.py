"""Submitting an annotation, and the server-rendered diff the editor shows while the annotator types.

The server never trusts the client's diff: labels, char diff and statistics are recomputed from the
submitted text with the project's (cached) tokenizer. `submit` is the one way to store an annotation (the
editor's form, a model editor's worker, scripts, tests): written once as steps (app.driver), it runs on
whichever `Database` the caller has. Its rules are each written once and shared by its two paths: lease
validity (`queue.holds_slot`), completion (`_counting`) and webhook matching (`webhooks.subscribers`).
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass, fields, replace
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    Select,
    bindparam,
    case,
    func,
    insert,
    literal,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import ReturningUpdate

from app.driver import Database, Steps, entity, labelled, lock_for_write, model_default, run
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
    WebhookDelivery,
    counted_kinds,
    utcnow,
)
from app.services import suggestions, webhooks
from app.services.queue import LOCKED_TASK, OTHER_LEASES, Task, holds_slot, task_columns, task_of
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


@dataclass(frozen=True)
class Provenance:
    """Where an edit came from beyond its annotator: the model editor that wrote it (model, prompt
    version), or whose suggestion a person started from (the same three) and how far (edit rate) they
    moved from it."""

    editor_id: int | None = None
    editor_model: str = ""
    prompt_version: str = ""
    suggestion_used: bool = False
    human_vs_suggestion_rate: float | None = None


HUMAN = Provenance()


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


@dataclass(frozen=True)
class Analysed:
    """An edit this process analysed already with `analyse` (a model editor's minimality guard does, before
    it submits): what it was computed from, and the result."""

    tokenizer: str
    original: str
    edited: str
    analysis: EditAnalysis


def analysed(tokenizer: str, original: str, edited: str, known: Analysed | None) -> EditAnalysis:
    """`analyse`, unless `known` is that very computation (the same tokenizer, original and text as the
    submit read and decided): the server's own result either way, never one a client sent."""
    if known is not None and (known.tokenizer, known.original, known.edited) == (tokenizer, original, edited):
        return known.analysis
    return analyse(tokenizer, original, edited)


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
    return None if row is None else row.project_id


def decide_outcome(outcome: Outcome, text: str, original: str) -> tuple[Outcome, str]:
    """The outcome and text to store: the untouched text is "no change needed"; only edits keep a text."""
    text = text.replace("\r\n", "\n")
    if outcome == Outcome.EDITED and text == original:
        outcome = Outcome.NO_CHANGE_NEEDED
    return outcome, text if outcome == Outcome.EDITED else original


def _edit_values(lease_id: int, annotator_id: int, item_id: int, budget: float, outcome: Outcome, text: str,
                 analysis: EditAnalysis | None, metrics: EditorMetrics, skip_reason: str,
                 provenance: Provenance) -> dict[str, Any]:
    """The edit's columns (all but those the database or the model fill in)."""
    record = stored_record(analysis) if analysis else {"token_labels": {}, "char_diff": [], "stats": {}}
    rate = analysis.stats.edit_rate if analysis else 0.0
    return dict(
        item_id=item_id, annotator_id=annotator_id, lease_id=lease_id, outcome=outcome.value,
        edited_text=text, skip_reason=skip_reason, char_diff=record["char_diff"],
        token_labels=record["token_labels"], tokenizer_hash=analysis.labels.tokenizer_hash if analysis else "",
        algorithm=analysis.labels.algorithm if analysis else "", stats=record["stats"], edit_rate=rate,
        not_minimal=rate > budget, time_to_first_key_ms=metrics.time_to_first_key_ms,
        active_ms=metrics.active_ms, keystrokes=metrics.keystrokes, pastes=metrics.pastes, **_shallow(provenance),
    )


# --- the statements of a submit, each written once ---------------------------------------------------
#
# Built once at import, as Core statements that name every column, so the driver can run them compiled
# once. No parameter is named like a column: SQLAlchemy would read it as a value for the INSERTs and UPDATEs.

_EDITS, _ITEMS, _LEASES = Edit.__table__, Item.__table__, Lease.__table__


def _counting(item_id: ColumnElement) -> ReturningUpdate:
    """THE completion rule: count one more completed annotation on an open item, which is complete once it
    has `per_item` of them; `counts` is 1, or 0 for an edit that comes on top of N (`counts_toward_n`).
    Returns the item's id, new count and status; no row if it was not open."""
    counted = _ITEMS.c.completed_count + bindparam("counts", type_=Integer)
    return (
        update(_ITEMS)
        .where(_ITEMS.c.id == item_id, _ITEMS.c.status == ItemStatus.OPEN.value)
        .values(completed_count=counted, status=case(
            (counted >= bindparam("per_item"), ItemStatus.COMPLETE.value), else_=_ITEMS.c.status))
        .returning(_ITEMS.c.id, _ITEMS.c.completed_count, _ITEMS.c.status)
    )


def counts_toward_n(annotator: User, model_edits_count: bool) -> int:
    """1 if the annotator's completed edit counts toward the item's N in a project with this setting, else 0
    (a model editor's edit on top of N); `_counting`'s `counts`."""
    return int(annotator.kind in counted_kinds(model_edits_count))


def _closing(lease_id: ColumnElement, state: LeaseState) -> ReturningUpdate:
    return update(_LEASES).where(_LEASES.c.id == lease_id).values(state=state.value).returning(_LEASES.c.id)


_OWN = ("item_id", "lease_id", "review_status", "created_at", "version")
_GIVEN = tuple(column.name for column in _EDITS.c if column.name not in ("id", *_OWN))  # `_edit_values`, as edit_*
_STORED = (_EDITS.c.id, _EDITS.c.review_status, _EDITS.c.created_at, _EDITS.c.version)


def _inserting_edit(item_id: ColumnElement, lease_id: ColumnElement) -> Select:
    """The row of a new edit: `_edit_values` bound as edit_<name>, the time as `now`, the model's defaults."""
    return select(
        item_id, lease_id, model_default(_EDITS.c.review_status), bindparam("now", type_=_EDITS.c.created_at.type),
        model_default(_EDITS.c.version), *(bindparam(f"edit_{name}", type_=_EDITS.c[name].type) for name in _GIVEN),
    )


def _edit_params(values: dict[str, Any]) -> dict[str, Any]:
    return {f"edit_{name}": values[name] for name in _GIVEN}


def _stored_edit(values: dict[str, Any], row) -> Edit:
    """The edit as stored: its values and what the database filled in (not attached to any session)."""
    return Edit(**values, id=row.id, review_status=row.review_status, created_at=row.created_at, version=row.version)


def _events(item_id: int, project_id: int, values: dict[str, Any]) -> tuple[dict, dict]:
    """The payloads of `edit.submitted` (less the edit's id) and `item.completed` (less the final count)."""
    submitted = {"item_id": item_id, "project_id": project_id, "outcome": values["outcome"],
                 "edit_rate": values["edit_rate"], "not_minimal": values["not_minimal"]}
    return submitted, {"item_id": item_id, "project_id": project_id}


# --- the locking path ------------------------------------------------------------------------------
#
# Every case, on every database: one transaction that locks the item's and the lease's rows first, so only
# another submit of the same item waits for it. A double submit returns the first edit (the lease is read
# under the lock; `edits.lease_id` is unique as the last line of defence).

_EDIT_OF_LEASE = labelled(select(_EDITS)).where(_EDITS.c.lease_id == bindparam("lease_id"))
_COUNT_ANNOTATION = _counting(bindparam("item_id"))
_CLOSE_LEASE = {state: _closing(bindparam("lease_id"), state) for state in (LeaseState.SUBMITTED, LeaseState.SKIPPED)}
_INSERT_EDIT = insert(_EDITS).from_select(
    [*_OWN, *_GIVEN], _inserting_edit(bindparam("the_item"), bindparam("the_lease"))
).returning(*_STORED)


def _from_suggestion(provenance: Provenance, suggestion_id: int | None, item_id: int, tokenizer: str,
                     text: str) -> Steps[Provenance]:
    """`provenance`, and if the edit started from the item's suggestion `suggestion_id`: the suggestion's
    editor, model and prompt version, that it was used, and the person's edit rate relative to it (the
    stored text against the suggestion's, by the label engine with the project's tokenizer, as every edit
    rate)."""
    if suggestion_id is None:
        return provenance
    suggestion = yield from suggestions.suggestion_of_item(suggestion_id, item_id)
    return replace(provenance, editor_id=suggestion.editor_id, editor_model=suggestion.editor_model,
                   prompt_version=suggestion.prompt_version, suggestion_used=True,
                   human_vs_suggestion_rate=rate_on_suggestion(tokenizer, suggestion.text, text))


def rate_on_suggestion(tokenizer: str, suggested: str, text: str) -> float:
    """A person's edit rate relative to the suggestion they started from: their stored text measured
    against the suggestion's, as any edit against its original."""
    return analyse(tokenizer, suggested.replace("\r\n", "\n"), text).stats.edit_rate


def _locking(lease_id: int, user: User, outcome: Outcome, text: str, metrics: EditorMetrics,
             skip_reason: str, provenance: Provenance = HUMAN, suggestion_id: int | None = None,
             known: Analysed | None = None) -> Steps[Edit]:
    now = utcnow()
    row = yield LOCKED_TASK, {"lease_id": lease_id, "user_id": user.id, "now": now}
    if row is None:
        raise NotFound("This task is not yours or does not exist.")
    task = task_of(row)
    lease, item, project = task.lease, task.item, task.project
    if lease.state in (LeaseState.SUBMITTED, LeaseState.SKIPPED) and (
        done := (yield _EDIT_OF_LEASE, {"lease_id": lease.id})
    ):
        return entity(Edit, done)
    if outcome == Outcome.SKIPPED and not skip_reason:
        raise DomainError("Say why you skip this item.")
    outcome, text = decide_outcome(outcome, text, item.original)
    provenance = yield from _from_suggestion(provenance, suggestion_id, item.id, project.tokenizer, text)
    analysis = analysed(project.tokenizer, item.original, text, known) if outcome != Outcome.SKIPPED else None
    values = _edit_values(lease.id, lease.annotator_id, item.id, project.minimality_budget, outcome, text, analysis,
                          metrics, skip_reason, provenance)
    counted = None
    if outcome in COMPLETED_OUTCOMES:
        if item.status != ItemStatus.OPEN:
            raise Conflict("This item already has all its annotations.")
        counts = counts_toward_n(user, project.model_edits_count)
        # A lease that ran out still counts if its slot was not handed to someone else meanwhile (an edit on
        # top of N needs no slot).
        if counts and not row.live and item.completed_count + (
            yield OTHER_LEASES, {"item_id": item.id, "lease_id": lease.id, "now": now}
        ).holding >= project.annotations_per_item:
            raise Conflict("Your lease on this item expired and it was given to someone else.")
        counted = yield _COUNT_ANNOTATION, {"item_id": item.id, "per_item": project.annotations_per_item,
                                            "counts": counts}
    yield _CLOSE_LEASE[LeaseState.SKIPPED if outcome == Outcome.SKIPPED else LeaseState.SUBMITTED], {
        "lease_id": lease.id}
    edit = _stored_edit(values, (yield _INSERT_EDIT, {**_edit_params(values), "the_item": item.id,
                                                       "the_lease": lease.id, "now": now}))
    if counted is not None:
        submitted, completed = _events(item.id, project.id, values)
        events = [("edit.submitted", {"edit_id": edit.id, **submitted})]
        if counted.status == ItemStatus.COMPLETE:
            events.append(("item.completed", {**completed, "completed_count": counted.completed_count}))
        yield from webhooks.queueing(events, now)
    return edit


# --- the one-statement submit (Postgres) -----------------------------------------------------------
#
# The common submit, a completed annotation under a live lease, in one statement: lock the lease (and
# re-read it), count the item's annotation, close the lease, insert the edit and queue its webhook
# deliveries. Each step runs only if the one before it did, so the statement does all of it or nothing,
# and by itself it is a transaction: no BEGIN, no COMMIT, no lock held while Python computes labels
# (they are computed first, from the unlocked read; an item's original never changes). A live lease
# holds its slot, so no count is needed. When it does nothing, `submit` takes the locking path, which
# tells a double submit, an expired lease or a lost task apart. The rules are the locking path's own:
# `queue.holds_slot`, `_counting`, `webhooks.subscribers` (on the subscriptions the first read brings).

# Only leases this far from expiry take the one statement: the item is not locked while it runs, so a
# lease must still hold its slot when the statement ends, however long the labels took.
AT_ONCE_MARGIN = timedelta(seconds=30)

_AT_ONCE_READ = task_columns(
    Lease.state, Item.id, Item.project_id, Item.original, Project.tokenizer, Project.minimality_budget,
    Project.annotations_per_item, Project.model_edits_count, holds_slot(bindparam("live_until")).label("live"),
    webhooks.SUBSCRIPTIONS["postgresql"].scalar_subquery().label("hooks"),
)


def _build_at_once() -> Select:
    live = (
        select(_LEASES.c.id, _LEASES.c.item_id)
        .where(_LEASES.c.id == bindparam("the_lease"), _LEASES.c.annotator_id == bindparam("the_annotator"),
               holds_slot(bindparam("live_until")))
        .with_for_update()
        .cte("live")
    )
    item = _counting(live.c.item_id).cte("item")
    closed = _closing(live.c.id, LeaseState.SUBMITTED).where(live.c.item_id == item.c.id).cte("closed")
    edit = (
        insert(_EDITS)
        .from_select([*_OWN, *_GIVEN], _inserting_edit(item.c.id, closed.c.id).select_from(item.join(closed, true())))
        .returning(*_STORED)
        .cte("edit")
    )
    # The deliveries, in the order the locking path queues them: per event, per webhook (`subscribers`).
    hooks = ARRAY(BigInteger)
    events = union_all(
        select(literal(1).label("rank"), literal("edit.submitted").label("event"),
               bindparam("submitted_event", type_=JSONB).op("||")(func.jsonb_build_object("edit_id", edit.c.id))
               .label("payload"), func.unnest(bindparam("submitted_hooks", type_=hooks)).label("hook"))
        .select_from(edit),
        select(literal(2), literal("item.completed"),
               bindparam("completed_event", type_=JSONB).op("||")(
                   func.jsonb_build_object("completed_count", item.c.completed_count)),
               func.unnest(bindparam("completed_hooks", type_=hooks)))
        .select_from(item).where(item.c.status == ItemStatus.COMPLETE.value),
    ).subquery("events")
    deliveries = insert(_DELIVERIES).from_select(_DELIVERY_COLUMNS, select(
        events.c.hook, events.c.event, events.c.payload, model_default(_DELIVERIES.c.status),
        model_default(_DELIVERIES.c.attempts), model_default(_DELIVERIES.c.last_error), bindparam("now"),
        bindparam("now"),
    ).order_by(events.c.rank, events.c.hook))
    return select(*edit.c).add_cte(deliveries.cte("deliveries"))


_DELIVERIES = WebhookDelivery.__table__
_DELIVERY_COLUMNS = ("webhook_id", "event", "payload", "status", "attempts", "last_error", "next_attempt_at",
                     "created_at")
_AT_ONCE = _build_at_once()


def _at_once(lease_id: int, user: User, outcome: Outcome, text: str, metrics: EditorMetrics,
             provenance: Provenance = HUMAN, suggestion_id: int | None = None,
             known: Analysed | None = None) -> Steps[Edit | None]:
    """The one-statement submit, as steps: read the task unlocked, compute the labels, then the statement;
    None when it does not apply or did nothing (the caller takes the locking path)."""
    now = utcnow()
    live_until = now + AT_ONCE_MARGIN
    read = yield _AT_ONCE_READ, {"lease_id": lease_id, "user_id": user.id, "live_until": live_until}
    if read is None or not read.live:
        return None
    outcome, text = decide_outcome(outcome, text, read.items_original)
    provenance = yield from _from_suggestion(provenance, suggestion_id, read.items_id, read.projects_tokenizer, text)
    values = _edit_values(lease_id, user.id, read.items_id, read.projects_minimality_budget, outcome, text,
                          analysed(read.projects_tokenizer, read.items_original, text, known), metrics, "",
                          provenance)
    submitted, completed = _events(read.items_id, read.items_project_id, values)
    subscriptions = read.hooks or []
    stored = yield _AT_ONCE, {
        **_edit_params(values), "the_lease": lease_id, "the_annotator": user.id, "now": now, "live_until": live_until,
        "per_item": read.projects_annotations_per_item,
        "counts": counts_toward_n(user, read.projects_model_edits_count),
        "submitted_event": submitted, "completed_event": completed,
        "submitted_hooks": webhooks.subscribers(subscriptions, "edit.submitted"),
        "completed_hooks": webhooks.subscribers(subscriptions, "item.completed"),
    }
    return None if stored is None else _stored_edit(values, stored)


async def submit(
    db: Database, lease_id: int, user: User, outcome: Outcome, text: str = "", *,
    metrics: EditorMetrics = EditorMetrics(), skip_reason: str = "", provenance: Provenance = HUMAN,
    suggestion_id: int | None = None, known: Analysed | None = None,
) -> Edit:
    """Store the annotator's decision on their leased item: labels, diff and statistics recomputed from
    `text`, the item's count, the lease closed, webhook deliveries queued; the edit (not attached to any
    session). A double submit returns the first edit. `provenance`: a model editor's. `suggestion_id`: the
    item's suggestion the person started from (the editor opened with it and they did not reset to the
    original); the edit records it was used and their edit rate relative to it. `known`: this process's
    own analysis of `text`, used if it is of the stored original with the project's tokenizer. Runs on
    whichever `Database` the caller has (a web request's, a worker's, or `SessionDatabase(session)` inside
    the caller's own unit of work).

    On Postgres a completed annotation under a live lease is one statement; every other case (skips,
    expired leases, double submits, errors, SQLite) takes the locking path."""
    metrics, skip_reason = metrics.clamped(), skip_reason.strip()[:2000]
    if (outcome in COMPLETED_OUTCOMES and db.dialect == "postgresql"
            and (edit := await db.run(_at_once(lease_id, user, outcome, text, metrics, provenance,
                                               suggestion_id, known))) is not None):
        return edit
    return await db.run(_locking(lease_id, user, outcome, text, metrics, skip_reason, provenance, suggestion_id,
                                 known),
                        transaction=True)


def submit_in(session: Session, lease_id: int, user: User, outcome: Outcome, text: str = "", *,
              provenance: Provenance = HUMAN) -> Edit:
    """`submit`'s locking path inside the caller's own unit of work, for synchronous callers that store
    many edits in one transaction (an import of edits: all of them or none). The same steps as any submit."""
    lock_for_write(session)
    return run(session, _locking(lease_id, user, outcome, text, EditorMetrics(), "", provenance))


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
