"""/api/v1/datasets: create dataset versions from a filter, list them, download them in any format."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.api.auth import Principal, require_scope
from app.api.lookup import get_or_404
from app.api.schemas import DatasetCreate, DatasetOut, Problem
from app.db import session_scope
from app.deps import get_db
from app.errors import DomainError
from app.models import DatasetState, DatasetVersion, Job, Project
from app.services import datasets, export, freeze
from app.services.datasets import MAX_ID
from app.settings import get_settings

router = APIRouter(tags=["datasets"])
# The OpenAPI schema lists the formats as an enum, so a bad one is a 422 naming the choices.
ExportFormatName = Literal[tuple(export.EXPORT_FORMATS)]  # type: ignore[valid-type]
VersionId = Annotated[int, Path(ge=1, le=MAX_ID)]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def download_links(request: Request, version_id: int) -> dict[str, str]:
    url = request.url_for("download_dataset", version_id=version_id)
    return {name: f"{url.path}?format={name}" for name in export.EXPORT_FORMATS}


def _out(request: Request, db: Session, version: DatasetVersion) -> DatasetOut:
    summary = datasets.version_summary(version)
    ready = version.state == DatasetState.READY
    job = db.get(Job, version.job_id) if version.job_id and not ready else None
    return DatasetOut(**summary, progress=1.0 if ready else job.progress if job else 0.0,
                      downloads=download_links(request, version.id) if ready else {})


def permitted_tokenizer(db: Session, name: str) -> str:
    """Export-time tokenizers: a project's tokenizer, the default model, or a Hugging Face hub id.

    Arbitrary server paths are refused, so the API cannot be used to probe the file system.
    """
    known = set(db.scalars(select(Project.tokenizer))) | {get_settings().default_model}
    if name in known or (HUB_ID.match(name) and ".." not in name):
        return name
    raise DomainError(f"tokenizer {name[:200]!r} is not allowed: use a project's tokenizer, the default model, or a "
                      "hub id", 422)


@router.get("/datasets", response_model=list[DatasetOut], summary="List dataset versions, newest first")
def list_datasets(
    request: Request,
    project_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    db: Session = Depends(get_db),
    _caller: Principal = Depends(require_scope("datasets:read")),
) -> list[DatasetOut]:
    query = select(DatasetVersion).order_by(DatasetVersion.id.desc())
    if project_id is not None:
        query = query.where(DatasetVersion.project_id == project_id)
    return [_out(request, db, version) for version in db.scalars(query)]


@router.post(
    "/datasets", response_model=DatasetOut, status_code=202,
    summary="Freeze a filter into a new version (a job: poll the version until its state is ready)",
    responses={422: {"model": Problem, "description": "Malformed filter or name, unknown project or annotator"}},
)
def create_dataset(
    request: Request,
    response: Response,
    body: DatasetCreate,
    db: Session = Depends(get_db),
    caller: Principal = Depends(require_scope("datasets:write")),
) -> DatasetOut:
    """Answers at once with the new version in state `freezing`; a worker (`redline worker`) freezes it. A filter
    that selects nothing makes the version `failed` with that reason."""
    version = freeze.request_version(db, body.filter, body.name, caller.user)
    db.commit()
    response.headers["Location"] = str(request.url_for("get_dataset", version_id=version.id).path)
    return _out(request, db, version)


@router.get(
    "/datasets/{version_id}", response_model=DatasetOut, summary="One dataset version",
    responses={404: {"model": Problem}},
)
def get_dataset(
    request: Request,
    version_id: VersionId,
    db: Session = Depends(get_db),
    _caller: Principal = Depends(require_scope("datasets:read")),
) -> DatasetOut:
    version = get_or_404(db, DatasetVersion, version_id, "dataset version")
    return _out(request, db, version)


@router.get(
    "/datasets/{version_id}/download",
    summary="Download a dataset version (streamed)",
    response_class=StreamingResponse,
    responses={
        200: {"description": "The file, streamed", "content": {"application/x-ndjson": {}}},
        404: {"model": Problem},
        409: {"model": Problem, "description": "The version is still freezing, or its freeze failed"},
        422: {"model": Problem, "description": "Unknown format or tokenizer"},
    },
)
def download_dataset(
    version_id: VersionId,
    format: Annotated[ExportFormatName, Query(description="Export format")] = "pairs-jsonl",
    tokenizer: Annotated[
        str | None, Query(max_length=500, description="Recompute token labels for this tokenizer")
    ] = None,
    db: Session = Depends(get_db),
    _caller: Principal = Depends(require_scope("datasets:read")),
) -> StreamingResponse:
    if tokenizer:
        permitted_tokenizer(db, tokenizer)
    version, stream = export.open_export(session_scope, version_id, format, tokenizer or None)
    spec = export.EXPORT_FORMATS[format]
    filename = export.export_filename(version, format)
    return StreamingResponse(
        stream, media_type=spec.media_type,
        headers={"Content-Disposition": f'attachment; filename="{filename}"', "X-Content-Hash": version.content_hash},
    )
