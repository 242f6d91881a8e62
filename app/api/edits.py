"""/api/v1/edits: the collected edits, newest last, paged by id."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.api.auth import Principal, require_scope
from app.api.schemas import EditOut, EditPage
from app.deps import get_db
from app.models import Edit, Item
from app.services.datasets import MAX_ID, pseudonym, pseudonym_key

router = APIRouter(tags=["edits"])
MAX_BIG_ID = 2**63 - 1


def _edit_out(edit: Edit, item: Item, include_labels: bool, key: bytes) -> EditOut:
    return EditOut(
        id=edit.id,
        item_id=edit.item_id,
        project_id=item.project_id,
        annotator_id=pseudonym("ann", edit.annotator_id, key),
        outcome=edit.outcome,
        review_status=edit.review_status,
        prompt=item.prompt,
        original=item.original,
        edited=edit.edited_text,
        edit_rate=edit.edit_rate,
        not_minimal=edit.not_minimal,
        stats=edit.stats,
        char_diff=edit.char_diff if include_labels else None,
        token_labels=edit.token_labels if include_labels else None,
        created_at=edit.created_at,
    )


@router.get("/edits", response_model=EditPage, summary="List edits (paged by id)")
def list_edits(
    project_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    outcome: Annotated[str | None, Query(pattern="^(edited|no_change_needed|unfixable|skipped)$")] = None,
    review_status: Annotated[str | None, Query(pattern="^(pending|accepted|rejected)$")] = None,
    after_id: Annotated[int, Query(ge=0, le=MAX_BIG_ID, description="Return edits with a larger id.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    include_labels: Annotated[bool, Query(description="Add token labels and the char diff.")] = False,
    db: Session = Depends(get_db),
    _caller: Principal = Depends(require_scope("edits:read")),
) -> EditPage:
    query = (
        select(Edit, Item).join(Item, Item.id == Edit.item_id).where(Edit.id > after_id).order_by(Edit.id)
        .limit(limit + 1)
    )
    if project_id is not None:
        query = query.where(Item.project_id == project_id)
    if outcome is not None:
        query = query.where(Edit.outcome == outcome)
    if review_status is not None:
        query = query.where(Edit.review_status == review_status)
    rows = db.execute(query).all()
    key = pseudonym_key()
    page = [_edit_out(edit, item, include_labels, key) for edit, item in rows[:limit]]
    return EditPage(items=page, next_after_id=page[-1].id if len(rows) > limit else None)
