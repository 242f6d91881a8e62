"""The annotator's pages: project list, "Next", the minimal-edit editor with its live diff, submit, skip."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from fastapi import APIRouter, Depends, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import driver
from app.db import session_scope
from app.deps import get_db, require_roles
from app.driver import Steps
from app.errors import DomainError, Forbidden
from app.models import Edit, Item, ItemStatus, LeaseState, Outcome, Project, Role, User, as_utc, utcnow
from app.services import annotation, projects, queue
from app.templating import is_htmx, render

router = APIRouter(prefix="/annotate")
annotator = require_roles(Role.ANNOTATOR)
T = TypeVar("T")
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
async def next_item(request: Request, project_id: int, user: User = Depends(annotator)) -> Response:
    project, task = await _lease_next(request, project_id, user)
    if project is None:
        raise Forbidden("You are not assigned to this project.")
    if task is None:
        return _redirect(request, f"/annotate?msg=Nothing+left+for+you+in+{project.name}.+Thank+you!")
    url = f"/annotate/task/{task.lease.id}"
    if is_htmx(request):  # the editor comes back in this response: one round trip from click to next item
        return _editor_page(request, task, headers={"HX-Push-Url": url})
    return RedirectResponse(url, status_code=303)


# "Next", submit and the live diff are the busiest requests by far. On Postgres they run on the event loop,
# on psycopg's async pool (app.driver); elsewhere in a Session, in the thread pool.


async def _lease_next(request: Request, project_id: int, user: User) -> tuple[Project | None, queue.Task | None]:
    if (pool := request.app.state.driver_pool) is not None:
        async with pool.connection() as conn:
            return await queue.next_task_on_driver(conn, project_id, user)
    return await run_in_threadpool(_lease_next_in_session, project_id, user)


def _lease_next_in_session(project_id: int, user: User) -> tuple[Project | None, queue.Task | None]:
    with session_scope() as session:
        project = queue.enter_project(session, project_id, user)
        return project, queue.next_task_entered(session, project, user) if project else None


async def _run_steps(request: Request, steps: Steps[T]) -> T:
    if (pool := request.app.state.driver_pool) is not None:
        async with pool.connection() as conn:
            return await driver.run_on_driver(conn, steps)
    return await run_in_threadpool(_run_steps_in_session, steps)


def _run_steps_in_session(steps: Steps[T]) -> T:
    with session_scope() as session:
        return driver.run(session, steps)


@router.get("/task/{lease_id}")
async def task(request: Request, lease_id: int, user: User = Depends(annotator)) -> Response:
    return _editor_page(request, annotation.found(await _run_steps(request, queue.finding_task(lease_id, user))))


@router.post("/task/{lease_id}/diff")
async def live_diff(request: Request, lease_id: int, text: str = Form(""), user: User = Depends(annotator)) -> Response:
    """The editor's request while the annotator types (debounced): as busy as Next and submit together,
    so it also runs on the driver."""
    task = annotation.found(await _run_steps(request, queue.finding_task(lease_id, user)))
    diff = annotation.diff_view(task.project, task.item.original, text)
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


async def _after_submit(request: Request, edit: Edit, user: User, advance: bool) -> Response:
    project_id = await _run_steps(request, annotation.project_of_item(edit.item_id)) if advance else None
    if project_id is None:
        return _redirect(request, "/annotate?msg=Saved.")
    return await next_item(request, project_id, user)


@router.post("/task/{lease_id}/submit")
async def submit(
    request: Request, lease_id: int, form: SubmitForm = Depends(_submit_form), user: User = Depends(annotator),
) -> Response:
    if form.outcome not in FORM_OUTCOMES:
        raise DomainError(f"outcome: unknown value {form.outcome!r}; choose one of {', '.join(FORM_OUTCOMES)}")
    outcome = FORM_OUTCOMES[form.outcome]
    edit = None
    if (pool := request.app.state.driver_pool) is not None:
        async with pool.connection() as conn:
            edit = await annotation.submit_on_driver(conn, lease_id, user, outcome, form.text, metrics=form.metrics)
    if edit is None:  # SQLite, or a case only the locking path tells apart (see annotation.submit)
        store = annotation.submit if pool is None else annotation.submit_locking  # not the one statement twice
        edit = await run_in_threadpool(_submit_in_session, store, lease_id, user, outcome, form.text, form.metrics)
    return await _after_submit(request, edit, user, form.advance)


def _submit_in_session(store: Callable[..., Edit], lease_id: int, user: User, outcome: Outcome, text: str = "",
                       metrics: annotation.EditorMetrics = annotation.EditorMetrics(), skip_reason: str = "") -> Edit:
    """`store` (annotation.submit or submit_locking) in a unit of work of its own."""
    with session_scope() as session:
        return store(session, lease_id, user, outcome, text, metrics=metrics, skip_reason=skip_reason)


@router.post("/task/{lease_id}/skip")
async def skip(
    request: Request, lease_id: int, reason: str = Form(""), advance: bool = Form(False),
    user: User = Depends(annotator),
) -> Response:
    edit = await run_in_threadpool(_submit_in_session, annotation.submit, lease_id, user, Outcome.SKIPPED,
                                   skip_reason=reason)
    return await _after_submit(request, edit, user, advance)
