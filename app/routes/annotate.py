"""The annotator's pages: project list, "Next", the minimal-edit editor with its live diff, submit, skip."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.deps import Forbidden, get_db, require_roles
from app.models import Edit, Item, ItemStatus, LeaseState, Outcome, Role, User, as_utc, utcnow
from app.services import annotation, projects, queue
from app.templating import render

router = APIRouter(prefix="/annotate")
annotator = require_roles(Role.ANNOTATOR)
FORM_OUTCOMES = {o.value: o for o in (Outcome.EDITED, Outcome.NO_CHANGE_NEEDED, Outcome.UNFIXABLE)}


def _is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def _redirect(request: Request, url: str) -> Response:
    """htmx follows HX-Redirect with a full page load; plain forms get a 303."""
    if _is_htmx(request):
        return Response(status_code=204, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)


def _error_page(request: Request, exc: annotation.AnnotationError) -> Response:
    if _is_htmx(request):
        return render(request, "annotate/_error.html", status_code=exc.status_code, message=str(exc))
    return render(request, "error.html", status_code=exc.status_code, title="Cannot do that", message=str(exc))


@router.get("")
def index(request: Request, user: User = Depends(annotator), db: Session = Depends(get_db)) -> Response:
    mine = projects.projects_for(db, user)
    ids = [p.id for p in mine]
    open_items = dict(db.execute(
        select(Item.project_id, func.count()).where(Item.project_id.in_(ids), Item.status == ItemStatus.OPEN)
        .group_by(Item.project_id)
    ).all())
    done = dict(db.execute(
        select(Item.project_id, func.count()).join(Edit, Edit.item_id == Item.id)
        .where(Edit.annotator_id == user.id, Item.project_id.in_(ids)).group_by(Item.project_id)
    ).all())
    return render(request, "annotate/index.html", title="Annotate", projects=mine, open_items=open_items,
                  done=done, flash=request.query_params.get("msg"))


def _editor_page(request: Request, task: queue.Task, headers: dict[str, str] | None = None) -> Response:
    lease = task.lease
    if lease.state != LeaseState.ACTIVE:
        return render(request, "error.html", status_code=410, title="Task closed",
                      message=f"This task is {lease.state}. Press Next for another one.")
    expires_in_s = max(0, int((as_utc(lease.expires_at) - utcnow()).total_seconds()))
    # No diff yet: nothing changed; the first keystroke brings the live diff.
    return render(request, "annotate/task.html", headers=headers, title="Edit", lease=lease, item=task.item,
                  project=task.project, diff=None, expires_in_s=expires_in_s)


@router.post("/{project_id}/next")
def next_item(
    request: Request, project_id: int, user: User = Depends(annotator), db: Session = Depends(get_db)
) -> Response:
    project = queue.enter_project(db, project_id, user)
    if project is None:
        raise Forbidden("You are not assigned to this project.")
    task = queue.next_task_entered(db, project, user)
    db.commit()
    if task is None:
        return _redirect(request, f"/annotate?msg=Nothing+left+for+you+in+{project.name}.+Thank+you!")
    url = f"/annotate/task/{task.lease.id}"
    if _is_htmx(request):  # the editor comes back in this response: one round trip from click to next item
        return _editor_page(request, task, headers={"HX-Push-Url": url})
    return RedirectResponse(url, status_code=303)


@router.get("/task/{lease_id}")
def task(request: Request, lease_id: int, user: User = Depends(annotator), db: Session = Depends(get_db)) -> Response:
    try:
        return _editor_page(request, annotation.task_for(db, lease_id, user))
    except annotation.AnnotationError as exc:
        return _error_page(request, exc)


@router.post("/task/{lease_id}/diff")
def live_diff(
    request: Request, lease_id: int, text: str = Form(""), user: User = Depends(annotator),
    db: Session = Depends(get_db),
) -> Response:
    try:
        task = annotation.task_for(db, lease_id, user)
        diff = annotation.diff_view(task.project, task.item.original, text)
    except annotation.AnnotationError as exc:
        return _error_page(request, exc)
    return render(request, "annotate/_diff.html", diff=diff)


@dataclass(frozen=True)
class SubmitForm:
    outcome: str
    text: str
    advance: bool
    metrics: annotation.EditorMetrics


async def _submit_form(request: Request) -> SubmitForm:
    """The editor's form, read once. Async: pure parsing, no thread-pool hop. (Eight `Form()` parameters
    cost FastAPI more per submit than all of the submit's own Python.)"""
    form = await request.form()

    def field(name: str, default: str = "") -> str:
        value = form.get(name, default)
        return value if isinstance(value, str) else default

    def number(name: str) -> int | None:
        value = field(name).strip()
        return int(value) if value.lstrip("-").isdigit() else None

    metrics = annotation.EditorMetrics(
        number("time_to_first_key_ms"), number("active_ms"), number("keystrokes") or 0, number("pastes") or 0
    )
    advance = field("advance").lower() in {"true", "1", "on", "yes"}
    return SubmitForm(field("outcome", "edited"), field("text"), advance, metrics)


def _after_submit(request: Request, db: Session, edit: Edit, user: User, advance: bool) -> Response:
    if not advance:
        return _redirect(request, "/annotate?msg=Saved.")
    return next_item(request, db.get(Item, edit.item_id).project_id, user, db)


@router.post("/task/{lease_id}/submit")
def submit(
    request: Request,
    lease_id: int,
    form: SubmitForm = Depends(_submit_form),
    user: User = Depends(annotator),
    db: Session = Depends(get_db),
) -> Response:
    if form.outcome not in FORM_OUTCOMES:
        return _error_page(request, annotation.AnnotationError(f"outcome: unknown value {form.outcome!r}"))
    try:
        edit = annotation.submit(db, lease_id, user, FORM_OUTCOMES[form.outcome], form.text, metrics=form.metrics)
    except annotation.AnnotationError as exc:
        db.rollback()
        return _error_page(request, exc)
    db.commit()
    return _after_submit(request, db, edit, user, form.advance)


@router.post("/task/{lease_id}/skip")
def skip(
    request: Request, lease_id: int, reason: str = Form(""), advance: bool = Form(False),
    user: User = Depends(annotator), db: Session = Depends(get_db),
) -> Response:
    try:
        edit = annotation.submit(db, lease_id, user, Outcome.SKIPPED, skip_reason=reason)
    except annotation.AnnotationError as exc:
        db.rollback()
        return _error_page(request, exc)
    db.commit()
    return _after_submit(request, db, edit, user, advance)
