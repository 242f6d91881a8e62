"""Reviewer pages: the queue of pending edits, and one edit with accept / fix & accept / reject."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from app.deps import get_db, require_roles
from app.errors import DomainError
from app.models import Role, User
from app.services import annotation, projects, review
from app.templating import render

router = APIRouter(prefix="/review")
reviewer_only = require_roles(Role.REVIEWER)


@router.get("")
def queue(
    request: Request, project: int | None = None, user: User = Depends(reviewer_only), db: Session = Depends(get_db)
) -> Response:
    rows = review.review_queue(db, user, project_id=project)
    return render(request, "review/queue.html", title="Review", rows=rows, projects=projects.projects_for(db, user),
                  selected=project, flash=request.query_params.get("msg"), flash_kind="ok")


def _edit_page(request: Request, db: Session, user: User, edit_id: int, *, status_code: int = 200, **context):
    row = review.reviewable_edit(db, user, edit_id)
    reviews, comments = review.history(db, edit_id)
    return render(request, "review/edit.html", status_code=status_code, title="Review", row=row, reviews=reviews,
                  comments=comments, **context)


@router.get("/{edit_id}")
def edit_page(request: Request, edit_id: int, user: User = Depends(reviewer_only), db: Session = Depends(get_db)):
    return _edit_page(request, db, user, edit_id)


@router.post("/{edit_id}/diff")
def fix_diff(
    request: Request, edit_id: int, fixed_text: str = Form(""), user: User = Depends(reviewer_only),
    db: Session = Depends(get_db),
) -> Response:
    row = review.reviewable_edit(db, user, edit_id)
    diff = annotation.diff_view(row.project, row.item.original, fixed_text)
    return render(request, "annotate/_diff.html", diff=diff)


@router.post("/{edit_id}")
def decide(
    request: Request,
    edit_id: int,
    verdict: str = Form(...),
    fixed_text: str = Form(""),
    comment: str = Form(""),
    version: int | None = Form(None),
    user: User = Depends(reviewer_only),
    db: Session = Depends(get_db),
) -> Response:
    chosen = review.parse_verdict(verdict)
    try:
        review.decide(db, user, edit_id, chosen, fixed_text=fixed_text, comment=comment, version=version)
    except DomainError as exc:  # shown on the edit's page, beside the reviewer's own text and comment
        db.rollback()
        return _edit_page(request, db, user, edit_id, status_code=exc.status_code, flash=str(exc),
                          flash_kind="error", fixed_text=fixed_text, comment=comment)
    db.commit()
    label = {"accept": "Accepted", "fix_and_accept": "Fixed+and+accepted", "reject": "Rejected"}[chosen.value]
    return RedirectResponse(f"/review?msg={label}+edit+{edit_id}", status_code=303)
