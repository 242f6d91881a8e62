"""An annotator's own work: recent submissions with their reviews ("My work"), revising one, giving back
one a reviewer sent back."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from app.deps import get_db, require_roles
from app.errors import DomainError
from app.models import Role, User
from app.services import annotation, feedback
from app.templating import render

router = APIRouter(prefix="/my-work")
annotator = require_roles(Role.ANNOTATOR)


@router.get("")
def my_work(request: Request, user: User = Depends(annotator), db: Session = Depends(get_db)) -> Response:
    return render(request, "annotate/my_work.html", title="My work", rows=feedback.my_work(db, user),
                  flash=request.query_params.get("msg"), flash_kind="ok")


def _revise_page(request: Request, db: Session, user: User, edit_id: int, *, status_code: int = 200, **context):
    work = feedback.own_edit(db, user, edit_id)
    diff = annotation.diff_view(work.project, work.item.original, context.get("text", work.edit.edited_text))
    return render(request, "annotate/revise.html", status_code=status_code, title="Revise", work=work, diff=diff,
                  page_url=f"/my-work/{edit_id}", **context)


@router.get("/{edit_id}")
def revise_page(request: Request, edit_id: int, user: User = Depends(annotator), db: Session = Depends(get_db)):
    return _revise_page(request, db, user, edit_id)


@router.post("/{edit_id}/diff")
def revise_diff(
    request: Request, edit_id: int, text: str = Form(""), user: User = Depends(annotator),
    db: Session = Depends(get_db),
) -> Response:
    work = feedback.own_edit(db, user, edit_id)
    return render(request, "annotate/_diff.html", diff=annotation.diff_view(work.project, work.item.original, text))


@router.post("/{edit_id}")
def revise(
    request: Request, edit_id: int, text: str = Form(...), version: int | None = Form(None),
    user: User = Depends(annotator), db: Session = Depends(get_db),
) -> Response:
    try:
        feedback.revise(db, user, edit_id, text, version)
    except DomainError as exc:  # shown again beside the annotator's own text
        db.rollback()
        return _revise_page(request, db, user, edit_id, status_code=exc.status_code, flash=str(exc),
                            flash_kind="error", text=text)
    db.commit()
    return RedirectResponse(f"/my-work?msg=Revised+edit+%23{edit_id}%3A+it+waits+for+review+again.", status_code=303)


@router.post("/{edit_id}/give-back")
def give_back(edit_id: int, user: User = Depends(annotator), db: Session = Depends(get_db)) -> Response:
    feedback.give_back(db, user, edit_id)
    db.commit()
    return RedirectResponse(f"/my-work?msg=Gave+back+edit+%23{edit_id}%3A+the+item+is+in+the+queue+again.",
                            status_code=303)
