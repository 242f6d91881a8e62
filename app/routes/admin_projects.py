"""Admin pages for projects: create, settings and guidelines, members, and file import."""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.deps import get_db, require_roles
from app.errors import NotFound
from app.models import ImportBatch, Item, Project, Role, User
from app.services import edit_import
from app.services import projects as project_service
from app.services.import_formats import FORMATS, FormatError, import_file
from app.services.importer import ImportRejected
from app.settings import get_settings
from app.templating import render
from labels import DEFAULT_MINIMALITY_BUDGET

router = APIRouter(prefix="/admin/projects")
admin_only = require_roles(Role.ADMIN)


def _settings_from_form(
    name: str, tokenizer: str, annotations_per_item: int, minimality_budget: float, lease_minutes: float | None,
    guidelines_md: str, description: str, return_rejected: bool = False, model_edits_count: bool = True,
) -> project_service.ProjectSettings:
    settings = project_service.ProjectSettings(
        name=name, tokenizer=tokenizer, annotations_per_item=annotations_per_item,
        minimality_budget=minimality_budget, guidelines_md=guidelines_md, description=description,
        return_rejected=return_rejected, model_edits_count=model_edits_count,
    )
    if lease_minutes is not None:  # else the deployment's default (REDLINE_LEASE_SECONDS_DEFAULT)
        settings.lease_seconds = round(lease_minutes * 60)
    return settings


class ProjectForm:
    """The settings form shared by create and edit."""

    def __init__(
        self,
        name: str = Form(...),
        tokenizer: str = Form(...),
        annotations_per_item: int = Form(1),
        minimality_budget: float = Form(DEFAULT_MINIMALITY_BUDGET),
        lease_minutes: float | None = Form(None),
        guidelines_md: str = Form(""),
        description: str = Form(""),
        return_rejected: bool = Form(False),
        # A select, not a checkbox: a form without the field keeps the default instead of turning it off.
        model_edits_count: bool = Form(True),
    ) -> None:
        self.settings = _settings_from_form(
            name, tokenizer, annotations_per_item, minimality_budget, lease_minutes, guidelines_md, description,
            return_rejected, model_edits_count,
        )


def _list_page(request: Request, db: Session, *, status_code: int = 200, **context) -> Response:
    counts = dict(db.execute(select(Item.project_id, func.count()).group_by(Item.project_id)).all())
    projects = db.scalars(select(Project).order_by(Project.created_at.desc())).all()
    # A new project's form starts from the defaults (the deployment's tokenizer and lease time).
    form = context.pop("form", None) or project_service.ProjectSettings(name="", tokenizer=get_settings().default_model)
    return render(
        request, "admin/projects.html", status_code=status_code, title="Projects", projects=projects,
        counts=counts, form=form, **context,
    )


@router.get("")
def list_projects(request: Request, _admin: User = Depends(admin_only), db: Session = Depends(get_db)) -> Response:
    return _list_page(request, db)


@router.post("")
def create(
    request: Request, form: ProjectForm = Depends(), admin: User = Depends(admin_only), db: Session = Depends(get_db)
) -> Response:
    try:
        project = project_service.create_project(db, form.settings, admin)
    except project_service.ProjectError as exc:
        db.rollback()
        return _list_page(request, db, status_code=exc.status_code, flash=str(exc), flash_kind="error",
                          form=form.settings)
    db.commit()
    return RedirectResponse(f"/admin/projects/{project.id}", status_code=303)


def _detail_page(request: Request, db: Session, project: Project, *, status_code: int = 200, **context) -> Response:
    people = db.scalars(
        select(User).where(User.is_active.is_(True), User.role.in_([Role.ANNOTATOR, Role.REVIEWER]))
        .order_by(User.username)
    ).all()
    batches = db.scalars(
        select(ImportBatch).where(ImportBatch.project_id == project.id).order_by(ImportBatch.id.desc()).limit(20)
    ).all()
    return render(
        request, "admin/project.html", status_code=status_code, title=project.name, project=project,
        people=people, members=project_service.member_ids(db, project.id), batches=batches, formats=FORMATS,
        edit_modes=edit_import.MODES, source_pattern=edit_import.NAME_PATTERN,
        max_upload_mb=get_settings().max_upload_mb, page_url=f"/admin/projects/{project.id}", **context,
    )


def _project_or_404(db: Session, project_id: int) -> Project:
    project = db.get(Project, project_id)
    if project is None:
        raise NotFound(f"project {project_id} does not exist")
    return project


@router.get("/{project_id}")
def detail(
    request: Request, project_id: int, _admin: User = Depends(admin_only), db: Session = Depends(get_db)
) -> Response:
    done = request.query_params.get("done")
    return _detail_page(request, db, _project_or_404(db, project_id), flash=done, flash_kind="ok")


@router.post("/{project_id}")
def update(
    request: Request, project_id: int, form: ProjectForm = Depends(),
    admin: User = Depends(admin_only), db: Session = Depends(get_db),
) -> Response:
    project = _project_or_404(db, project_id)
    try:
        project_service.update_project(db, project, form.settings, admin)
    except project_service.ProjectError as exc:
        db.rollback()
        return _detail_page(request, db, project, status_code=exc.status_code, flash=str(exc), flash_kind="error")
    db.commit()
    return RedirectResponse(f"/admin/projects/{project_id}?done=Saved", status_code=303)


@router.post("/{project_id}/members")
async def members(
    request: Request, project_id: int, admin: User = Depends(admin_only), db: Session = Depends(get_db)
) -> Response:
    form = await request.form()
    user_ids = {int(v) for v in form.getlist("member") if str(v).isdigit()}
    project_service.set_members(db, _project_or_404(db, project_id), user_ids, admin)
    db.commit()
    return RedirectResponse(f"/admin/projects/{project_id}?done=Members+saved", status_code=303)


@router.post("/{project_id}/archived")
def archive(
    project_id: int, archived: bool = Form(...), admin: User = Depends(admin_only), db: Session = Depends(get_db)
) -> Response:
    project_service.set_archived(db, _project_or_404(db, project_id), archived, admin)
    db.commit()
    return RedirectResponse(f"/admin/projects/{project_id}?done={'Archived' if archived else 'Restored'}",
                            status_code=303)


@router.post("/{project_id}/import")
def upload(
    request: Request,
    project_id: int,
    file: UploadFile = File(...),
    fmt: str = Form(""),
    map_prompt: str = Form(""),
    map_response: str = Form(""),
    map_chosen: str = Form(""),
    map_edited: str = Form(""),
    edits_from: str = Form(""),
    edits_as: str = Form(edit_import.EDITS),
    admin: User = Depends(admin_only),
    db: Session = Depends(get_db),
) -> Response:
    project = _project_or_404(db, project_id)
    limit = get_settings().max_upload_mb * 1024 * 1024
    if (file.size or 0) > limit:
        return _detail_page(request, db, project, status_code=413, flash_kind="error",
                            flash=f"The file is larger than the {get_settings().max_upload_mb} MB upload limit.")
    mapping = {k: v.strip() for k, v in (("prompt", map_prompt), ("response", map_response),
                                          ("chosen", map_chosen), ("edited", map_edited)) if v.strip()}
    edits = edit_import.EditSource(edits_from.strip(), edits_as) if edits_from.strip() else None
    try:
        result = import_file(db, project, file.file, filename=file.filename or "upload", fmt=fmt or None,
                             mapping=mapping, actor=admin, edits=edits)
    except (ImportRejected, FormatError, edit_import.EditSourceError) as exc:
        db.rollback()
        return _detail_page(request, db, project, status_code=exc.status_code, flash=str(exc), flash_kind="error",
                            import_errors=getattr(exc, "errors", None))
    db.commit()
    message = f"Imported {result.imported} item(s); {result.duplicates} duplicate(s) skipped{result.edits_note}"
    return RedirectResponse(f"/admin/projects/{project_id}?done={message}", status_code=303)
