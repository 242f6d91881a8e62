"""Dataset pages (/datasets): freeze a filter into a version, inspect it, download any export format.

Freezing is a job (app/services/freeze.py): the form answers at once with the version's page, which follows
the job's progress until the version is ready (or shows why it failed). Downloads link to the JSON API's
download route, which also accepts the browser session: one implementation of streaming, role checks and
error messages for both.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.deps import get_db, require_roles
from app.errors import NotFound, validation_messages
from app.models import DatasetState, DatasetVersion, Job, Project, Role, User, Verdict
from app.services import datasets, export, freeze
from app.settings import get_settings
from app.templating import render

router = APIRouter(tags=["pages"], include_in_schema=False)
can_manage = require_roles(Role.RESEARCHER)  # admins pass every role check

LIST_FIELDS = ("outcomes", "review_statuses", "verdicts", "annotator_ids")
SCALAR_FIELDS = ("project_id", "min_edit_rate", "max_edit_rate", "created_after", "created_before")


async def _form_filter(request: Request) -> tuple[str, dict[str, Any]]:
    """The dataset name and the raw filter fields of the form (blank fields left out)."""
    form = await request.form()
    raw: dict[str, Any] = {field: form.getlist(field) for field in LIST_FIELDS if form.getlist(field)}
    raw.update({field: form[field] for field in SCALAR_FIELDS if str(form.get(field, "")).strip()})
    if form.get("exclude_not_minimal"):
        raw["exclude_not_minimal"] = True
    return str(form.get("name", "")), raw


def _form_context(db: Session) -> dict[str, Any]:
    return {
        "projects": list(db.scalars(select(Project).order_by(Project.name))),
        "annotators": list(db.scalars(select(User).where(User.role == Role.ANNOTATOR).order_by(User.username))),
        "verdicts": [v.value for v in Verdict],
        "defaults": datasets.DatasetFilter().model_dump(mode="json"),
    }


def _list_page(request: Request, db: Session, *, status_code: int = 200, **context) -> Response:
    versions = list(db.scalars(select(DatasetVersion).order_by(DatasetVersion.id.desc()).limit(200)))
    projects = {p.id: p.name for p in db.scalars(select(Project))}
    return render(request, "datasets/list.html", status_code=status_code, versions=versions,
                  project_names=projects, formats=export.EXPORT_FORMATS, **_form_context(db), **context)


@router.get("/datasets")
def list_datasets(request: Request, db: Session = Depends(get_db), _user: User = Depends(can_manage)) -> Response:
    return _list_page(request, db, form={})


@router.post("/datasets/preview")
async def preview(request: Request, db: Session = Depends(get_db), _user: User = Depends(can_manage)) -> Response:
    """htmx: how many edits the filter selects right now, or what is wrong with it."""
    _name, raw = await _form_filter(request)
    try:
        flt = datasets.DatasetFilter.model_validate(raw)
        datasets.validate_filter_targets(db, flt)
    except ValidationError as exc:
        return render(request, "datasets/_preview.html", errors=validation_messages(exc))
    except datasets.DatasetError as exc:
        return render(request, "datasets/_preview.html", errors=[str(exc)])
    return render(request, "datasets/_preview.html", count=datasets.matching_count(db, flt), errors=[])


@router.post("/datasets")
async def create_dataset(
    request: Request, db: Session = Depends(get_db), user: User = Depends(can_manage)
) -> Response:
    name, raw = await _form_filter(request)
    try:
        flt = datasets.DatasetFilter.model_validate(raw)
        version = freeze.request_version(db, flt, name, user)
    except ValidationError as exc:
        db.rollback()
        return _list_page(request, db, status_code=422, errors=validation_messages(exc), form={**raw, "name": name})
    except datasets.DatasetError as exc:
        db.rollback()
        return _list_page(request, db, status_code=exc.status_code, errors=[str(exc)], form={**raw, "name": name})
    db.commit()
    return RedirectResponse(f"/datasets/{version.id}", status_code=303)


def _tokenizer_choices(db: Session) -> list[str]:
    names = set(db.scalars(select(Project.tokenizer))) | {get_settings().default_model}
    return sorted(names)


def _version_or_404(db: Session, version_id: int) -> DatasetVersion:
    version = db.get(DatasetVersion, version_id)
    if version is None:
        raise NotFound(f"dataset version {version_id} not found")
    return version


VersionId = Annotated[int, Path(ge=1, le=datasets.MAX_ID)]


@router.get("/datasets/{version_id}")
def dataset_detail(
    version_id: VersionId, request: Request, db: Session = Depends(get_db), _user: User = Depends(can_manage),
) -> Response:
    version = _version_or_404(db, version_id)
    ready = version.state == DatasetState.READY
    return render(
        request, "datasets/detail.html", title=version.name, version=version, formats=export.EXPORT_FORMATS,
        filter_json=json.dumps(version.filter, indent=2, sort_keys=True),
        card=export.card_text(db, version, None) if ready else "",
        job=db.get(Job, version.job_id) if version.job_id else None,
        download_base=f"/api/v1/datasets/{version.id}/download", tokenizers=_tokenizer_choices(db),
        project=db.get(Project, version.project_id) if version.project_id else None,
        creator=db.get(User, version.created_by_id) if version.created_by_id else None,
    )


@router.get("/datasets/{version_id}/progress")
def dataset_progress(
    version_id: VersionId, request: Request, db: Session = Depends(get_db), _user: User = Depends(can_manage),
) -> Response:
    """htmx, polled while the version freezes: its job's progress; once it is done, the whole page again."""
    version = _version_or_404(db, version_id)
    response = render(request, "datasets/_progress.html", version=version,
                      job=db.get(Job, version.job_id) if version.job_id else None)
    if version.state != DatasetState.FREEZING:
        response.headers["HX-Refresh"] = "true"
    return response
