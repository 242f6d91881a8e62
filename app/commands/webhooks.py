"""`redline webhooks ...`: subscribe URLs to events and deliver what is due (the worker does it too)."""

from __future__ import annotations

import click
from sqlalchemy import select

from app.db import session_scope
from app.models import Webhook
from app.services import webhooks as hooks


@click.group()
def webhooks() -> None:
    """Outgoing webhooks (signed with HMAC-SHA256)."""


@webhooks.command("add")
@click.argument("url")
@click.option("--event", "events", multiple=True, required=True,
              type=click.Choice([*hooks.EVENTS, hooks.ALL_EVENTS]), help="Repeat for several events.")
def add(url: str, events: tuple[str, ...]) -> None:
    """Subscribe URL to events; prints the signing secret once."""
    with session_scope() as session:
        try:
            hook = hooks.create_webhook(session, url, events, actor=None)
        except hooks.WebhookError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"webhook {hook.id} -> {hook.url} on {', '.join(hook.events)}")
    click.echo(f"signing secret (shown once): {hook.secret}")


@webhooks.command("list")
def list_hooks() -> None:
    """List webhooks."""
    with session_scope() as session:
        for hook in session.scalars(select(Webhook).order_by(Webhook.id)):
            state = "active" if hook.active else "inactive"
            click.echo(f"{hook.id:>4}  {state:<8}  {hook.url}  [{', '.join(hook.events)}]")


@webhooks.command("deliver")
@click.option("--limit", default=100, show_default=True, help="At most this many deliveries.")
def deliver(limit: int) -> None:
    """Send the deliveries that are due now (once; the worker does this continuously)."""
    sent = hooks.deliver_due(session_scope, limit=limit)
    click.echo(f"delivered {sent}")
