"""/api/v1/projects: projects with their annotation progress."""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated

from fastapi import APIRouter, Depends, Path
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.api.auth import Principal, require_scope
from app.api.lookup import get_or_404
from app.api.schemas import ProjectOut, ProjectProgress
from app.deps import get_db
from app.models import COMPLETED_OUTCOMES, Edit, Item, ItemStatus, Project, ReviewStatus
from app.services.datasets import MAX_ID

router = APIRouter(tags=["projects"])


def _item_counts(db: Session) -> dict[int, dict[str, int]]:
    counts: dict[int, dict[str, int]] = defaultdict(dict)
    rows = db.execute(select(Item.project_id, Item.status, func.count()).group_by(Item.project_id, Item.status))
    for project_id, status, count in rows:
        counts[project_id][status] = count
    return counts


def _edit_counts(db: Session) -> tuple[dict[int, dict[str, int]], dict[int, int]]:
    by_outcome: dict[int, dict[str, int]] = defaultdict(dict)
    pending: dict[int, int] = defaultdict(int)
    rows = db.execute(
        select(Item.project_id, Edit.outcome, Edit.review_status, func.count())
        .join(Item, Item.id == Edit.item_id)
        .group_by(Item.project_id, Edit.outcome, Edit.review_status)
    )
    for project_id, outcome, review_status, count in rows:
        by_outcome[project_id][outcome] = by_outcome[project_id].get(outcome, 0) + count
        if review_status == ReviewStatus.PENDING and outcome in COMPLETED_OUTCOMES:
            pending[project_id] += count
    return by_outcome, pending


def _progress(project: Project, items: dict[str, int], outcomes: dict[str, int], pending: int) -> ProjectProgress:
    total = sum(count for status, count in items.items() if status != ItemStatus.ARCHIVED)
    needed = total * project.annotations_per_item
    done = sum(outcomes.get(outcome, 0) for outcome in COMPLETED_OUTCOMES)
    return ProjectProgress(
        items_total=total,
        items_complete=items.get(ItemStatus.COMPLETE, 0),
        items_open=items.get(ItemStatus.OPEN, 0),
        annotations_needed=needed,
        annotations_done=done,
        edits_by_outcome=dict(sorted(outcomes.items())),
        reviews_pending=pending,
        progress=min(1.0, done / needed) if needed else 0.0,
    )


def _projects_out(db: Session, projects: list[Project]) -> list[ProjectOut]:
    items, (outcomes, pending) = _item_counts(db), _edit_counts(db)
    return [
        ProjectOut.model_validate(
            {
                **{c: getattr(p, c) for c in ProjectOut.model_fields if c != "progress"},
                "progress": _progress(p, items.get(p.id, {}), outcomes.get(p.id, {}), pending.get(p.id, 0)),
            }
        )
        for p in projects
    ]


@router.get("/projects", response_model=list[ProjectOut], summary="List projects with their progress")
def list_projects(
    include_archived: bool = False,
    db: Session = Depends(get_db),
    _caller: Principal = Depends(require_scope("projects:read")),
) -> list[ProjectOut]:
    query = select(Project).order_by(Project.id)
    if not include_archived:
        query = query.where(Project.archived.is_(False))
    return _projects_out(db, list(db.scalars(query)))


@router.get(
    "/projects/{project_id}", response_model=ProjectOut, summary="One project with its progress",
    responses={404: {"description": "No such project"}},
)
def get_project(
    project_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    db: Session = Depends(get_db),
    _caller: Principal = Depends(require_scope("projects:read")),
) -> ProjectOut:
    project = get_or_404(db, Project, project_id, "project")
    return _projects_out(db, [project])[0]
