"""`redline createuser`: accounts from the command line (the first admin, scripted setups)."""

from __future__ import annotations

import click

from app.db import session_scope
from app.models import Role
from app.services.users import AccountError, create_user


@click.command()
@click.argument("username")
@click.option("--role", type=click.Choice([r.value for r in Role]), default=Role.ANNOTATOR.value, show_default=True)
@click.option("--display-name", default="")
@click.option(
    "--password", prompt=True, hide_input=True, confirmation_prompt=True,
    envvar="REDLINE_NEW_PASSWORD", help="Prompted for when not given (or set REDLINE_NEW_PASSWORD).",
)
def createuser(username: str, role: str, display_name: str, password: str) -> None:
    """Create an account with ROLE."""
    try:
        with session_scope() as session:
            user = create_user(session, username, password, role, display_name=display_name)
            click.echo(f"created {user.role} {user.username} (id {user.id})")
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None
