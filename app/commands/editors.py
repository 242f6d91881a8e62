"""`redline editors ...`: connect model editors, test them, and start their jobs (the worker runs them)."""

from __future__ import annotations

import os

import click

from app.db import session_scope
from app.editors import service
from app.editors.service import EditorSettings
from app.errors import DomainError
from app.models import PromptKind
from app.services.projects import find_project


def _settings_options(command):
    options = [
        click.option("--base-url", required=True, help="The endpoint's OpenAI-compatible root, e.g. http://host:8000/v1"),
        click.option("--model", required=True, help="The model name the endpoint serves."),
        click.option("--api-key-env", default="", metavar="VAR",
                     help="Read the API key from this environment variable (never from the command line)."),
        click.option("--temperature", type=float, default=0.0, show_default=True),
        click.option("--max-tokens", type=int, default=512, show_default=True),
        click.option("--timeout", "timeout_s", type=float, default=60.0, show_default=True,
                     help="Seconds per request."),
        click.option("--max-concurrency", type=int, default=4, show_default=True),
        click.option("--rpm", "requests_per_minute", type=int, default=0, show_default=True,
                     help="Requests per minute (0: no limit)."),
        click.option("--prompt", "prompt_kind", type=click.Choice([k.value for k in PromptKind]),
                     default=PromptKind.ONE_STAGE.value, show_default=True),
        click.option("--template-file", type=click.File(), default=None,
                     help="A Jinja template for --prompt custom."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _settings(name: str, api_key_env: str, template_file, **fields) -> EditorSettings:
    api_key = None
    if api_key_env:
        if api_key_env not in os.environ:
            raise click.ClickException(f"--api-key-env: the variable {api_key_env} is not set")
        api_key = os.environ[api_key_env]
    return EditorSettings(name=name, api_key=api_key, custom_template=template_file.read() if template_file else "",
                          **fields)


@click.group()
def editors() -> None:
    """Model editors: language models that write minimal edits."""


@editors.command("add")
@click.argument("name")
@_settings_options
def add(name: str, **fields) -> None:
    """Connect a model editor called NAME."""
    try:
        with session_scope() as session:
            editor = service.create_editor(session, _settings(name, **fields), None)
            click.echo(f"model editor {editor.name} (id {editor.id}) -> {editor.model} at {editor.base_url}")
    except DomainError as exc:
        raise click.ClickException(str(exc)) from None


@editors.command("update")
@click.argument("name")
@_settings_options
def update(name: str, **fields) -> None:
    """Change editor NAME (its API key only with --api-key-env)."""
    try:
        with session_scope() as session:
            editor = service.find_editor(session, name)
            service.update_editor(session, editor, _settings(editor.name, **fields), None)
            click.echo(f"model editor {editor.name} updated")
    except DomainError as exc:
        raise click.ClickException(str(exc)) from None


@editors.command("list")
def list_editors() -> None:
    """List model editors (never their keys)."""
    with session_scope() as session:
        for editor in service.list_editors(session):
            key = "key set" if editor.api_key_encrypted else "no key"
            click.echo(f"{editor.id:>4}  {editor.name:<20} {editor.model}  {editor.base_url}  {editor.prompt_kind}  "
                       f"{service.template(editor).version}  {key}")


@editors.command("test")
@click.argument("name")
@click.option("--project", default=None, help="Try the project's first open item (default: a built-in sample).")
def test(name: str, project: str | None) -> None:
    """Send one item to editor NAME and show its edit."""
    try:
        with session_scope() as session:
            editor = service.find_editor(session, name)
            target = service.trial_target(session, find_project(session, project).id if project else None)
    except DomainError as exc:
        raise click.ClickException(str(exc)) from None
    trial = service.try_editor(editor, target)
    click.echo(f"original: {trial.original}")
    if trial.proposal is None:
        raise click.ClickException(f"no answer after {trial.seconds:.1f} s: {trial.reason}")
    proposal = trial.proposal
    click.echo(f"edited:   {proposal.text}")
    flag = " (not minimal)" if proposal.not_minimal else ""
    click.echo(f"{proposal.outcome}, edit rate {proposal.edit_rate:.3f}{flag}, prompt {proposal.prompt_version}, "
               f"{trial.seconds:.1f} s")


@editors.command("run")
@click.argument("name")
@click.option("--project", required=True)
@click.option("--mode", type=click.Choice(service.MODES), default="annotate", show_default=True,
              help="annotate: edit items as the editor's account; suggest: precompute suggestions for people.")
@click.option("--limit", type=int, default=None, help="At most this many items.")
def run(name: str, project: str, mode: str, limit: int | None) -> None:
    """Queue a job in which editor NAME works a project (`redline worker` runs it)."""
    try:
        with session_scope() as session:
            editor = service.find_editor(session, name)
            job = service.start_job(session, editor, find_project(session, project).id, mode, None, limit=limit)
            click.echo(f"queued job {job.id}: {job.name}")
    except DomainError as exc:
        raise click.ClickException(str(exc)) from None
