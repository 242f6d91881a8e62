"""The annotation queue: leasing items so each gets exactly N completed annotations.

An item is offered while `completed_count + leases holding a slot < N` and the annotator has never held
it. Every change to an item's lease count happens with the item's row locked: on Postgres by
`SELECT … FOR UPDATE SKIP LOCKED` (concurrent annotators pass over each other's rows instead of
waiting), on SQLite by taking the database write lock up front (`BEGIN IMMEDIATE`). After the lock
the count is read again in a fresh statement, so a lease committed a moment earlier is always seen.

"Next" is the hottest path of the application, so it is three statements: enter the project (membership
check and the annotator's lock in one), lock a candidate item (or, finding none, resume the annotator's
live lease), and one INSERT … SELECT that re-counts and leases at once. It is written once, as steps
(app.driver), and `next_task` runs it on whichever `Database` the caller has.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import (
    JSON,
    BigInteger,
    ColumnElement,
    Select,
    all_,
    and_,
    bindparam,
    exists,
    func,
    insert,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session, aliased
from sqlalchemy.orm.util import AliasedClass
from sqlalchemy.sql.dml import ReturningUpdate

from app.driver import Database, Steps, entity, labelled, lock_for_write
from app.models import Item, ItemStatus, Lease, LeaseState, Project, Role, Suggestion, User, utcnow
from app.services import projects

CANDIDATE_TRIES = 8  # rows re-checked per request before reporting the queue as empty
SWEEP_BATCH = 200
# Expired leases stop counting the moment they expire; marking them is bookkeeping, so each process
# sweeps at most this often instead of on every "Next".
SWEEP_EVERY_S = 10.0
_last_sweep = {"at": 0.0}


@dataclass(frozen=True)
class Task:
    """An annotator's lease with its item and project: everything the editor page shows."""

    lease: Lease
    item: Item
    project: Project
    suggested: bool = False  # the item has a suggestion for the editor to open with (app.services.suggestions)


def _suggested(item: type[Item] | AliasedClass[Item]) -> ColumnElement[bool]:
    # Read with the task, so the editor page looks a suggestion up only for the items that have one.
    return exists().where(Suggestion.item_id == item.id).label("suggested")


def holds_slot(at: ColumnElement | datetime) -> ColumnElement[bool]:
    """THE lease-validity rule: a lease holds one of its item's N slots while it is active and has not
    expired at `at`. `at` is "now" wherever the item's row is locked (no other request can lease or count
    the item meanwhile); the one-statement submit, which does not lock the item first, asks for a margin
    instead (annotation.AT_ONCE_MARGIN)."""
    return and_(Lease.state == LeaseState.ACTIVE, Lease.expires_at > at)


def _for_dialect(query: Select, **for_update) -> dict[str, Select]:
    """A hot-path query built once per dialect: Postgres locks rows; SQLite already holds the write lock."""
    return {"postgresql": query.with_for_update(**for_update), "sqlite": query}


# The request paths only bind values into statements built once at import: constructing a SQLAlchemy
# expression costs more CPU than Postgres spends running it.
_ITEM_FOR_UPDATE = _for_dialect(
    select(Item).where(Item.id == bindparam("item_id")).execution_options(populate_existing=True)
)


def lock_item(session: Session, item_id: int) -> Item:
    """The item with its row locked (Postgres) or the database write-locked (SQLite), freshly read."""
    lock_for_write(session)
    statement = _ITEM_FOR_UPDATE[session.get_bind().dialect.name]
    return session.scalars(statement, {"item_id": item_id}).one()


_TASK = (
    labelled(select(Lease.__table__, Item.__table__, Project.__table__))
    .join_from(Lease, Item, Item.id == Lease.item_id)
    .join(Project, Project.id == Item.project_id)
    .where(Lease.id == bindparam("lease_id"), Lease.annotator_id == bindparam("user_id"))
)


def task_columns(*columns) -> Select:
    """The query of an annotator's task (parameters lease_id, user_id) for only `columns`."""
    return _TASK.with_only_columns(*columns, maintain_column_froms=True)


def task_of(row) -> Task:
    """The task of a row that holds the lease's, item's and project's columns (`labelled`)."""
    return Task(entity(Lease, row), entity(Item, row), entity(Project, row))


_FOUND_TASK = _TASK.add_columns(_suggested(Item))


def finding_task(lease_id: int, user: User) -> Steps[Task | None]:
    """The annotator's lease with its item and project, in one query; None if it is not theirs."""
    row = yield _FOUND_TASK, {"lease_id": lease_id, "user_id": user.id}
    return None if row is None else replace(task_of(row), suggested=row.suggested)


# The task with its item's and lease's rows locked, freshly read (a concurrent submit of the same item or
# lease has committed, or waits), and whether the lease holds its slot now (parameter now).
LOCKED_TASK = _for_dialect(_TASK.add_columns(holds_slot(bindparam("now")).label("live")), of=[Item, Lease])


def _active_leases(item_id) -> Select:
    """Leases holding a slot of an item, counted (`item_id`: a value, a column to correlate, or a parameter;
    the time is the parameter `now`)."""
    return select(func.count().label("holding")).select_from(Lease).where(Lease.item_id == item_id,
                                                                   holds_slot(bindparam("now")))


# The leases holding a slot of an item besides the submitting one (parameters item_id, lease_id, now).
OTHER_LEASES = _active_leases(bindparam("item_id")).where(Lease.id != bindparam("lease_id"))


def _sweep(stale: Select) -> ReturningUpdate:
    leases = Lease.__table__
    return update(leases).where(leases.c.id.in_(stale.scalar_subquery())).values(state=LeaseState.EXPIRED).returning(
        leases.c.id)


_STALE = select(Lease.id).where(Lease.state == LeaseState.ACTIVE, ~holds_slot(bindparam("now"))).limit(SWEEP_BATCH)
# Postgres passes over leases another transaction holds (a submit closing them right now).
_SWEEP = {"postgresql": _sweep(_STALE.with_for_update(skip_locked=True)), "sqlite": _sweep(_STALE)}


def sweeping(now: datetime) -> Steps[None]:
    """Mark (up to SWEEP_BATCH) leases past their expiry as expired: they already stopped counting, this
    keeps their state honest."""
    yield _SWEEP, {"now": now}


def _sweep_due() -> bool:
    """Expired leases stop counting the moment they expire, so marking them is bookkeeping: each process
    does it at most every SWEEP_EVERY_S."""
    if time.monotonic() - _last_sweep["at"] < SWEEP_EVERY_S:
        return False
    _last_sweep["at"] = time.monotonic()
    return True


def _live_lease_here(item: type[Item] | AliasedClass[Item]) -> tuple:
    """The annotator's lease holding a slot of an `item` of the project (parameters user_id, now, project_id)."""
    return Lease.annotator_id == bindparam("user_id"), holds_slot(bindparam("now")), item.project_id == bindparam(
        "project_id")


_CURRENT_TASK = (
    labelled(select(Lease.__table__, Item.__table__)).add_columns(_suggested(Item))
    .join_from(Lease, Item, Item.id == Lease.item_id)
    .where(*_live_lease_here(Item))
    .order_by(Lease.id)
    .limit(1)
)


_OPEN = aliased(Item)
# Where the project's open items start. Finished items pile up at the low ids, and a planner whose
# statistics predate them walks the primary key through every one of them; starting the walk here keeps
# "Next" as cheap on the millionth submit as on the first.
_FIRST_OPEN_ID = (
    select(func.min(_OPEN.id)).where(_OPEN.project_id == bindparam("project_id"), _OPEN.status == ItemStatus.OPEN)
    .scalar_subquery()
)

_HELD = aliased(Item)
_HELD_HERE = select(Lease.id).join(_HELD, _HELD.id == Lease.item_id).where(*_live_lease_here(_HELD))


def _offered() -> tuple[ColumnElement[bool], ...]:
    """THE offer rule: an open item of the project this annotator never held that has a free slot
    (parameters project_id, user_id, now, n). "Next" offers the first in id order."""
    return (
        Item.project_id == bindparam("project_id"),
        Item.status == ItemStatus.OPEN,
        Item.id >= _FIRST_OPEN_ID,
        # Never offered twice: NOT IN over this annotator's own history (one index range, hashed once)
        # rather than NOT EXISTS, which Postgres ran as a merge over every annotator's leases.
        Item.id.not_in(select(Lease.item_id).where(Lease.annotator_id == bindparam("user_id"))),
        Item.completed_count + _active_leases(Item.id).scalar_subquery() < bindparam("n"),
    )


def _candidate_query(not_tried) -> Select:
    """The first open item this annotator never held that has a free slot (parameters project_id, user_id,
    now, n, tried); none while the annotator holds a live lease in this project."""
    return (
        labelled(select(Item.__table__)).add_columns(_suggested(Item))
        .where(
            *_offered(),
            not_tried,
            # None while the annotator holds a live lease here: "Next" then resumes it. Checked in this
            # statement, so the usual "Next" (nothing to resume) is one round trip less.
            ~_HELD_HERE.exists(),
        )
        .order_by(Item.id)
        .limit(1)
    )


# `tried`: items whose slot filled up between this request's read and its lock. Postgres locks the row
# (skipping rows others hold) and takes the list as an array, which the driver binds as is; SQLite holds
# the write lock already.
_CANDIDATE = {
    "postgresql": _candidate_query(Item.id != all_(bindparam("tried", type_=ARRAY(BigInteger))))
    .with_for_update(skip_locked=True, of=Item.__table__),
    "sqlite": _candidate_query(Item.id.not_in(bindparam("tried", expanding=True))),
}


def _upcoming_query(*scope: ColumnElement[bool]) -> dict[str, Select]:
    """The items "Next" would offer the annotator after item `after` if nobody else took them first, in its
    order, unlocked (parameters as `_offered`'s, after, window, and those of `scope`), as one JSON list of
    [id, prompt, original] in one row (steps read one row per statement)."""
    ahead = (
        select(Item.id, Item.prompt, Item.original).where(*_offered(), Item.id > bindparam("after"), *scope)
        .order_by(Item.id).limit(bindparam("window")).subquery()
    )
    return {
        "postgresql": select(type_coerce(func.json_agg(func.json_build_array(ahead.c.id, ahead.c.prompt,
                                                                             ahead.c.original)), JSON).label("items")),
        "sqlite": select(type_coerce(func.json_group_array(func.json_array(ahead.c.id, ahead.c.prompt,
                                                                           ahead.c.original)), JSON).label("items")),
    }


_UPCOMING = _upcoming_query()
_UPCOMING_IN_BATCH = _upcoming_query(Item.import_batch_id == bindparam("batch_id"))


@dataclass(frozen=True)
class Upcoming:
    """An item `upcoming` found: what a caller needs to prepare its work."""

    id: int
    prompt: str
    original: str


def upcoming(project: Project, user: User, after: int, window: int,
             batch_id: int | None = None) -> Steps[list[Upcoming]]:
    """Up to `window` items "Next" would offer `user` after item `after`, in its order (of one import batch's
    items, with `batch_id`), for a caller that prepares its work ahead of the lease (a model editor's job
    asks the model ahead): the queue's own rule rather than a copy of it. The queue still decides at each
    "Next"; an item someone else takes meanwhile is not offered."""
    params = {"project_id": project.id, "user_id": user.id, "now": utcnow(), "n": project.annotations_per_item,
              "after": after, "window": window}
    row = yield (_UPCOMING, params) if batch_id is None else (_UPCOMING_IN_BATCH, {**params, "batch_id": batch_id})
    return sorted((Upcoming(*item) for item in row.items or []), key=lambda item: item.id)


def _entering(query: Select) -> dict[str, Select]:
    """Entering a project: the project's row if the user works in it. On Postgres it also locks the
    annotator's row for the transaction: two "Next" clicks of one annotator run one after the other (the
    second resumes the first's lease). And the lease's commit does not wait for the WAL flush: a lease is
    cheap to lose, after a crash its item simply returns to the pool (submits stay fully durable). The
    membership check, the lock and the setting are one statement."""
    project = labelled(query.with_only_columns(*Project.__table__.c))
    return {
        "postgresql": project.add_columns(func.set_config("synchronous_commit", "off", True))
        .join(User, User.id == bindparam("user_id")).with_for_update(of=User),
        "sqlite": project,  # the transaction holds the write lock
    }


_ENTER = {role: _entering(projects.member_project_query(role)) for role in (Role.ADMIN, Role.ANNOTATOR)}


_LEASE_COLUMNS = ("item_id", "annotator_id", "state", "leased_at", "expires_at")
# Leases the locked item if it still has a free slot, re-counting its leases in this new statement: a
# statement that starts after the lock sees every lease committed before it.
_LEASES = Lease.__table__  # a Core INSERT: the ORM would read a parameter dict as a bulk insert
_LEASE_IF_SLOT_FREE = (
    insert(_LEASES)
    .from_select(
        _LEASE_COLUMNS,
        select(*(bindparam(name, type_=_LEASES.c[name].type) for name in _LEASE_COLUMNS))
        .where(_active_leases(bindparam("item_id")).scalar_subquery() < bindparam("free_slots")),
    )
    .returning(_LEASES.c.id)
)


def _next(project_id: int, user: User, now: datetime) -> Steps[tuple[Project | None, Task | None]]:
    """The steps of "Next", in one transaction: enter the project, then lease the first item with a free
    slot, or find the annotator's live lease there."""
    row = yield _ENTER[Role.ADMIN if user.role == Role.ADMIN else Role.ANNOTATOR], {
        "project_id": project_id, "user_id": user.id}
    if row is None:
        return None, None
    project = entity(Project, row)
    if _sweep_due():
        yield from sweeping(now)
    tried: list[int] = []
    for _ in range(CANDIDATE_TRIES):
        params = {"project_id": project.id, "user_id": user.id, "now": now, "n": project.annotations_per_item,
                  "tried": tried}
        if (row := (yield _CANDIDATE, params)) is None:  # their live lease here, or nothing left for them
            row = yield _CURRENT_TASK, {"user_id": user.id, "now": now, "project_id": project.id}
            return project, None if row is None else Task(entity(Lease, row), entity(Item, row), project,
                                                          row.suggested)
        item, suggested = entity(Item, row), row.suggested
        values = {
            "item_id": item.id, "annotator_id": user.id, "state": LeaseState.ACTIVE.value, "leased_at": now,
            "expires_at": now + timedelta(seconds=project.lease_seconds),
        }
        free_slots = project.annotations_per_item - item.completed_count
        if (row := (yield _LEASE_IF_SLOT_FREE, {**values, "now": now, "free_slots": free_slots})) is not None:
            return project, Task(Lease(id=row.id, **values), item, project, suggested)
        tried.append(item.id)
    return project, None


def lease_item(session: Session, item: Item, project: Project, user: User) -> Lease | None:
    """Lease a chosen item to `user` with the queue's own statement (a free slot, re-counted), for a caller
    that works on known items (an import of edits, a pipeline's editor on its import) instead of asking
    for the next one. The item must be locked (`lock_item`) or not yet visible to others; `user` must
    never have held it. Returns the lease, or None when the item is not open or has no free slot."""
    if item.status != ItemStatus.OPEN:
        return None
    now = utcnow()
    values = {"item_id": item.id, "annotator_id": user.id, "state": LeaseState.ACTIVE.value, "leased_at": now,
              "expires_at": now + timedelta(seconds=project.lease_seconds)}
    row = session.execute(_LEASE_IF_SLOT_FREE, {
        **values, "now": now, "free_slots": project.annotations_per_item - item.completed_count}).first()
    return None if row is None else Lease(id=row.id, **values)


async def next_task(db: Database, project_id: int, user: User) -> tuple[Project | None, Task | None]:
    """"Next": lease the next item of the project to `user`, or give back their current task there.
    Returns (None, None) if `user` does not work in the project (admins: any active one), else the project
    and the task (None when nothing is left for them)."""
    return await db.run(_next(project_id, user, utcnow()), transaction=True)
