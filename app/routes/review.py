"""Reviewer pages: the queue of pending edits, and one edit with accept / fix & accept / reject."""

from __future__ import annotations

from urllib.parse import quote_plus

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.deps import get_db, require_roles
from app.errors import DomainError, validation_messages
from app.models import Role, User
from app.services import annotation, projects, review
from app.templating import render

router = APIRouter(prefix="/review")
reviewer_only = require_roles(Role.REVIEWER)


def _queue_page(request: Request, db: Session, user: User, project: int | None, *, status_code: int = 200,
                **context) -> Response:
    rows = review.review_queue(db, user, project_id=project)
    context.setdefault("flash", request.query_params.get("msg"))
    context.setdefault("flash_kind", "ok")
    return render(request, "review/queue.html", status_code=status_code, title="Review", rows=rows,
                  projects=projects.projects_for(db, user), selected=project, bulk=context.pop("bulk", {}),
                  bulk_limit=review.BULK_LIMIT,
                  page_url="/review", **context)


@router.get("")
def queue(
    request: Request, project: int | None = None, user: User = Depends(reviewer_only), db: Session = Depends(get_db)
) -> Response:
    return _queue_page(request, db, user, project)


def _where_next(db: Session, user: User, project: int | None, after: int | None, message: str) -> RedirectResponse:
    """To the next pending edit (of the same project filter), or back to the queue when none is left."""
    scope = f"&project={project}" if project else ""
    found = review.next_pending(db, user, project, after)
    if found is None:
        return RedirectResponse(f"/review?msg={quote_plus(message + 'Nothing else waits for review.')}{scope}",
                                status_code=303)
    return RedirectResponse(f"/review/{found}?msg={quote_plus(message)}{scope}", status_code=303)


@router.get("/next")
def next_edit(
    project: int | None = None, after: int | None = None, user: User = Depends(reviewer_only),
    db: Session = Depends(get_db),
) -> Response:
    """The next pending edit after `after` (the keyboard's N), or the first."""
    return _where_next(db, user, project, after, "")


@router.post("/bulk-accept")
async def bulk_accept(request: Request, user: User = Depends(reviewer_only), db: Session = Depends(get_db)) -> Response:
    form = await request.form()
    raw = {k: v for k, v in form.items() if k not in ("csrf_token", "preview") and v != ""}
    raw["outcomes"] = form.getlist("outcomes") or ["edited"]
    raw["annotator_kinds"] = form.getlist("annotator_kinds") or None  # none ticked: anyone
    raw["exclude_not_minimal"] = "exclude_not_minimal" in form
    project = int(raw["project_id"]) if str(raw.get("project_id", "")).isdigit() else None
    try:
        flt = review.BulkFilter.model_validate(raw)
    except ValidationError as exc:
        return _queue_page(request, db, user, project, status_code=422, flash="; ".join(validation_messages(exc)),
                           flash_kind="error", bulk=raw)
    if form.get("preview"):
        count = review.bulk_count(db, user, flt)
        return _queue_page(request, db, user, project, bulk=raw, bulk_count=count,
                           flash=f"{count} pending edit(s) match; press Accept all to accept them.", flash_kind="info")
    accepted = review.bulk_accept(db, user, flt)
    db.commit()
    scope = f"&project={project}" if project else ""
    return RedirectResponse(f"/review?msg={quote_plus(f'Accepted {accepted} edit(s) in bulk.')}{scope}",
                            status_code=303)


def _edit_page(request: Request, db: Session, user: User, edit_id: int, *, status_code: int = 200, **context):
    row = review.reviewable_edit(db, user, edit_id)
    reviews, comments = review.history(db, edit_id)
    context.setdefault("flash", request.query_params.get("msg"))
    context.setdefault("flash_kind", "ok")
    return render(request, "review/edit.html", status_code=status_code, title="Review", row=row, reviews=reviews,
                  comments=comments, scope=request.query_params.get("project", ""), page_url=f"/review/{edit_id}",
                  **context)


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
    project: int | None = Form(None),
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
    label = {"accept": "Accepted", "fix_and_accept": "Fixed and accepted", "reject": "Rejected"}[chosen.value]
    return _where_next(db, user, project, edit_id, f"{label} edit #{edit_id}. ")
