"""The annotator's pages: project list, "Next", the minimal-edit editor with its live diff, submit, skip."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.deps import database, get_db, require_roles
from app.driver import Database
from app.errors import DomainError, Forbidden
from app.models import Edit, Item, ItemStatus, LeaseState, Outcome, Role, User, as_utc, utcnow
from app.services import annotation, projects, queue, suggestions
from app.templating import is_htmx, render

router = APIRouter(prefix="/annotate")
annotator = require_roles(Role.ANNOTATOR)
FORM_OUTCOMES = {o.value: o for o in (Outcome.EDITED, Outcome.NO_CHANGE_NEEDED, Outcome.UNFIXABLE)}


def _redirect(request: Request, url: str) -> Response:
    """htmx follows HX-Redirect with a full page load; plain forms get a 303."""
    if is_htmx(request):
        return Response(status_code=204, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)


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


async def _editor_page(request: Request, db: Database, task: queue.Task,
                       headers: dict[str, str] | None = None) -> Response:
    lease = task.lease
    if lease.state != LeaseState.ACTIVE:
        return render(request, "error.html", status_code=410, title="Task closed",
                      message=f"This task is {lease.state}. Press Next for another one.")
    expires_in_s = max(0, int((as_utc(lease.expires_at) - utcnow()).total_seconds()))
    offered = await db.run(suggestions.offering(task.item.id)) if task.suggested else None
    # The editor opens with the suggestion, if the item has one, and its diff against the original; else
    # nothing changed yet, and the first keystroke brings the live diff.
    diff = annotation.diff_view(task.project, task.item.original, offered.suggestion.text) if offered else None
    return render(request, "annotate/task.html", headers=headers, title="Edit", lease=lease, item=task.item,
                  project=task.project, diff=diff, suggestion=offered, expires_in_s=expires_in_s)


@router.post("/{project_id}/next")
async def next_item(request: Request, project_id: int, user: User = Depends(annotator),
                    db: Database = Depends(database)) -> Response:
    project, task = await queue.next_task(db, project_id, user)
    if project is None:
        raise Forbidden("You are not assigned to this project.")
    if task is None:
        return _redirect(request, f"/annotate?msg=Nothing+left+for+you+in+{project.name}.+Thank+you!")
    url = f"/annotate/task/{task.lease.id}"
    if is_htmx(request):  # the editor comes back in this response: one round trip from click to next item
        return await _editor_page(request, db, task, headers={"HX-Push-Url": url})
    return RedirectResponse(url, status_code=303)


# "Next", the editor, its live diff and submit are the busiest requests by far: they run on the app's
# `Database` (app.driver: on Postgres the event loop and psycopg's async pool, elsewhere Sessions).


@router.get("/task/{lease_id}")
async def task(request: Request, lease_id: int, user: User = Depends(annotator),
               db: Database = Depends(database)) -> Response:
    return await _editor_page(request, db, annotation.found(await db.run(queue.finding_task(lease_id, user))))


@router.post("/task/{lease_id}/diff")
async def live_diff(request: Request, lease_id: int, text: str = Form(""), user: User = Depends(annotator),
                    db: Database = Depends(database)) -> Response:
    """The editor's request while the annotator types (debounced): as busy as Next and submit together."""
    task = annotation.found(await db.run(queue.finding_task(lease_id, user)))
    return render(request, "annotate/_diff.html", diff=annotation.diff_view(task.project, task.item.original, text))


@dataclass(frozen=True)
class SubmitForm:
    outcome: str
    text: str
    advance: bool
    metrics: annotation.EditorMetrics
    suggestion_id: int | None  # the suggestion the editor held (not reset to the original)


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
    return SubmitForm(field("outcome", "edited"), field("text"), advance, metrics, number("suggestion_id"))


async def _after_submit(request: Request, db: Database, edit: Edit, user: User, advance: bool) -> Response:
    project_id = await db.run(annotation.project_of_item(edit.item_id)) if advance else None
    if project_id is None:
        return _redirect(request, "/annotate?msg=Saved.")
    return await next_item(request, project_id, user, db)


@router.post("/task/{lease_id}/submit")
async def submit(
    request: Request, lease_id: int, form: SubmitForm = Depends(_submit_form), user: User = Depends(annotator),
    db: Database = Depends(database),
) -> Response:
    if form.outcome not in FORM_OUTCOMES:
        raise DomainError(f"outcome: unknown value {form.outcome!r}; choose one of {', '.join(FORM_OUTCOMES)}")
    edit = await annotation.submit(db, lease_id, user, FORM_OUTCOMES[form.outcome], form.text, metrics=form.metrics,
                                   suggestion_id=form.suggestion_id)
    return await _after_submit(request, db, edit, user, form.advance)


@router.post("/task/{lease_id}/skip")
async def skip(
    request: Request, lease_id: int, reason: str = Form(""), advance: bool = Form(False),
    user: User = Depends(annotator), db: Database = Depends(database),
) -> Response:
    edit = await annotation.submit(db, lease_id, user, Outcome.SKIPPED, skip_reason=reason)
    return await _after_submit(request, db, edit, user, advance)
