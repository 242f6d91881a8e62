"""/api/v1/editors: model editors (their API keys go in, never out) and their jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from sqlalchemy.orm import Session

from app.api.auth import Principal, require_scope
from app.api.lookup import get_or_404
from app.api.schemas import EditorIn, EditorJobIn, EditorJobOut, EditorOut, Problem
from app.deps import get_db
from app.editors import service
from app.models import ModelEditor
from app.services.datasets import MAX_ID

router = APIRouter(tags=["editors"])
EditorId = Annotated[int, Path(ge=1, le=MAX_ID)]
admin = require_scope("editors:admin")


def _out(editor: ModelEditor) -> EditorOut:
    return EditorOut(
        id=editor.id, name=editor.name, base_url=editor.base_url, model=editor.model,
        api_key_set=bool(editor.api_key_encrypted), temperature=editor.temperature, max_tokens=editor.max_tokens,
        timeout_s=editor.timeout_s, max_concurrency=editor.max_concurrency,
        requests_per_minute=editor.requests_per_minute, prompt_kind=editor.prompt_kind,
        prompt_version=service.template(editor).version,
    )


@router.get("/editors", response_model=list[EditorOut], summary="List model editors (never their keys)")
def list_editors(db: Session = Depends(get_db), _caller: Principal = Depends(admin)) -> list[EditorOut]:
    return [_out(editor) for editor in service.list_editors(db)]


@router.post("/editors", response_model=EditorOut, status_code=201, summary="Connect a model editor",
             responses={400: {"model": Problem}})
def create_editor(body: EditorIn, db: Session = Depends(get_db), caller: Principal = Depends(admin)) -> EditorOut:
    editor = service.create_editor(db, body, caller.user)
    db.commit()
    return _out(editor)


@router.put("/editors/{editor_id}", response_model=EditorOut, summary="Change a model editor (no api_key: keep it)",
            responses={400: {"model": Problem}, 404: {"model": Problem}})
def update_editor(editor_id: EditorId, body: EditorIn, db: Session = Depends(get_db),
                  caller: Principal = Depends(admin)) -> EditorOut:
    editor = get_or_404(db, ModelEditor, editor_id, "model editor")
    service.update_editor(db, editor, body, caller.user)
    db.commit()
    return _out(editor)


@router.post("/editors/{editor_id}/jobs", response_model=EditorJobOut, status_code=201,
             summary="Queue a job: the editor annotates a project's items, or precomputes suggestions",
             responses={400: {"model": Problem}, 404: {"model": Problem}})
def start_job(editor_id: EditorId, body: EditorJobIn, db: Session = Depends(get_db),
              caller: Principal = Depends(admin)) -> EditorJobOut:
    editor = get_or_404(db, ModelEditor, editor_id, "model editor")
    job = service.start_job(db, editor, body.project_id, body.mode, caller.user, limit=body.limit)
    db.commit()
    return EditorJobOut(job_id=job.id, status=job.status, url=f"/jobs/{job.id}")
