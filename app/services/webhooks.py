"""Outgoing webhooks: queued inside the request's transaction, delivered later by the worker.

`enqueue(session, event, payload)` (or the `queueing` steps) only inserts `WebhookDelivery` rows, so a
request never waits on a remote server and a rolled-back request sends nothing.
`deliver_due(session_factory)` (called by the worker loop) claims due deliveries, POSTs them signed with
HMAC-SHA256, and retries failures with exponential backoff until `webhook_max_attempts`.

Signature: header `X-Redline-Signature: sha256=<hex>` is HMAC-SHA256 with the webhook's secret over
`f"{timestamp}.{body}"`, where `timestamp` is the `X-Redline-Timestamp` header (Unix seconds) and `body`
the raw request body; receivers should also reject stale timestamps to stop replays.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import JSON, bindparam, func, insert, select, type_coerce, update
from sqlalchemy.orm import Session

from app.driver import Steps, model_default, run
from app.errors import DomainError
from app.models import User, Webhook, WebhookDelivery, utcnow
from app.settings import get_settings

EVENTS = ("edit.submitted", "item.completed", "dataset_version.created")
ALL_EVENTS = "*"
BACKOFF_BASE_S = 30
BACKOFF_CAP_S = 3600
# A claimed delivery is hidden from other workers this long; a worker that dies mid-send frees it then.
CLAIM_SECONDS = 120

SessionFactory = Callable[[], AbstractContextManager[Session]]


class WebhookError(DomainError):
    """A webhook definition that cannot be accepted (bad URL, unknown event)."""

    status_code = 422


@dataclass(frozen=True)
class Attempt:
    ok: bool
    error: str = ""


def validate_url(url: str) -> str:
    if not url.isprintable() or " " in url:
        raise WebhookError("webhook url must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:  # e.g. an unbalanced IPv6 bracket
        raise WebhookError(f"webhook url is not a valid URL: {exc}") from exc
    if parts.scheme not in {"http", "https"} or not host:
        raise WebhookError(f"webhook url must be an absolute http(s) URL, got {url[:200]!r}")
    return url


def validate_events(events: Iterable[str]) -> list[str]:
    chosen = sorted(set(events))
    unknown = [e for e in chosen if e not in EVENTS and e != ALL_EVENTS]
    if unknown:
        raise WebhookError(f"unknown webhook event(s) {unknown}; known: {[*EVENTS, ALL_EVENTS]}")
    if not chosen:
        raise WebhookError("a webhook needs at least one event")
    return chosen


def create_webhook(session: Session, url: str, events: Iterable[str], actor: User | None) -> Webhook:
    hook = Webhook(
        url=validate_url(url),
        events=validate_events(events),
        secret=secrets.token_urlsafe(32),
        created_by_id=actor.id if actor else None,
    )
    session.add(hook)
    session.flush()
    return hook


def subscribers(subscriptions: Iterable[Sequence[Any]], event: str) -> list[int]:
    """THE matching rule: of the active webhooks' `(id, events)`, the ids of those that want `event` (they
    name it, or every event), in id order."""
    return sorted(hook_id for hook_id, events in subscriptions if event in events or ALL_EVENTS in events)


_ACTIVE = Webhook.active.is_(True)
# Every active webhook's [id, events], as one JSON list in one row (steps read one row per statement).
SUBSCRIPTIONS = {
    "postgresql": select(type_coerce(func.json_agg(func.json_build_array(Webhook.id, Webhook.events)), JSON)
                         .label("hooks")).where(_ACTIVE),
    "sqlite": select(type_coerce(func.json_group_array(func.json_array(Webhook.id, func.json(Webhook.events))), JSON)
                     .label("hooks")).where(_ACTIVE),
}
_DELIVERIES = WebhookDelivery.__table__
# Every column named (the driver runs it compiled once, without SQLAlchemy's per-execution defaults).
QUEUE_DELIVERY = insert(_DELIVERIES).values(
    webhook_id=bindparam("hook"), event=bindparam("event_name"),
    payload=bindparam("event_payload", type_=_DELIVERIES.c.payload.type), status=model_default(_DELIVERIES.c.status),
    attempts=model_default(_DELIVERIES.c.attempts), last_error=model_default(_DELIVERIES.c.last_error),
    next_attempt_at=bindparam("now", type_=_DELIVERIES.c.created_at.type), created_at=bindparam("now"),
).returning(_DELIVERIES.c.id)


def queueing(events: list[tuple[str, dict[str, Any]]], now: datetime) -> Steps[int]:
    """Queue each (event, payload) of one change for every active webhook subscribed to it, as steps (see
    app.driver) in the change's transaction: the deliveries commit (or roll back) with it. Returns how many
    were queued. A payload must be JSON-serialisable; it is sent as `{"event", "delivery_id", "created_at",
    "data"}`."""
    for event, _payload in events:
        if event not in EVENTS:
            raise WebhookError(f"unknown webhook event {event!r}; known: {list(EVENTS)}")
    subscriptions = (yield SUBSCRIPTIONS, {}).hooks or []
    queued = 0
    for event, payload in events:
        for hook_id in subscribers(subscriptions, event):
            yield QUEUE_DELIVERY, {"hook": hook_id, "event_name": event, "event_payload": payload, "now": now}
            queued += 1
    return queued


def enqueue(session: Session, event: str, payload: dict[str, Any]) -> int:
    """`queueing` one event in the session's transaction; returns how many deliveries were queued."""
    return run(session, queueing([(event, payload)], utcnow()))


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** max(0, attempts - 1)))


def _claim_due(session_factory: SessionFactory, limit: int, now: datetime) -> list[int]:
    """Reserve up to `limit` due deliveries by pushing their next attempt past the claim window.

    The claim commits before any network call, so no transaction stays open while a remote server is
    slow. The UPDATE re-checks that each row is still due, so of two workers racing for a delivery only
    one gets it back from RETURNING (SQLite serialises the writes; Postgres also skips locked rows).
    """
    with session_factory() as session:
        query = (
            select(WebhookDelivery.id)
            .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
            .limit(limit)
        )
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        candidates = list(session.scalars(query))
        claimed: list[int] = []
        if candidates:
            claimed = list(session.scalars(
                update(WebhookDelivery)
                .where(WebhookDelivery.id.in_(candidates), WebhookDelivery.status == "pending",
                       WebhookDelivery.next_attempt_at <= now)
                .values(next_attempt_at=now + timedelta(seconds=CLAIM_SECONDS))
                .returning(WebhookDelivery.id)
            ))
        session.commit()
    return sorted(claimed)


def _request_parts(delivery: WebhookDelivery, hook: Webhook, now: datetime) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(
        {
            "event": delivery.event,
            "delivery_id": delivery.id,
            "created_at": delivery.created_at.isoformat(),
            "data": delivery.payload,
        },
        sort_keys=True,
    ).encode()
    timestamp = int(now.timestamp())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Redline-Webhooks/1",
        "X-Redline-Event": delivery.event,
        "X-Redline-Delivery": str(delivery.id),
        "X-Redline-Timestamp": str(timestamp),
        "X-Redline-Signature": sign(hook.secret, timestamp, body),
    }
    return body, headers


def _send(client: httpx.Client, url: str, body: bytes, headers: dict[str, str]) -> Attempt:
    try:
        response = client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return Attempt(False, f"{type(exc).__name__}: {exc}"[:1000])
    if 200 <= response.status_code < 300:
        return Attempt(True)
    return Attempt(False, f"HTTP {response.status_code}: {response.text[:500]}")


def _record(delivery: WebhookDelivery, attempt: Attempt, now: datetime, max_attempts: int) -> None:
    delivery.attempts += 1
    delivery.last_error = attempt.error
    if attempt.ok:
        delivery.status = "delivered"
    elif delivery.attempts >= max_attempts:
        delivery.status = "failed"
    else:
        delivery.next_attempt_at = now + backoff(delivery.attempts)


def _deliver_one(session_factory: SessionFactory, client: httpx.Client, delivery_id: int) -> bool:
    with session_factory() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        hook = session.get(Webhook, delivery.webhook_id) if delivery else None
        if delivery is None or hook is None or delivery.status != "pending":
            return False
        now = utcnow()
        if not hook.active:
            delivery.status, delivery.last_error = "failed", "webhook deactivated"
            session.commit()
            return False
        body, headers = _request_parts(delivery, hook, now)
        url = hook.url
        # End the read transaction before the network call; the row is ours through the claim.
        session.commit()
        attempt = _send(client, url, body, headers)
        _record(delivery, attempt, utcnow(), get_settings().webhook_max_attempts)
        session.commit()
        return attempt.ok


def deliver_due(session_factory: SessionFactory, *, limit: int = 50, client: httpx.Client | None = None) -> int:
    """Send every due delivery (up to `limit`); returns how many were delivered successfully.

    `session_factory()` must return a context manager yielding a Session (`app.db.session_scope`, or a
    `sessionmaker`). Failures are retried later with backoff; none of them raises.
    """
    ids = _claim_due(session_factory, limit, utcnow())
    if not ids:
        return 0
    own_client = client is None
    client = client or httpx.Client(timeout=get_settings().webhook_timeout_s, follow_redirects=False)
    try:
        return sum(_deliver_one(session_factory, client, delivery_id) for delivery_id in ids)
    finally:
        if own_client:
            client.close()
