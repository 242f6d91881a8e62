"""The item browser of admins and reviewers: items found by a phrase of their text and by what happened
to them (status, annotator, outcome, edit rate, review), newest first, a page at a time; and one item's
whole history (leases, edits, reviews, comments).

Fast at a million items: the phrase goes through a full-text index on Postgres (migration 0008; SQLite
scans), the edit conditions through one EXISTS on the edits of each candidate item, and pages are keyset
pages (`before` = the last item id shown), so page 1,000 costs what page 1 does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import and_, exists, func, literal_column, or_, select
from sqlalchemy.orm import Session

from app.errors import DomainError, NotFound
from app.models import (
    Comment,
    Edit,
    Item,
    ItemStatus,
    Lease,
    Outcome,
    Project,
    ProjectMember,
    Review,
    Role,
    User,
)

PAGE_SIZE = 50
# The indexed document (migration 0008 creates the same expression index on Postgres).
_SIMPLE = literal_column("'simple'::regconfig")
ReviewFilter = Literal["pending", "accept", "fix_and_accept", "reject"]


class ItemQuery(BaseModel):
    """The browser's filters, from the page's query string or the API."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    q: str = Field(default="", max_length=500, description="A phrase of the prompt or the response.")
    project_id: int | None = Field(default=None, ge=1)
    status: ItemStatus | None = None
    annotator: str = Field(default="", max_length=64, description="Username of someone who edited the item.")
    outcome: Outcome | None = None
    min_rate: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    max_rate: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    review: ReviewFilter | None = Field(default=None, description="pending, or a reviewer's verdict.")
    before: int | None = Field(default=None, ge=1, description="Keyset cursor: items older than this id.")

    @model_validator(mode="after")
    def _range(self) -> ItemQuery:
        if None not in (self.min_rate, self.max_rate) and self.min_rate > self.max_rate:
            raise ValueError(f"min_rate {self.min_rate} is above max_rate {self.max_rate}")
        return self

    def edit_filters(self) -> bool:
        return bool(self.annotator or self.outcome or self.review
                    or self.min_rate is not None or self.max_rate is not None)


@dataclass
class ItemRow:
    item: Item
    project: str
    edits: int = 0
    latest: str = ""  # the newest edit's outcome and review status


@dataclass
class ItemPage:
    rows: list[ItemRow]
    next_before: int | None  # the cursor of the next page, None on the last


def visible_projects(session: Session, user: User) -> list[int] | None:
    """Project ids the user may browse: None for an admin (all of them), else the reviewer's projects."""
    if user.role == Role.ADMIN:
        return None
    return list(session.scalars(select(ProjectMember.project_id).where(ProjectMember.user_id == user.id)))


def _phrase(session: Session, q: str) -> Any:
    document = Item.prompt + literal_column("' '") + Item.original
    # The exact phrase, ignoring case; the full-text match only narrows the rows it is checked on.
    pattern = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    contains = document.ilike(pattern, escape="\\")
    if session.get_bind().dialect.name != "postgresql":
        return contains
    indexed = func.to_tsvector(_SIMPLE, document).op("@@")(func.phraseto_tsquery(_SIMPLE, q))
    return and_(indexed, contains)


def _edit_conditions(session: Session, query: ItemQuery) -> list[Any]:
    conditions: list[Any] = [Edit.item_id == Item.id]
    if query.annotator:
        annotator_id = session.scalar(select(User.id).where(User.username == query.annotator))
        if annotator_id is None:
            raise DomainError(f"annotator: nobody is called {query.annotator!r}", 422)
        conditions.append(Edit.annotator_id == annotator_id)
    if query.outcome:
        conditions.append(Edit.outcome == query.outcome)
    if query.min_rate is not None:
        conditions.append(Edit.edit_rate >= query.min_rate)
    if query.max_rate is not None:
        conditions.append(Edit.edit_rate <= query.max_rate)
    if query.review == "pending":
        conditions.append(Edit.review_status == "pending")
    elif query.review:
        conditions.append(exists().where(Review.edit_id == Edit.id, Review.verdict == query.review))
    return conditions


def search(session: Session, user: User, query: ItemQuery, limit: int = PAGE_SIZE) -> ItemPage:
    """One page of the items `query` selects, newest first."""
    statement = select(Item, Project.name).join(Project, Project.id == Item.project_id)
    allowed = visible_projects(session, user)
    if allowed is not None:
        statement = statement.where(Item.project_id.in_(allowed or [-1]))
    if query.project_id:
        statement = statement.where(Item.project_id == query.project_id)
    if query.status:
        statement = statement.where(Item.status == query.status)
    if query.q:
        statement = statement.where(_phrase(session, query.q))
    if query.edit_filters():
        statement = statement.where(exists().where(*_edit_conditions(session, query)))
    if query.before:
        statement = statement.where(Item.id < query.before)
    found = session.execute(statement.order_by(Item.id.desc()).limit(limit + 1)).all()
    rows = [ItemRow(item, project) for item, project in found[:limit]]
    _add_edit_summaries(session, rows)
    return ItemPage(rows, rows[-1].item.id if len(found) > limit else None)


def _add_edit_summaries(session: Session, rows: list[ItemRow]) -> None:
    by_id = {row.item.id: row for row in rows}
    if not by_id:
        return
    edits = session.execute(
        select(Edit.item_id, Edit.outcome, Edit.review_status)
        .where(Edit.item_id.in_(by_id)).order_by(Edit.item_id, Edit.id)
    )
    for item_id, outcome, review_status in edits:
        row = by_id[item_id]
        row.edits += 1
        row.latest = f"{outcome.replace('_', ' ')}, {review_status}"


# --- one item's history ---------------------------------------------------------------------------


@dataclass
class Event:
    at: datetime
    kind: str  # lease | edit | review | comment
    who: str
    summary: str
    edit: Edit | None = None
    review: Review | None = None
    text: str = ""


@dataclass
class ItemHistory:
    item: Item
    project: Project
    events: list[Event] = field(default_factory=list)


def history(session: Session, user: User, item_id: int) -> ItemHistory:
    """Everything that happened to one item, oldest first."""
    item = session.get(Item, item_id)
    allowed = visible_projects(session, user)
    if item is None or (allowed is not None and item.project_id not in allowed):
        raise NotFound(f"item {item_id} does not exist or is not in one of your projects")
    names = dict(session.execute(select(User.id, User.username).where(or_(
        User.id.in_(select(Lease.annotator_id).where(Lease.item_id == item_id)),
        User.id.in_(select(Review.reviewer_id).join(Edit, Edit.id == Review.edit_id).where(Edit.item_id == item_id)),
        User.id.in_(select(Comment.author_id).join(Edit, Edit.id == Comment.edit_id).where(Edit.item_id == item_id)),
        User.id.in_(select(Edit.annotator_id).where(Edit.item_id == item_id)),
    ))).all())
    events = [
        Event(lease.leased_at, "lease", names.get(lease.annotator_id, "?"),
              f"leased until {lease.expires_at:%H:%M} · now {lease.state}")
        for lease in session.scalars(select(Lease).where(Lease.item_id == item_id))
    ]
    edits = list(session.scalars(select(Edit).where(Edit.item_id == item_id)))
    for edit in edits:
        summary = f"{edit.outcome.replace('_', ' ')} · edit rate {edit.edit_rate * 100:.1f}% · {edit.review_status}"
        events.append(Event(edit.created_at, "edit", names.get(edit.annotator_id, "?"), summary, edit=edit,
                            text=edit.skip_reason))
    edit_ids = [edit.id for edit in edits]
    said = set()  # a reject's comment is stored on the review and as a comment: shown once
    for review in session.scalars(select(Review).where(Review.edit_id.in_(edit_ids or [-1]))):
        said.add((review.edit_id, review.reviewer_id, review.comment))
        events.append(Event(review.created_at, "review", names.get(review.reviewer_id, "?"),
                            f"{review.verdict.replace('_', ' ')} of edit #{review.edit_id}", review=review,
                            text="\n\n".join(filter(None, (review.fixed_text, review.comment)))))
    for comment in session.scalars(select(Comment).where(Comment.edit_id.in_(edit_ids or [-1]))):
        if (comment.edit_id, comment.author_id, comment.body) not in said:
            events.append(Event(comment.created_at, "comment", names.get(comment.author_id, "?"),
                                f"on edit #{comment.edit_id}", text=comment.body))
    events.sort(key=lambda e: (e.at, ("lease", "edit", "review", "comment").index(e.kind)))
    return ItemHistory(item, session.get(Project, item.project_id), events)
