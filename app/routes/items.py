"""The item browser (admins and reviewers): search and filter items, and one item's history."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.deps import get_db, require_roles
from app.errors import validation_messages
from app.models import ItemStatus, Outcome, Role, User
from app.services import item_browser, projects
from app.templating import render

router = APIRouter(prefix="/items")
browsers = require_roles(Role.REVIEWER)  # and admins


@router.get("")
def browse(request: Request, user: User = Depends(browsers), db: Session = Depends(get_db)) -> Response:
    raw = {k: v for k, v in request.query_params.items() if v != ""}
    context = {"form": raw, "projects": projects.projects_for(db, user), "statuses": list(ItemStatus),
               "outcomes": list(Outcome), "reviews": ["pending", "accept", "fix_and_accept", "reject"]}
    try:
        query = item_browser.ItemQuery.model_validate(raw)
    except ValidationError as exc:
        return render(request, "items/list.html", status_code=422, title="Items", errors=validation_messages(exc),
                      page=None, **context)
    page = item_browser.search(db, user, query)
    next_link = None
    if page.next_before:
        next_link = str(request.url.include_query_params(before=page.next_before))
    return render(request, "items/list.html", title="Items", page=page, next_link=next_link, errors=[], **context)


@router.get("/{item_id}")
def detail(request: Request, item_id: int, user: User = Depends(browsers), db: Session = Depends(get_db)) -> Response:
    found = item_browser.history(db, user, item_id)
    return render(request, "items/detail.html", title=f"Item {item_id}", history=found)
