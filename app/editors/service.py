"""Model editors in the database: create, change, list; each editor works through an annotator account
of kind `model`, so its edits go through the same queue, lease and submit code as a person's."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import asdict, dataclass
from urllib.parse import urlparse

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.editors import keys
from app.editors.client import EditorClient, EditorFailure, EndpointConfig
from app.editors.prompts import PromptError, PromptTemplate, template_for
from app.editors.propose import Proposal, Target, propose
from app.errors import DomainError, NotFound
from app.models import (
    AnnotatorKind,
    EditorJobItem,
    Item,
    ItemStatus,
    Job,
    ModelEditor,
    Project,
    ProjectMember,
    PromptKind,
    User,
)
from app.services import audit, jobs
from app.services.users import create_service_account
from app.settings import get_settings

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{2,48}$")
ACCOUNT_PREFIX = "model-"
JOB_KIND = "editor"  # the job kind of app.editors.bulk
MODES = ("annotate", "suggest")


class EditorError(DomainError):
    """A request about a model editor that cannot be honoured; the message names the field."""


@dataclass(frozen=True)
class EditorSettings:
    """An editor's fields as a form or the API gives them. `api_key` None keeps the stored key."""

    name: str
    base_url: str
    model: str
    api_key: str | None = None
    temperature: float = 0.0
    max_tokens: int = 512
    timeout_s: float = 60.0
    max_concurrency: int = 4
    requests_per_minute: int = 0
    prompt_kind: str = PromptKind.ONE_STAGE
    custom_template: str = ""

    def validate(self) -> None:
        if not NAME_RE.match(self.name.strip()):
            raise EditorError("name: 2–48 characters, letters, digits and . _ - only")
        url = urlparse(self.base_url.strip())
        if url.scheme not in ("http", "https") or not url.netloc:
            raise EditorError("base_url: an http(s) URL such as http://127.0.0.1:8001/v1")
        if not self.model.strip():
            raise EditorError("model: the model name the endpoint serves is required")
        checks = [
            (0.0 <= self.temperature <= 2.0, "temperature: between 0 and 2"),
            (1 <= self.max_tokens <= 32_768, "max_tokens: between 1 and 32768"),
            (0 < self.timeout_s <= 3600, "timeout_s: more than 0 and at most 3600 seconds"),
            (1 <= self.max_concurrency <= 256, "max_concurrency: between 1 and 256"),
            (0 <= self.requests_per_minute <= 100_000, "requests_per_minute: between 0 (no limit) and 100000"),
        ]
        for ok, message in checks:
            if not ok:
                raise EditorError(message)
        try:
            template_for(self.prompt_kind, self.custom_template)
        except PromptError as exc:
            raise EditorError(f"prompt: {exc}") from None


def _snapshot(editor: ModelEditor) -> dict:
    """The audit trail's view: never the key, only whether one is set."""
    fields = ("name", "base_url", "model", "temperature", "max_tokens", "timeout_s", "max_concurrency",
              "requests_per_minute", "prompt_kind")
    return {**{name: getattr(editor, name) for name in fields}, "api_key_set": bool(editor.api_key_encrypted)}


def _apply(editor: ModelEditor, settings: EditorSettings) -> None:
    values = asdict(settings)
    api_key = values.pop("api_key")
    for name, value in values.items():
        setattr(editor, name, value.strip() if isinstance(value, str) and name != "custom_template" else value)
    if settings.prompt_kind != PromptKind.CUSTOM:
        editor.custom_template = ""
    if api_key is not None:
        editor.api_key_encrypted = keys.seal(api_key.strip())


def create_editor(session: Session, settings: EditorSettings, actor: User | None) -> ModelEditor:
    settings.validate()
    name = settings.name.strip()
    if session.scalar(select(ModelEditor.id).where(ModelEditor.name == name)):
        raise EditorError(f"name: an editor named {name!r} exists already")
    account = ACCOUNT_PREFIX + name
    if session.scalar(select(User.id).where(User.username == account)):
        raise EditorError(f"name: the account {account!r} exists already; choose another name")
    user = create_service_account(session, account, f"Model editor {name}", AnnotatorKind.MODEL)
    editor = ModelEditor(user_id=user.id, created_by_id=actor.id if actor else None)
    _apply(editor, settings)
    session.add(editor)
    session.flush()
    audit.record(session, actor, "editor.create", "model_editor", editor.id, after=_snapshot(editor))
    return editor


def update_editor(session: Session, editor: ModelEditor, settings: EditorSettings, actor: User | None) -> None:
    settings.validate()
    name = settings.name.strip()
    if name != editor.name:
        raise EditorError("name: an editor keeps its name (its edits carry it); create a new editor instead")
    before = _snapshot(editor)
    _apply(editor, settings)
    audit.record(session, actor, "editor.update", "model_editor", editor.id, before=before, after=_snapshot(editor))


def get_editor(session: Session, editor_id: int) -> ModelEditor:
    editor = session.get(ModelEditor, editor_id)
    if editor is None:
        raise NotFound(f"no model editor with id {editor_id}")
    return editor


def find_editor(session: Session, name_or_id: str) -> ModelEditor:
    editor = session.scalar(select(ModelEditor).where(ModelEditor.name == name_or_id))
    if editor is None and name_or_id.isdigit():
        editor = session.get(ModelEditor, int(name_or_id))
    if editor is None:
        raise NotFound(f"no model editor named {name_or_id!r}")
    return editor


def list_editors(session: Session) -> list[ModelEditor]:
    return list(session.scalars(select(ModelEditor).order_by(ModelEditor.name)))


def endpoint(editor: ModelEditor) -> EndpointConfig:
    """The connection settings with the key decrypted, for the process that calls the endpoint."""
    return EndpointConfig(
        base_url=editor.base_url, model=editor.model, api_key=keys.unseal(editor.api_key_encrypted),
        temperature=editor.temperature, max_tokens=editor.max_tokens, timeout_s=editor.timeout_s,
        max_concurrency=editor.max_concurrency, requests_per_minute=editor.requests_per_minute,
    )


def template(editor: ModelEditor) -> PromptTemplate:
    return template_for(editor.prompt_kind, editor.custom_template)


def join_project(session: Session, editor: ModelEditor, project_id: int) -> None:
    """Make the editor's account a member of the project, so the queue offers it the project's items."""
    if session.get(ProjectMember, (project_id, editor.user_id)) is None:
        session.add(ProjectMember(project_id=project_id, user_id=editor.user_id))
        session.flush()



def start_job(session: Session, editor: ModelEditor, project_id: int, mode: str, actor: User | None, *,
              limit: int | None = None) -> Job:
    """Queue an editor job for the worker: annotate the project's items as the editor's account, or
    precompute suggestions for them. The account joins the project, so the queue offers it the items."""
    if mode not in MODES:
        raise EditorError(f"mode: one of {', '.join(MODES)}, not {mode!r}")
    if limit is not None and limit < 1:
        raise EditorError("limit: at least 1 item (or none for all)")
    if session.get(Project, project_id) is None:
        raise NotFound(f"project: no project with id {project_id}")
    join_project(session, editor, project_id)
    spec = jobs.JobSpec(kind=JOB_KIND, config={}, base_model=editor.model, project_id=project_id,
                        name=f"{editor.name}: {mode} project {project_id}")
    job = jobs.create_job(session, spec, actor)
    job.config = {"job_id": job.id, "editor_id": editor.id, "project_id": project_id, "mode": mode, "limit": limit}
    audit.record(session, actor, "editor.job", "job", job.id, after=dict(job.config))
    return job


@dataclass(frozen=True)
class Trial:
    """What "test connection" shows: the model's edit of one item, or why there is none."""

    prompt: str
    original: str
    proposal: Proposal | None
    reason: str
    seconds: float


SAMPLE_TARGET = ("What is the capital of France?", "The capital of France is Lyon.")


def trial_target(session: Session, project_id: int | None) -> Target:
    """The first open item of the project, or a built-in sample when no project is chosen."""
    if project_id is not None:
        project = session.get(Project, project_id)
        if project is None:
            raise NotFound(f"project: no project with id {project_id}")
        item = session.scalar(select(Item).where(Item.project_id == project_id).order_by(
            (Item.status != ItemStatus.OPEN), Item.id).limit(1))
        if item is None:
            raise EditorError(f"project: {project.name} has no items yet")
        return Target(item.prompt, item.original, project.tokenizer, project.minimality_budget, project.guidelines_md)
    return Target(*SAMPLE_TARGET, tokenizer=get_settings().default_model, budget=0.35)


def try_editor(editor: ModelEditor, target: Target) -> Trial:
    """One call to the endpoint, no retry, for the "test connection" action (blocks until it answers)."""
    async def attempt() -> Proposal:
        client = EditorClient(endpoint(editor), attempts=1)
        try:
            return await propose(client, template(editor), target)
        finally:
            await client.close()

    started = time.monotonic()
    try:
        proposal, reason = asyncio.run(attempt()), ""
    except EditorFailure as failure:
        proposal, reason = None, failure.reason
    return Trial(target.prompt, target.original, proposal, reason, time.monotonic() - started)


@dataclass(frozen=True)
class JobItems:
    done: int
    failed: list[EditorJobItem]


def job_items(session: Session, job: Job) -> JobItems:
    """What the job page shows of an editor job: items done, and every failed item with its reason."""
    rows = session.scalars(select(EditorJobItem).where(EditorJobItem.job_id == job.id)
                           .order_by(EditorJobItem.updated_at)).all()
    return JobItems(sum(row.status == "done" for row in rows), [row for row in rows if row.status == "failed"])
