"""/api/v1/webhooks: subscribe URLs to events; deliveries are signed and retried by the worker."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.api.auth import Principal, require_scope
from app.api.lookup import get_or_404
from app.api.schemas import DeliveryOut, Problem, WebhookCreate, WebhookCreated, WebhookOut
from app.deps import get_db
from app.models import Webhook, WebhookDelivery
from app.services import audit, webhooks
from app.services.datasets import MAX_ID

router = APIRouter(tags=["webhooks"])
HookId = Annotated[int, Path(ge=1, le=MAX_ID)]


def _hook(db: Session, hook_id: int) -> Webhook:
    return get_or_404(db, Webhook, hook_id, "webhook")


@router.get("/webhooks", response_model=list[WebhookOut], summary="List webhooks")
def list_webhooks(
    db: Session = Depends(get_db), _caller: Principal = Depends(require_scope("webhooks:admin"))
) -> list[Webhook]:
    return list(db.scalars(select(Webhook).order_by(Webhook.id)))


@router.post(
    "/webhooks", response_model=WebhookCreated, status_code=201,
    summary=f"Subscribe a URL to events ({', '.join(webhooks.EVENTS)}, or *)",
    responses={422: {"model": Problem}},
)
def create_webhook(
    body: WebhookCreate, db: Session = Depends(get_db), caller: Principal = Depends(require_scope("webhooks:admin"))
) -> Webhook:
    hook = webhooks.create_webhook(db, body.url, body.events, caller.user)
    audit.record(db, caller.user, "webhook.create", "webhook", hook.id, after={"url": hook.url, "events": hook.events})
    db.commit()
    return hook


@router.delete(
    "/webhooks/{hook_id}", response_model=WebhookOut, summary="Deactivate a webhook",
    responses={404: {"model": Problem}},
)
def deactivate_webhook(
    hook_id: HookId, db: Session = Depends(get_db), caller: Principal = Depends(require_scope("webhooks:admin"))
) -> Webhook:
    hook = _hook(db, hook_id)
    if hook.active:
        hook.active = False
        audit.record(db, caller.user, "webhook.deactivate", "webhook", hook.id,
                     before={"active": True}, after={"active": False})
    db.commit()
    return hook


@router.get(
    "/webhooks/{hook_id}/deliveries", response_model=list[DeliveryOut], summary="Recent deliveries of a webhook",
    responses={404: {"model": Problem}},
)
def list_deliveries(
    hook_id: HookId, db: Session = Depends(get_db), _caller: Principal = Depends(require_scope("webhooks:admin"))
) -> list[WebhookDelivery]:
    _hook(db, hook_id)
    query = (
        select(WebhookDelivery).where(WebhookDelivery.webhook_id == hook_id)
        .order_by(WebhookDelivery.id.desc()).limit(200)
    )
    return list(db.scalars(query))
