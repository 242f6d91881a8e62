"""Submitting an annotation, and the server-rendered diff the editor shows while the annotator types.

The server never trusts the client's diff: labels, char diff and statistics are recomputed from the
submitted text with the project's (cached) tokenizer. A submit locks only its item's and its lease's
rows, so only another submit of the same item waits for it. A double submit returns the first edit: the
lease is read under that lock, and `edits.lease_id` is unique as the last line of defence.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

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
    utcnow,
)
from app.services import webhooks
from app.services.queue import Task, active_lease_count, find_task, lock_task
from labels import EditAnalysis, analyse_edit, load_tokenizer

MAX_EDIT_CHARS = 200_000
LABEL_CLASSES = {0: "keep", 1: "insert", 2: "delete", 3: "replace"}


class AnnotationError(ValueError):
    def __init__(self, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code


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


def as_utc(value: datetime) -> datetime:
    """SQLite hands timestamps back without a zone; they are stored in UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def task_for(session: Session, lease_id: int, user: User) -> Task:
    """The annotator's lease with its item and project, in one query."""
    if (task := find_task(session, lease_id, user)) is None:
        raise AnnotationError("This task is not yours or does not exist.", 404)
    return task


def analyse(project: Project, original: str, edited: str) -> EditAnalysis:
    if len(edited) > MAX_EDIT_CHARS:
        raise AnnotationError(f"The edited text is longer than {MAX_EDIT_CHARS} characters.", 413)
    return analyse_edit(original, edited, load_tokenizer(project.tokenizer))


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


def _existing_edit(session: Session, lease_id: int) -> Edit | None:
    return session.scalars(select(Edit).where(Edit.lease_id == lease_id)).first()


def _check_slot(session: Session, lease: Lease, item: Item, project: Project, now: datetime) -> None:
    """A lease that ran out still counts if its slot was not handed to someone else meanwhile."""
    if item.status != ItemStatus.OPEN:
        raise AnnotationError("This item already has all its annotations.", 409)
    if lease.state == LeaseState.ACTIVE and as_utc(lease.expires_at) > now:
        return
    others = active_lease_count(session, item.id, now, exclude_lease=lease.id)
    if item.completed_count + others >= project.annotations_per_item:
        raise AnnotationError("Your lease on this item expired and it was given to someone else.", 409)


def _edit_values(lease: Lease, item: Item, project: Project, outcome: Outcome, text: str,
                 analysis: EditAnalysis | None, metrics: EditorMetrics, skip_reason: str) -> dict[str, Any]:
    record = stored_record(analysis) if analysis else {"token_labels": {}, "char_diff": [], "stats": {}}
    rate = analysis.stats.edit_rate if analysis else 0.0
    return dict(
        item_id=item.id, annotator_id=lease.annotator_id, lease_id=lease.id, outcome=outcome.value,
        edited_text=text, skip_reason=skip_reason, char_diff=record["char_diff"],
        token_labels=record["token_labels"], tokenizer_hash=analysis.labels.tokenizer_hash if analysis else "",
        algorithm=analysis.labels.algorithm if analysis else "", stats=record["stats"], edit_rate=rate,
        not_minimal=rate > project.minimality_budget, time_to_first_key_ms=metrics.time_to_first_key_ms,
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


def submit(
    session: Session, lease_id: int, user: User, outcome: Outcome, text: str = "", *,
    metrics: EditorMetrics = EditorMetrics(), skip_reason: str = "",
) -> Edit:
    """Store the annotator's decision on a leased item in one short transaction (the caller commits)."""
    if (task := lock_task(session, lease_id, user)) is None:
        raise AnnotationError("This task is not yours or does not exist.", 404)
    lease, item, project = task.lease, task.item, task.project
    if lease.state in (LeaseState.SUBMITTED, LeaseState.SKIPPED) and (done := _existing_edit(session, lease.id)):
        return done
    if outcome == Outcome.SKIPPED and not skip_reason.strip():
        raise AnnotationError("Say why you skip this item.")
    if outcome == Outcome.EDITED and text.replace("\r\n", "\n") == item.original:
        outcome = Outcome.NO_CHANGE_NEEDED  # submitting the untouched text is "no change needed"
    text = text.replace("\r\n", "\n") if outcome == Outcome.EDITED else item.original
    analysis = analyse(project, item.original, text) if outcome != Outcome.SKIPPED else None
    now = utcnow()
    if outcome in COMPLETED_OUTCOMES:
        _check_slot(session, lease, item, project, now)
        completed = item.completed_count + 1
        set_committed_value(item, "completed_count", completed)
        if completed >= project.annotations_per_item:
            set_committed_value(item, "status", ItemStatus.COMPLETE.value)
    lease_state = LeaseState.SKIPPED if outcome == Outcome.SKIPPED else LeaseState.SUBMITTED
    values = _edit_values(lease, item, project, outcome, text, analysis, metrics.clamped(), skip_reason.strip()[:2000])
    try:
        edit = _store(session, values, item, lease, lease_state.value)
    except IntegrityError:
        session.rollback()
        if done := _existing_edit(session, lease_id):
            return done
        raise
    _notify(session, edit, item)
    return edit


def _notify(session: Session, edit: Edit, item: Item) -> None:
    """Webhook deliveries, queued in this transaction so they exist exactly when the edit does."""
    if edit.outcome == Outcome.SKIPPED:
        return
    events = [("edit.submitted", {
        "edit_id": edit.id, "item_id": item.id, "project_id": item.project_id, "outcome": edit.outcome,
        "edit_rate": edit.edit_rate, "not_minimal": edit.not_minimal,
    })]
    if item.status == ItemStatus.COMPLETE:
        events.append(("item.completed", {
            "item_id": item.id, "project_id": item.project_id, "completed_count": item.completed_count,
        }))
    webhooks.enqueue_many(session, events)


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
            spans.append(Span(text[start:end], LABEL_CLASSES[label]))
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
    analysis = analyse(project, original, edited.replace("\r\n", "\n"))
    labels = analysis.labels
    return DiffView(
        analysis=analysis,
        budget=project.minimality_budget,
        original_spans=token_spans(original, analysis.original_offsets, labels.original_labels),
        edited_spans=token_spans(edited.replace("\r\n", "\n"), analysis.edited_offsets, labels.edited_labels),
    )
