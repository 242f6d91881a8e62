"""Review: accept, fix & accept (the fix is a new layer over the annotator's edit), or reject (the item
goes back to the queue for another annotation, or, where the project says so, the edit goes back to its
annotator to revise)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from app.errors import Conflict, DomainError, NotFound
from app.models import (
    COMPLETED_OUTCOMES,
    AnnotatorKind,
    Comment,
    Edit,
    Item,
    ItemStatus,
    Outcome,
    Project,
    ProjectMember,
    Review,
    ReviewStatus,
    Role,
    User,
    Verdict,
)
from app.services import audit
from app.services.annotation import analyse, counts_toward_n, stored_record
from app.services.queue import lock_item


@dataclass(frozen=True)
class QueueRow:
    edit: Edit
    item: Item
    project: Project
    annotator: User


def parse_verdict(value: str) -> Verdict:
    try:
        return Verdict(value)
    except ValueError:
        raise DomainError(f"verdict: unknown value {value!r}; choose one of "
                          f"{', '.join(v.value for v in Verdict)}") from None


def _reviewable(reviewer: User):
    query = (
        select(Edit, Item, Project, User)
        .join(Item, Item.id == Edit.item_id)
        .join(Project, Project.id == Item.project_id)
        .join(User, User.id == Edit.annotator_id)
        .where(Edit.outcome.in_([o.value for o in COMPLETED_OUTCOMES]), Edit.annotator_id != reviewer.id)
    )
    if reviewer.role != Role.ADMIN:
        query = query.join(
            ProjectMember, (ProjectMember.project_id == Project.id) & (ProjectMember.user_id == reviewer.id)
        )
    return query


def review_queue(session: Session, reviewer: User, project_id: int | None = None, limit: int = 100) -> list[QueueRow]:
    """Pending edits of active projects the reviewer may judge (a member; never their own work), oldest first."""
    query = (
        _reviewable(reviewer)
        .where(Edit.review_status == ReviewStatus.PENDING, Project.archived.is_(False))
        .order_by(Edit.id)
        .limit(limit)
    )
    if project_id is not None:
        query = query.where(Item.project_id == project_id)
    return [QueueRow(*row) for row in session.execute(query).all()]


def reviewable_edit(session: Session, reviewer: User, edit_id: int) -> QueueRow:
    row = session.execute(_reviewable(reviewer).where(Edit.id == edit_id)).first()
    if row is None:
        raise NotFound("This edit does not exist or is not yours to review.")
    return QueueRow(*row)


def next_pending(
    session: Session, reviewer: User, project_id: int | None = None, after: int | None = None
) -> int | None:
    """The edit to review next: the oldest pending one after `after` (wrapping round to the oldest), or None."""
    query = (_reviewable(reviewer).with_only_columns(Edit.id)
             .where(Edit.review_status == ReviewStatus.PENDING, Project.archived.is_(False)).order_by(Edit.id).limit(1))
    if project_id is not None:
        query = query.where(Item.project_id == project_id)
    found = session.scalar(query.where(Edit.id > after)) if after is not None else None
    return found if found is not None else session.scalar(query.where(Edit.id != (after or 0)))


@dataclass(frozen=True)
class ReviewLayer:
    review: Review
    reviewer: str


def history(session: Session, edit_id: int) -> tuple[list[ReviewLayer], list[Comment]]:
    """An edit's reviews (with their reviewers' names) and comments, oldest first."""
    reviews = session.execute(
        select(Review, User.username).join(User, User.id == Review.reviewer_id)
        .where(Review.edit_id == edit_id).order_by(Review.id)
    ).all()
    comments = session.scalars(select(Comment).where(Comment.edit_id == edit_id).order_by(Comment.id)).all()
    return [ReviewLayer(review, name) for review, name in reviews], list(comments)


# --- bulk accept ----------------------------------------------------------------------------------

BULK_LIMIT = 5000  # edits per bulk accept: one short transaction; repeat for more


class BulkFilter(BaseModel):
    """Which pending edits a bulk accept takes. Each field adds one condition (`conditions`), so a new
    filter is one field and one line there."""

    model_config = ConfigDict(extra="forbid")

    project_id: int | None = Field(default=None, ge=1)
    outcomes: list[Outcome] = Field(default=[Outcome.EDITED], min_length=1)
    min_rate: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    max_rate: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    exclude_not_minimal: bool = True
    # Who wrote the edit: people, model editors, imports (None: anyone).
    annotator_kinds: list[AnnotatorKind] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _range(self) -> BulkFilter:
        if not set(self.outcomes) <= set(COMPLETED_OUTCOMES):
            raise ValueError("outcomes: a skipped item has no edit to accept")
        if None not in (self.min_rate, self.max_rate) and self.min_rate > self.max_rate:
            raise ValueError(f"min_rate {self.min_rate} is above max_rate {self.max_rate}")
        return self

    def conditions(self) -> list[Any]:
        checks = [
            (self.project_id is not None, lambda: Item.project_id == self.project_id),
            (True, lambda: Edit.outcome.in_(self.outcomes)),
            (self.min_rate is not None, lambda: Edit.edit_rate >= self.min_rate),
            (self.max_rate is not None, lambda: Edit.edit_rate <= self.max_rate),
            (self.exclude_not_minimal, lambda: Edit.not_minimal.is_(False)),
            (self.annotator_kinds is not None, lambda: User.kind.in_(self.annotator_kinds)),
        ]
        return [condition() for applies, condition in checks if applies]


def _bulk_selection(reviewer: User, flt: BulkFilter):
    return (_reviewable(reviewer).with_only_columns(Edit.id)
            .where(Edit.review_status == ReviewStatus.PENDING, Project.archived.is_(False), *flt.conditions()))


def bulk_count(session: Session, reviewer: User, flt: BulkFilter) -> int:
    return session.scalar(select(func.count()).select_from(_bulk_selection(reviewer, flt).subquery())) or 0


def bulk_accept(session: Session, reviewer: User, flt: BulkFilter) -> int:
    """Accept (up to BULK_LIMIT of) the pending edits `flt` selects, in the caller's transaction. Edits
    someone else reviewed meanwhile are left alone (the update re-checks `pending`)."""
    candidates = _bulk_selection(reviewer, flt).order_by(Edit.id).limit(BULK_LIMIT)
    accepted = list(session.scalars(
        update(Edit).where(Edit.id.in_(candidates.scalar_subquery()), Edit.review_status == ReviewStatus.PENDING)
        .values(review_status=ReviewStatus.ACCEPTED, version=Edit.version + 1)
        .returning(Edit.id).execution_options(synchronize_session=False)
    ))
    if accepted:
        session.execute(insert(Review), [
            {"edit_id": edit_id, "reviewer_id": reviewer.id, "verdict": Verdict.ACCEPT.value, "comment": ""}
            for edit_id in accepted
        ])
        audit.record(session, reviewer, "review.bulk_accept", "edit", None,
                     after={"filter": flt.model_dump(mode="json"), "count": len(accepted),
                            "first": min(accepted), "last": max(accepted)})
    return len(accepted)


def _fix_layer(project: Project, original: str, fixed_text: str) -> dict:
    if not fixed_text.strip():
        raise DomainError("fixed text: write the corrected response (or choose Accept).")
    record = stored_record(analyse(project.tokenizer, original, fixed_text))
    return {"fixed_text": fixed_text, **record}


def reopen_item(session: Session, item: Item, project: Project, annotator: User) -> None:
    """The annotator's edit of the item stops counting: if it counted toward N, the item needs one more
    annotation and is back in the queue (a model edit on top of N leaves the item as it is)."""
    if not counts_toward_n(annotator, project.model_edits_count):
        return
    locked = lock_item(session, item.id)
    locked.completed_count = max(0, locked.completed_count - 1)
    locked.status = ItemStatus.OPEN


def decide(
    session: Session, reviewer: User, edit_id: int, verdict: Verdict, *, fixed_text: str = "", comment: str = "",
    version: int | None = None,
) -> Review:
    """Record a verdict in the caller's transaction; a second reviewer on the same edit gets a 409."""
    row = reviewable_edit(session, reviewer, edit_id)
    edit = row.edit
    if edit.review_status != ReviewStatus.PENDING or (version is not None and edit.version != version):
        raise Conflict("Someone reviewed this edit already. Reload to see their verdict.")
    fixed_text = fixed_text.replace("\r\n", "\n")
    layer = _fix_layer(row.project, row.item.original, fixed_text) if verdict == Verdict.FIX_AND_ACCEPT else {}
    if verdict == Verdict.REJECT and not comment.strip():
        raise DomainError("comment: say what is wrong, so the annotator can learn from it.")
    review = Review(
        edit_id=edit.id, reviewer_id=reviewer.id, verdict=verdict.value, comment=comment.strip(),
        fixed_text=layer.get("fixed_text"), char_diff=layer.get("char_diff"),
        token_labels=layer.get("token_labels"), stats=layer.get("stats"),
    )
    session.add(review)
    if comment.strip():
        session.add(Comment(edit_id=edit.id, author_id=reviewer.id, body=comment.strip()))
    before = {"review_status": edit.review_status}
    if verdict != Verdict.REJECT:
        edit.review_status = ReviewStatus.ACCEPTED
    elif row.project.return_rejected:  # back to its annotator, who revises it or gives it back
        edit.review_status = ReviewStatus.RETURNED
    else:
        edit.review_status = ReviewStatus.REJECTED
        reopen_item(session, row.item, row.project, row.annotator)
    try:
        session.flush()  # the edit's version column makes a concurrent verdict fail here
    except StaleDataError:
        raise Conflict("Someone reviewed this edit already. Reload to see their verdict.") from None
    audit.record(session, reviewer, f"review.{verdict.value}", "edit", edit.id, before=before,
                 after={"review_status": edit.review_status, "review_id": review.id})
    return review
