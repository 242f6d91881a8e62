"""Admin pages for model editors: connect, change, test the connection, start a job."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.deps import get_db, require_roles
from app.editors import service
from app.editors.service import EditorError, EditorSettings
from app.errors import NotFound
from app.models import Job, ModelEditor, Project, PromptKind, Role, User
from app.templating import render

router = APIRouter(prefix="/admin/editors")
admin_only = require_roles(Role.ADMIN)


class EditorForm:
    """The settings form shared by create and edit. An empty API key field keeps the stored key."""

    def __init__(
        self,
        name: str = Form(...),
        base_url: str = Form(...),
        model: str = Form(...),
        api_key: str = Form(""),
        temperature: float = Form(0.0),
        max_tokens: int = Form(512),
        timeout_s: float = Form(60.0),
        max_concurrency: int = Form(4),
        requests_per_minute: int = Form(0),
        prompt_kind: str = Form(PromptKind.ONE_STAGE.value),
        custom_template: str = Form(""),
    ) -> None:
        self.settings = EditorSettings(
            name=name, base_url=base_url, model=model, api_key=api_key or None, temperature=temperature,
            max_tokens=max_tokens, timeout_s=timeout_s, max_concurrency=max_concurrency,
            requests_per_minute=requests_per_minute, prompt_kind=prompt_kind, custom_template=custom_template,
        )


def _projects(db: Session) -> list[Project]:
    return list(db.scalars(select(Project).where(Project.archived.is_(False)).order_by(Project.name)))


def _list_page(request: Request, db: Session, *, status_code: int = 200, **context) -> Response:
    return render(request, "editors/list.html", status_code=status_code, title="Model editors",
                  editors=service.list_editors(db), prompt_kinds=[k.value for k in PromptKind],
                  form=context.pop("form", None) or EditorSettings(name="", base_url="", model=""), **context)


def _editor_or_404(db: Session, editor_id: int) -> ModelEditor:
    editor = db.get(ModelEditor, editor_id)
    if editor is None:
        raise NotFound(f"model editor {editor_id} does not exist")
    return editor


def _detail_page(request: Request, db: Session, editor: ModelEditor, *, status_code: int = 200, **context) -> Response:
    editor_jobs = db.scalars(
        select(Job).where(Job.kind == service.JOB_KIND, Job.config["editor_id"].as_integer() == editor.id)
        .order_by(Job.id.desc()).limit(20)
    ).all()
    return render(request, "editors/detail.html", status_code=status_code, title=f"Model editor {editor.name}",
                  editor=editor, version=service.template(editor).version, prompt_kinds=[k.value for k in PromptKind],
                  projects=_projects(db), jobs=editor_jobs, modes=service.MODES, **context)


@router.get("")
def list_editors(request: Request, _admin: User = Depends(admin_only), db: Session = Depends(get_db)) -> Response:
    return _list_page(request, db)


@router.post("")
def create(request: Request, form: EditorForm = Depends(), admin: User = Depends(admin_only),
           db: Session = Depends(get_db)) -> Response:
    try:
        editor = service.create_editor(db, form.settings, admin)
    except EditorError as exc:
        db.rollback()
        return _list_page(request, db, status_code=exc.status_code, flash=str(exc), flash_kind="error",
                          form=form.settings)
    db.commit()
    return RedirectResponse(f"/admin/editors/{editor.id}", status_code=303)


@router.get("/{editor_id}")
def detail(request: Request, editor_id: int, _admin: User = Depends(admin_only),
           db: Session = Depends(get_db)) -> Response:
    return _detail_page(request, db, _editor_or_404(db, editor_id), flash=request.query_params.get("done"),
                        flash_kind="ok")


@router.post("/{editor_id}")
def update(request: Request, editor_id: int, form: EditorForm = Depends(), admin: User = Depends(admin_only),
           db: Session = Depends(get_db)) -> Response:
    editor = _editor_or_404(db, editor_id)
    try:
        service.update_editor(db, editor, form.settings, admin)
    except EditorError as exc:
        db.rollback()
        return _detail_page(request, db, _editor_or_404(db, editor_id), status_code=exc.status_code, flash=str(exc),
                            flash_kind="error")
    db.commit()
    return RedirectResponse(f"/admin/editors/{editor_id}?done=Saved", status_code=303)


@router.post("/{editor_id}/test")
def test_connection(request: Request, editor_id: int, project_id: int | None = Form(None),
                    _admin: User = Depends(admin_only), db: Session = Depends(get_db)) -> Response:
    """Send one item (the project's first open one, or a built-in sample) and show the model's edit."""
    editor = _editor_or_404(db, editor_id)
    target = service.trial_target(db, project_id)
    db.rollback()  # hold no transaction while the model answers
    return _detail_page(request, db, editor, trial=service.try_editor(editor, target))


@router.post("/{editor_id}/jobs")
def start_job(request: Request, editor_id: int, project_id: int = Form(...), mode: str = Form("annotate"),
              limit: int | None = Form(None), admin: User = Depends(admin_only),
              db: Session = Depends(get_db)) -> Response:
    editor = _editor_or_404(db, editor_id)
    try:
        job = service.start_job(db, editor, project_id, mode, admin, limit=limit)
    except EditorError as exc:
        db.rollback()
        return _detail_page(request, db, _editor_or_404(db, editor_id), status_code=exc.status_code, flash=str(exc),
                            flash_kind="error")
    db.commit()
    return RedirectResponse(f"/jobs/{job.id}", status_code=303)
