"""Projects: settings, guidelines, and who may annotate in them."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Select, bindparam, case, delete, func, select, update
from sqlalchemy.orm import Session

from app.errors import DomainError
from app.models import (
    COMPLETED_OUTCOMES,
    Edit,
    Item,
    ItemStatus,
    Project,
    ProjectMember,
    ReviewStatus,
    Role,
    User,
    counted_kinds,
)
from app.services import audit
from app.settings import get_settings
from labels import DEFAULT_MINIMALITY_BUDGET, TokenizerNotFound, load_tokenizer


class ProjectError(DomainError):
    """Invalid project settings; the message names the field."""


@dataclass
class ProjectSettings:
    name: str
    tokenizer: str
    annotations_per_item: int = 1
    minimality_budget: float = DEFAULT_MINIMALITY_BUDGET
    lease_seconds: int = field(default_factory=lambda: get_settings().lease_seconds_default)
    guidelines_md: str = ""
    description: str = ""
    return_rejected: bool = False
    model_edits_count: bool = True

    def validate(self) -> None:
        self.name = self.name.strip()
        if not 1 <= len(self.name) <= 200:
            raise ProjectError("name: 1–200 characters")
        if not 1 <= self.annotations_per_item <= 100:
            raise ProjectError("annotations per item: between 1 and 100")
        if not 0 < self.minimality_budget <= 10:
            raise ProjectError("minimality budget: an edit rate above 0 (e.g. 0.35)")
        if not 30 <= self.lease_seconds <= 7 * 24 * 3600:
            raise ProjectError("lease duration: between 30 seconds and 7 days")
        try:
            load_tokenizer(self.tokenizer.strip())
        except TokenizerNotFound as exc:
            raise ProjectError(f"tokenizer: {exc}") from None
        self.tokenizer = self.tokenizer.strip()


def _snapshot(project: Project) -> dict:
    return {
        "name": project.name, "tokenizer": project.tokenizer, "annotations_per_item": project.annotations_per_item,
        "minimality_budget": project.minimality_budget, "lease_seconds": project.lease_seconds,
        "archived": project.archived, "return_rejected": project.return_rejected,
        "model_edits_count": project.model_edits_count,
    }


def _check_unique_name(session: Session, name: str, own_id: int | None = None) -> None:
    clash = session.scalar(select(Project.id).where(func.lower(Project.name) == name.lower()))
    if clash is not None and clash != own_id:
        raise ProjectError(f"name: a project called {name!r} exists already")


def create_project(session: Session, settings: ProjectSettings, actor: User | None) -> Project:
    settings.validate()
    _check_unique_name(session, settings.name)
    project = Project(**vars(settings), created_by_id=actor.id if actor else None)
    session.add(project)
    session.flush()
    audit.record(session, actor, "project.create", "project", project.id, after=_snapshot(project))
    return project


def update_project(session: Session, project: Project, settings: ProjectSettings, actor: User | None) -> None:
    settings.validate()
    _check_unique_name(session, settings.name, project.id)
    before = _snapshot(project)
    for key, value in vars(settings).items():
        setattr(project, key, value)
    if before["model_edits_count"] != project.model_edits_count:
        _recount_items(session, project)
    if before["annotations_per_item"] != project.annotations_per_item or (
            before["model_edits_count"] != project.model_edits_count):
        _restatus_items(session, project)
    audit.record(session, actor, "project.update", "project", project.id, before=before, after=_snapshot(project))


def _recount_items(session: Session, project: Project) -> None:
    """Each item's count again from its edits, after the setting of whose edits count changed: the completed
    edits that were not rejected, by the kinds of annotator that count now (`counted_kinds`). Every submit,
    rejection and give-back keeps the count equal to this."""
    counted = (
        select(func.count()).select_from(Edit).join(User, User.id == Edit.annotator_id)
        .where(Edit.item_id == Item.id, Edit.outcome.in_(COMPLETED_OUTCOMES),
               Edit.review_status != ReviewStatus.REJECTED, User.kind.in_(counted_kinds(project.model_edits_count)))
        .scalar_subquery()
    )
    session.execute(update(Item).where(Item.project_id == project.id).values(completed_count=counted))


def _restatus_items(session: Session, project: Project) -> None:
    """A new N reopens items that now need more annotations and completes those that have enough."""
    complete = Item.completed_count >= project.annotations_per_item
    session.execute(
        update(Item)
        .where(Item.project_id == project.id, Item.status.in_([ItemStatus.OPEN, ItemStatus.COMPLETE]))
        .values(status=case((complete, ItemStatus.COMPLETE.value), else_=ItemStatus.OPEN.value))
    )


def set_archived(session: Session, project: Project, archived: bool, actor: User | None) -> None:
    """Archived projects disappear from annotators' and reviewers' lists; nothing is deleted."""
    before = _snapshot(project)
    project.archived = archived
    audit.record(session, actor, "project.archive" if archived else "project.unarchive", "project", project.id,
                 before=before, after=_snapshot(project))


def get_project(session: Session, project_id: int) -> Project:
    project = session.get(Project, project_id)
    if project is None:
        raise ProjectError(f"no project with id {project_id}")
    return project


def find_project(session: Session, name_or_id: str) -> Project:
    """By id or exact name: what the command line accepts."""
    if name_or_id.isdigit():
        return get_project(session, int(name_or_id))
    project = session.scalar(select(Project).where(Project.name == name_or_id))
    if project is None:
        raise ProjectError(f"no project named {name_or_id!r}")
    return project


def member_ids(session: Session, project_id: int) -> set[int]:
    return set(session.scalars(select(ProjectMember.user_id).where(ProjectMember.project_id == project_id)))


def set_members(session: Session, project: Project, user_ids: set[int], actor: User | None) -> None:
    before = member_ids(session, project.id)
    session.execute(delete(ProjectMember).where(ProjectMember.project_id == project.id))
    session.add_all(ProjectMember(project_id=project.id, user_id=uid) for uid in sorted(user_ids))
    audit.record(session, actor, "project.members", "project", project.id,
                 before={"members": sorted(before)}, after={"members": sorted(user_ids)})


_ACTIVE_PROJECT = select(Project).where(Project.id == bindparam("project_id"), Project.archived.is_(False))
# Built once: this starts every "Next" (queue.enter_project), where building the expression would cost more
# than running it.
_MEMBER_PROJECT = _ACTIVE_PROJECT.where(
    select(ProjectMember.user_id)
    .where(ProjectMember.project_id == Project.id, ProjectMember.user_id == bindparam("user_id"))
    .exists()
)


def member_project_query(role: str) -> Select:
    """The query (parameters project_id, user_id) for the active project if the user, who has `role`, works
    in it (admins: any)."""
    return _ACTIVE_PROJECT if role == Role.ADMIN else _MEMBER_PROJECT


def projects_for(session: Session, user: User) -> list[Project]:
    """Active projects the user works in (admins: all of them)."""
    query = select(Project).where(Project.archived.is_(False)).order_by(Project.name)
    if user.role != Role.ADMIN:
        query = query.join(ProjectMember, ProjectMember.project_id == Project.id).where(
            ProjectMember.user_id == user.id
        )
    return list(session.scalars(query))
