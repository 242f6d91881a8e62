"""`redline demo setup`: an admin account and a demo project with real model-written responses.

Idempotent: the admin is created (and its password printed, once) only when no admin exists; the demo
project is created once and filled from app/demo/items.jsonl, whose rows import only once (content hash).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import click
from sqlalchemy import select

from app.db import session_scope
from app.models import Project, Role, User
from app.services.importer import import_records
from app.services.projects import ProjectSettings, create_project
from app.services.users import create_user
from app.settings import get_settings

DEMO_ITEMS = Path(__file__).resolve().parent.parent / "demo" / "items.jsonl"
DEMO_PROJECT = "Demo: minimal edits"
DEMO_GUIDELINES = """\
## Fix the response with as few changes as possible

1. Read the prompt and the model's response.
2. Change **only** what is wrong: factual errors, broken grammar, repetitions, unhelpful or unsafe parts.
3. Keep everything that is already fine, word for word — even if you would have phrased it differently.
4. If the response is already good, choose **No change needed**. If it cannot be fixed with small edits,
   choose **Cannot be fixed minimally**.

The meter under the editor shows your edit rate; stay inside the project's budget.
"""


def demo_records(path: Path) -> Iterator[dict]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                row = json.loads(line)
                yield {"_line": number, "prompt": row.get("prompt"), "response": row.get("response"),
                       "source": {"model": row.get("model", "")}}


def ensure_admin() -> str | None:
    """Create `admin` with a random password when there is no admin yet; returns that password."""
    with session_scope() as session:
        if session.scalar(select(User.id).where(User.role == Role.ADMIN).limit(1)) is not None:
            return None
        password = secrets.token_urlsafe(12)
        create_user(session, "admin", password, Role.ADMIN, display_name="Administrator")
        return password


def ensure_demo_project(items: Path) -> tuple[str, int]:
    with session_scope() as session:
        project = session.scalar(select(Project).where(Project.name == DEMO_PROJECT))
        if project is None:
            settings = ProjectSettings(
                name=DEMO_PROJECT, tokenizer=get_settings().default_model, annotations_per_item=1,
                guidelines_md=DEMO_GUIDELINES,
                description="Responses written by the default model; fix them with minimal edits.",
            )
            project = create_project(session, settings, None)
        result = import_records(session, project, demo_records(items), filename=items.name, fmt="jsonl")
        return project.name, result.imported


@click.group()
def demo() -> None:
    """The demo project."""


@demo.command()
@click.option("--items", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=DEMO_ITEMS,
              show_default=True, help="JSONL with prompt, response, model.")
def setup(items: Path) -> None:
    """Create the admin account (if none) and the demo project (if missing); safe to run again."""
    password = ensure_admin()
    name, imported = ensure_demo_project(items)
    click.echo(f"demo project {name!r}: {imported} new item(s)")
    if password:
        click.echo(admin_banner(password))


def admin_banner(password: str) -> str:
    """The new admin's credentials, last and framed, so they stand out of `make run`'s setup output."""
    settings = get_settings()
    lines = [
        f"Log in at http://{settings.host}:{settings.port}/login",
        "  username: admin",
        f"  password: {password}",
        "Shown only now: note it, then change it under 'Your account'.",
    ]
    width = max(map(len, lines)) + 4
    rule = click.style("#" * width, fg="red", bold=True)
    body = [click.style("# ", fg="red", bold=True) + click.style(line.ljust(width - 4), bold=True)
            + click.style(" #", fg="red", bold=True) for line in lines]
    return "\n".join(["", rule, *body, rule, ""])
