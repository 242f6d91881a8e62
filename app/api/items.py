"""/api/v1/projects/{id}/items: import items (and the edits they hold), all or nothing, with every bad row
reported."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from app.api.auth import Principal, require_scope
from app.api.lookup import get_or_404
from app.api.schemas import ImportOut, ImportProblem, ItemsImport, Problem
from app.deps import get_db
from app.models import Project
from app.services.datasets import MAX_ID
from app.services.edit_import import EditSource
from app.services.import_formats import map_row
from app.services.importer import ImportRejected, import_records

router = APIRouter(tags=["items"])


@router.post(
    "/projects/{project_id}/items", response_model=ImportOut, status_code=201,
    summary="Import items into a project (all or nothing)",
    responses={404: {"model": Problem}, 422: {"model": ImportProblem, "description": "Bad rows; nothing imported"}},
)
def import_items(
    project_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    body: ItemsImport,
    db: Session = Depends(get_db),
    caller: Principal = Depends(require_scope("items:write")),
) -> ImportOut | JSONResponse:
    project = get_or_404(db, Project, project_id, "project")
    mapping = dict(body.mapping or {})
    records = (map_row(record, line, mapping) for line, record in enumerate(body.records, start=1))
    edits = EditSource(body.edits_from, body.edits_as) if body.edits_from is not None else None
    try:
        result = import_records(db, project, records, filename=body.filename, fmt="records", mapping=mapping,
                                actor=caller.user, edits=edits)
    except ImportRejected as exc:
        db.rollback()
        problem = ImportProblem(
            detail=str(exc), total=exc.total,
            errors=[{"line": e.line, "field": e.field, "message": e.message} for e in exc.errors],
        )
        return JSONResponse(problem.model_dump(), status_code=422)
    db.commit()
    return ImportOut(batch_id=result.batch_id, imported=result.imported, duplicates=result.duplicates,
                     rows=result.rows, edits=result.edits, edit_duplicates=result.edit_duplicates)
