"""Review: accept, fix & accept (the fix is a new layer over the annotator's edit), or reject (the item
goes back to the queue for another annotation)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from app.errors import Conflict, DomainError, NotFound
from app.models import (
    COMPLETED_OUTCOMES,
    Comment,
    Edit,
    Item,
    ItemStatus,
    Project,
    ProjectMember,
    Review,
    ReviewStatus,
    Role,
    User,
    Verdict,
)
from app.services import audit
from app.services.annotation import analyse, stored_record
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


def history(session: Session, edit_id: int) -> tuple[list[Review], list[Comment]]:
    reviews = session.scalars(select(Review).where(Review.edit_id == edit_id).order_by(Review.id)).all()
    comments = session.scalars(select(Comment).where(Comment.edit_id == edit_id).order_by(Comment.id)).all()
    return list(reviews), list(comments)


def _fix_layer(project: Project, original: str, fixed_text: str) -> dict:
    if not fixed_text.strip():
        raise DomainError("fixed text: write the corrected response (or choose Accept).")
    record = stored_record(analyse(project.tokenizer, original, fixed_text))
    return {"fixed_text": fixed_text, **record}


def _reopen_item(session: Session, item: Item) -> None:
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
    edit.review_status = ReviewStatus.REJECTED if verdict == Verdict.REJECT else ReviewStatus.ACCEPTED
    if verdict == Verdict.REJECT:
        _reopen_item(session, row.item)
    try:
        session.flush()  # the edit's version column makes a concurrent verdict fail here
    except StaleDataError:
        raise Conflict("Someone reviewed this edit already. Reload to see their verdict.") from None
    audit.record(session, reviewer, f"review.{verdict.value}", "edit", edit.id, before=before,
                 after={"review_status": edit.review_status, "review_id": review.id})
    return review
