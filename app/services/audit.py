"""The audit trail: who changed what, when, with the state before and after."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.models import AuditEvent, User


def record(
    session: Session,
    actor: User | None,
    action: str,
    object_type: str,
    object_id: Any,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add an audit event to the caller's transaction, so it commits (or not) with the change itself."""
    event = AuditEvent(
        actor_id=actor.id if actor else None,
        action=action,
        object_type=object_type,
        object_id=str(object_id) if object_id is not None else "",
        before=before,
        after=after,
    )
    session.add(event)
    return event
