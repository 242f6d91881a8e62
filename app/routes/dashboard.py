"""The admin dashboard: quality and progress at a glance, per project or across all of them."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.deps import get_db, require_roles
from app.models import Project, Role, User
from app.services import dashboard
from app.templating import render

router = APIRouter(prefix="/admin/dashboard")


@router.get("")
def show(
    request: Request, project: int | None = None, _admin: User = Depends(require_roles(Role.ADMIN)),
    db: Session = Depends(get_db),
) -> Response:
    hourly = dashboard.throughput(db, project)
    histogram = dashboard.edit_rate_histogram(db, project)
    return render(
        request, "admin/dashboard.html", title="Dashboard",
        projects=db.scalars(select(Project).order_by(Project.name)).all(), selected=project,
        progress=dashboard.progress(db, project), annotators=dashboard.annotators(db, project),
        hourly=hourly, hourly_max=max([n for _, n in hourly] + [1]),
        histogram=histogram, histogram_max=max([n for _, n, _ in histogram] + [1]),
        agreement=dashboard.agreement(db, project), editors=dashboard.editor_quality(db, project),
        editor_recent=dashboard.EDITOR_RECENT, suggested_recent=dashboard.SUGGESTED_RECENT,
        health=dashboard.queue_health(db, project),
        audit=dashboard.recent_audit(db),
    )
