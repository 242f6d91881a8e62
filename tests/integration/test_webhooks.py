"""Webhook delivery against a real local HTTP server: signatures, retries, backoff, concurrency."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select, update

from app.db import engine_for, session_scope
from app.models import Webhook, WebhookDelivery, utcnow
from app.services import webhooks


class Receiver:
    """A real HTTP endpoint that records what it receives and answers with a chosen status."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.received.append((dict(self.headers), body))
                self.send_response(receiver.status)
                self.end_headers()
                self.wfile.write(b"nope" if receiver.status >= 400 else b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.server.shutdown()


@pytest.fixture
def factory(db_url, settings_env):
    return lambda: session_scope(engine_for(db_url))


def _hook(factory, url: str, events: list[str]) -> Webhook:
    with factory() as session:
        return webhooks.create_webhook(session, url, events, actor=None)


def _deliveries(factory) -> list[WebhookDelivery]:
    with factory() as session:
        return list(session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)))


def test_delivery_is_signed_and_marked_delivered(factory, receiver):
    hook = _hook(factory, receiver.url, ["edit.submitted"])
    _hook(factory, receiver.url + "/other", ["item.completed"])
    with factory() as session:
        assert webhooks.enqueue(session, "edit.submitted", {"edit_id": 7}) == 1
    assert webhooks.deliver_due(factory) == 1

    (headers, body), = receiver.received
    expected = hmac.new(hook.secret.encode(), f"{headers['X-Redline-Timestamp']}.".encode() + body, hashlib.sha256)
    assert headers["X-Redline-Signature"] == f"sha256={expected.hexdigest()}"
    assert headers["X-Redline-Event"] == "edit.submitted"
    payload = json.loads(body)
    assert payload["data"] == {"edit_id": 7} and payload["event"] == "edit.submitted"
    (delivery,) = _deliveries(factory)
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("delivered", 1, "")
    assert webhooks.deliver_due(factory) == 0


def test_failures_back_off_then_give_up(factory, receiver, monkeypatch, settings_env):
    monkeypatch.setattr(settings_env, "webhook_max_attempts", 3)
    _hook(factory, receiver.url, ["*"])
    receiver.status = 500
    with factory() as session:
        webhooks.enqueue(session, "item.completed", {"item_id": 1})
    assert webhooks.deliver_due(factory) == 0
    (delivery,) = _deliveries(factory)
    assert delivery.status == "pending" and delivery.attempts == 1 and delivery.last_error.startswith("HTTP 500")
    wait = delivery.next_attempt_at.replace(tzinfo=None) - utcnow().replace(tzinfo=None)
    assert timedelta(seconds=25) < wait <= timedelta(seconds=30)
    assert webhooks.deliver_due(factory) == 0 and len(receiver.received) == 1  # not due yet

    for attempt in (2, 3):
        with factory() as session:
            session.execute(update(WebhookDelivery).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
        webhooks.deliver_due(factory)
        assert _deliveries(factory)[0].attempts == attempt
    assert _deliveries(factory)[0].status == "failed" and len(receiver.received) == 3
    assert webhooks.backoff(1) == timedelta(seconds=30) and webhooks.backoff(20) == timedelta(hours=1)


def test_unreachable_endpoint_is_recorded_not_raised(factory):
    _hook(factory, "http://127.0.0.1:9/unreachable", ["item.completed"])
    with factory() as session:
        webhooks.enqueue(session, "item.completed", {"item_id": 1})
    assert webhooks.deliver_due(factory) == 0
    (delivery,) = _deliveries(factory)
    assert delivery.status == "pending" and "ConnectError" in delivery.last_error


def test_rolled_back_request_sends_nothing_and_inactive_hooks_get_nothing(factory, receiver):
    hook = _hook(factory, receiver.url, ["item.completed"])
    with pytest.raises(RuntimeError), factory() as session:
        webhooks.enqueue(session, "item.completed", {"item_id": 1})
        raise RuntimeError("the request failed after enqueueing")
    assert _deliveries(factory) == []
    with factory() as session:
        session.get(Webhook, hook.id).active = False
        assert webhooks.enqueue(session, "item.completed", {"item_id": 2}) == 0
    with pytest.raises(webhooks.WebhookError, match="unknown webhook event"), factory() as session:
        webhooks.enqueue(session, "item.deleted", {})


@pytest.mark.parametrize("url", ["ftp://x.org", "http://", "not a url", "http://[::1", "javascript:alert(1)"])
def test_bad_webhook_urls_are_refused(factory, url):
    with pytest.raises(webhooks.WebhookError), factory() as session:
        webhooks.create_webhook(session, url, ["item.completed"], actor=None)


def test_concurrent_workers_send_each_delivery_once(factory, receiver):
    _hook(factory, receiver.url, ["edit.submitted"])
    with factory() as session:
        for n in range(30):
            webhooks.enqueue(session, "edit.submitted", {"edit_id": n})
    results: list[int] = []
    workers = [threading.Thread(target=lambda: results.append(webhooks.deliver_due(factory, limit=30)))
               for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    sent = sorted(json.loads(body)["data"]["edit_id"] for _, body in receiver.received)
    assert sent == list(range(30)) and sum(results) == 30
    assert {d.status for d in _deliveries(factory)} == {"delivered"}
