"""/api/v1/projects: projects with their annotation progress."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import APIRouter, Depends, Path
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.api.auth import Principal, require_scope
from app.api.lookup import get_or_404
from app.api.schemas import ProjectOut, ProjectProgress
from app.deps import get_db
from app.models import COMPLETED_OUTCOMES, Edit, Item, ItemStatus, Project, ReviewStatus, User, counted_kinds
from app.services.datasets import MAX_ID

router = APIRouter(tags=["projects"])


def _item_counts(db: Session) -> dict[int, dict[str, int]]:
    counts: dict[int, dict[str, int]] = defaultdict(dict)
    rows = db.execute(select(Item.project_id, Item.status, func.count()).group_by(Item.project_id, Item.status))
    for project_id, status, count in rows:
        counts[project_id][status] = count
    return counts


@dataclass
class EditCounts:
    """A project's edits: by outcome, pending review, and completed ones by the kind of their annotator."""

    by_outcome: dict[str, int] = field(default_factory=dict)
    pending: int = 0
    completed_by_kind: dict[str, int] = field(default_factory=dict)


def _edit_counts(db: Session) -> dict[int, EditCounts]:
    counts: dict[int, EditCounts] = defaultdict(EditCounts)
    rows = db.execute(
        select(Item.project_id, Edit.outcome, Edit.review_status, User.kind, func.count())
        .join(Item, Item.id == Edit.item_id).join(User, User.id == Edit.annotator_id)
        .group_by(Item.project_id, Edit.outcome, Edit.review_status, User.kind)
    )
    for project_id, outcome, review_status, kind, count in rows:
        project = counts[project_id]
        project.by_outcome[outcome] = project.by_outcome.get(outcome, 0) + count
        if outcome in COMPLETED_OUTCOMES:
            project.completed_by_kind[kind] = project.completed_by_kind.get(kind, 0) + count
            if review_status == ReviewStatus.PENDING:
                project.pending += count
    return counts


def _progress(project: Project, items: dict[str, int], edits: EditCounts) -> ProjectProgress:
    total = sum(count for status, count in items.items() if status != ItemStatus.ARCHIVED)
    needed = total * project.annotations_per_item
    # Model edits that come on top of N are not annotations toward it.
    done = sum(edits.completed_by_kind.get(kind, 0) for kind in counted_kinds(project.model_edits_count))
    return ProjectProgress(
        items_total=total,
        items_complete=items.get(ItemStatus.COMPLETE, 0),
        items_open=items.get(ItemStatus.OPEN, 0),
        annotations_needed=needed,
        annotations_done=done,
        edits_by_outcome=dict(sorted(edits.by_outcome.items())),
        reviews_pending=edits.pending,
        progress=min(1.0, done / needed) if needed else 0.0,
    )


def _projects_out(db: Session, projects: list[Project]) -> list[ProjectOut]:
    items, edits = _item_counts(db), _edit_counts(db)
    return [
        ProjectOut.model_validate(
            {
                **{c: getattr(p, c) for c in ProjectOut.model_fields if c != "progress"},
                "progress": _progress(p, items.get(p.id, {}), edits.get(p.id, EditCounts())),
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
