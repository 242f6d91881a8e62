"""What annotators learn of their work: their recent submissions with review status, verdicts and
comments ("My work"); revising a submission nobody has reviewed yet, or one a reviewer sent back
(Project.return_rejected); giving a sent-back edit up so that the item returns to the queue."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from app.driver import run
from app.errors import Conflict, DomainError, NotFound
from app.models import Comment, Edit, Item, Outcome, Project, Review, ReviewStatus, User
from app.services import audit, suggestions
from app.services.annotation import analyse, decide_outcome, rate_on_suggestion, stored_record
from app.services.review import ReviewLayer, reopen_item

RECENT = 50
REVISABLE = (ReviewStatus.PENDING, ReviewStatus.RETURNED)


@dataclass
class WorkRow:
    edit: Edit
    item: Item
    project: Project
    reviews: list[ReviewLayer] = field(default_factory=list)
    comments: list[Comment] = field(default_factory=list)

    @property
    def revisable(self) -> bool:
        return self.edit.review_status in REVISABLE and self.edit.outcome != Outcome.SKIPPED


def my_work(session: Session, user: User, limit: int = RECENT) -> list[WorkRow]:
    """The annotator's latest submissions (skips included), newest first; sent-back edits first of all."""
    found = session.execute(
        select(Edit, Item, Project).join(Item, Item.id == Edit.item_id).join(Project, Project.id == Item.project_id)
        .where(Edit.annotator_id == user.id).order_by(Edit.id.desc()).limit(limit)
    ).all()
    rows = {edit.id: WorkRow(edit, item, project) for edit, item, project in found}
    for review, name in session.execute(
        select(Review, User.username).join(User, User.id == Review.reviewer_id)
        .where(Review.edit_id.in_(rows or [-1])).order_by(Review.id)
    ):
        rows[review.edit_id].reviews.append(ReviewLayer(review, name))
    for comment in session.scalars(select(Comment).where(Comment.edit_id.in_(rows or [-1])).order_by(Comment.id)):
        rows[comment.edit_id].comments.append(comment)
    return sorted(rows.values(), key=lambda r: (r.edit.review_status != ReviewStatus.RETURNED, -r.edit.id))


def own_edit(session: Session, user: User, edit_id: int) -> WorkRow:
    row = session.execute(
        select(Edit, Item, Project).join(Item, Item.id == Edit.item_id).join(Project, Project.id == Item.project_id)
        .where(Edit.id == edit_id, Edit.annotator_id == user.id)
    ).first()
    if row is None:
        raise NotFound("This edit does not exist or is not yours.")
    work = WorkRow(*row)
    work.reviews = [ReviewLayer(r, n) for r, n in session.execute(
        select(Review, User.username).join(User, User.id == Review.reviewer_id)
        .where(Review.edit_id == edit_id).order_by(Review.id))]
    work.comments = list(session.scalars(select(Comment).where(Comment.edit_id == edit_id).order_by(Comment.id)))
    return work


def revise(session: Session, user: User, edit_id: int, text: str, version: int | None = None) -> Edit:
    """Replace the annotator's own unreviewed (or sent-back) edit with `text`, labels recomputed; it waits
    for review again. A reviewer's verdict that lands first wins (the edit's version column)."""
    work = own_edit(session, user, edit_id)
    edit = work.edit
    if not work.revisable or (version is not None and edit.version != version):
        raise Conflict("This edit was reviewed meanwhile and can no longer be revised. Reload to see the verdict.")
    outcome, text = decide_outcome(Outcome.EDITED, text, work.item.original)
    before = {"edited_text": edit.edited_text, "outcome": edit.outcome, "edit_rate": edit.edit_rate,
              "review_status": edit.review_status}
    analysis = analyse(work.project.tokenizer, work.item.original, text)
    record = stored_record(analysis)
    edit.outcome, edit.edited_text = outcome.value, text
    edit.char_diff, edit.token_labels, edit.stats = record["char_diff"], record["token_labels"], record["stats"]
    edit.tokenizer_hash, edit.algorithm = analysis.labels.tokenizer_hash, analysis.labels.algorithm
    edit.edit_rate = analysis.stats.edit_rate
    edit.not_minimal = analysis.stats.edit_rate > work.project.minimality_budget
    if edit.suggestion_used:  # how far the person moved from the suggestion, for the revised text
        suggested = run(session, suggestions.started_from(edit.item_id, edit.editor_id))
        edit.human_vs_suggestion_rate = (
            None if suggested is None else rate_on_suggestion(work.project.tokenizer, suggested, text))
    edit.review_status = ReviewStatus.PENDING
    try:
        session.flush()
    except StaleDataError:
        raise Conflict("This edit was reviewed meanwhile and can no longer be revised.") from None
    audit.record(session, user, "edit.revise", "edit", edit.id, before=before,
                 after={"edited_text": edit.edited_text, "outcome": edit.outcome, "edit_rate": edit.edit_rate})
    return edit


def give_back(session: Session, user: User, edit_id: int) -> None:
    """A sent-back edit its annotator will not revise: it stays rejected, and the item returns to the queue."""
    work = own_edit(session, user, edit_id)
    if work.edit.review_status != ReviewStatus.RETURNED:
        raise DomainError("Only an edit a reviewer sent back to you can be given back.", 409)
    work.edit.review_status = ReviewStatus.REJECTED
    reopen_item(session, work.item, work.project, user)
    try:
        session.flush()
    except StaleDataError:
        raise Conflict("This edit changed meanwhile. Reload and look again.") from None
    audit.record(session, user, "edit.give_back", "edit", edit_id, before={"review_status": "returned"},
                 after={"review_status": "rejected"})
