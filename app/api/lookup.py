"""Fetching one row by id for the API, with the 404 every endpoint gives for a missing one."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy.orm import Session

from app.errors import NotFound

Row = TypeVar("Row")


def get_or_404(db: Session, model: type[Row], object_id: int, what: str) -> Row:
    """The row of `model` with `object_id`, else 404 "<what> <id> not found"."""
    row = db.get(model, object_id)
    if row is None:
        raise NotFound(f"{what} {object_id} not found")
    return row
