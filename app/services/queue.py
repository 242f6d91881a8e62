"""The annotation queue: leasing items so each gets exactly N completed annotations.

An item is offered while `completed_count + active unexpired leases < N` and the annotator has never
held it. Every change to an item's lease count happens with the item's row locked: on Postgres by
`SELECT … FOR UPDATE SKIP LOCKED` (concurrent annotators pass over each other's rows instead of
waiting), on SQLite by taking the database write lock up front (`BEGIN IMMEDIATE`). After the lock
the count is read again in a fresh statement, so a lease committed a moment earlier is always seen.

"Next" is the hottest path of the application, so it is three statements: enter the project (membership
check and the annotator's lock in one), lock a candidate item (or, finding none, resume the annotator's
live lease), and one INSERT … SELECT that re-counts and leases at once.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from datetime import datetime, timedelta

from psycopg import AsyncConnection
from sqlalchemy import BigInteger, Select, all_, bindparam, func, insert, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session, aliased
from sqlalchemy.orm.util import AliasedClass
from sqlalchemy.sql.dml import ReturningUpdate

from app import driver
from app.db import is_postgres
from app.driver import Steps, columns_of, entity
from app.models import Item, ItemStatus, Lease, LeaseState, Project, Role, User, utcnow
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


def lock_for_write(session: Session) -> None:
    """SQLite: take the write lock now, so the reads that follow cannot be overtaken (no-op on Postgres)."""
    connection = session.connection()
    if connection.dialect.name == "sqlite" and not connection.connection.dbapi_connection.in_transaction:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _for_dialect(query: Select, **for_update) -> dict[str, Select]:
    """A hot-path query built once per dialect: Postgres locks rows; SQLite already holds the write lock."""
    return {"postgresql": query.with_for_update(**for_update), "sqlite": query}


def _run(session: Session, queries: dict[str, Select]) -> Select:
    return queries[session.get_bind().dialect.name]


# The request paths only bind values into statements built once at import: constructing a SQLAlchemy
# expression costs more CPU than Postgres spends running it.
_ITEM_FOR_UPDATE = _for_dialect(
    select(Item).where(Item.id == bindparam("item_id")).execution_options(populate_existing=True)
)


def lock_item(session: Session, item_id: int) -> Item:
    """The item with its row locked (Postgres) or the database write-locked (SQLite), freshly read."""
    lock_for_write(session)
    return session.scalars(_run(session, _ITEM_FOR_UPDATE), {"item_id": item_id}).one()


_TASK = (
    select(Lease, Item, Project)
    .join(Item, Item.id == Lease.item_id)
    .join(Project, Project.id == Item.project_id)
    .where(Lease.id == bindparam("lease_id"), Lease.annotator_id == bindparam("user_id"))
)
_LOCKED_TASK = _for_dialect(_TASK.execution_options(populate_existing=True), of=[Item, Lease])


def task_columns(*columns) -> Select:
    """The query of an annotator's task (parameters lease_id, user_id) for only `columns`."""
    return _TASK.with_only_columns(*columns, maintain_column_froms=True)


_TASK_ROW = task_columns(*Lease.__table__.c, *Item.__table__.c, *Project.__table__.c)


def finding_task(lease_id: int, user: User) -> Steps[Task | None]:
    """The annotator's lease with its item and project, in one query; None if it is not theirs. As a step
    (see app.driver): the editor's live diff runs it on the driver."""
    row = yield _TASK_ROW, {"lease_id": lease_id, "user_id": user.id}
    if row is None:
        return None
    item_from = columns_of(Lease)
    project_from = item_from + columns_of(Item)
    return Task(entity(Lease, row), entity(Item, row[item_from:]), entity(Project, row[project_from:]))


def lock_task(session: Session, lease_id: int, user: User) -> Task | None:
    """`finding_task` in a Session, with the item's and the lease's rows locked (Postgres) or the database
    write-locked (SQLite), freshly read: a concurrent submit of the same item or lease has committed or waits."""
    lock_for_write(session)
    row = session.execute(_run(session, _LOCKED_TASK), {"lease_id": lease_id, "user_id": user.id}).first()
    return Task(*row) if row else None


def _active_leases(item_id) -> Select:
    """Unexpired active leases of an item, counted (`item_id`: a value, a column to correlate, or a
    parameter; the time is the parameter `now`)."""
    return select(func.count()).select_from(Lease).where(
        Lease.item_id == item_id, Lease.state == LeaseState.ACTIVE, Lease.expires_at > bindparam("now")
    )


def active_lease_count(session: Session, item_id: int, now: datetime, exclude_lease: int | None = None) -> int:
    query = _active_leases(item_id)
    if exclude_lease is not None:
        query = query.where(Lease.id != exclude_lease)
    return session.scalar(query, {"now": now})


def _sweep(stale: Select) -> ReturningUpdate:
    leases = Lease.__table__
    return update(leases).where(leases.c.id.in_(stale.scalar_subquery())).values(state=LeaseState.EXPIRED).returning(
        leases.c.id)


_STALE = select(Lease.id).where(Lease.state == LeaseState.ACTIVE, Lease.expires_at <= bindparam("now")).limit(
    SWEEP_BATCH)
# Postgres passes over leases another transaction holds (a submit closing them right now).
_SWEEP = {"postgresql": _sweep(_STALE.with_for_update(skip_locked=True)), "sqlite": _sweep(_STALE)}


def expire_stale_leases(session: Session, now: datetime) -> int:
    """Mark leases past their expiry as expired (they already stopped counting; this keeps state honest)."""
    return len(session.execute(_run(session, _SWEEP), {"now": now}).all())


def _sweep_due() -> bool:
    """Expired leases stop counting the moment they expire, so marking them is bookkeeping: each process
    does it at most every SWEEP_EVERY_S."""
    if time.monotonic() - _last_sweep["at"] < SWEEP_EVERY_S:
        return False
    _last_sweep["at"] = time.monotonic()
    return True


def _live_lease_here(item: type[Item] | AliasedClass[Item]) -> tuple:
    """The annotator's unexpired lease on an `item` of the project (parameters user_id, now, project_id)."""
    return (
        Lease.annotator_id == bindparam("user_id"), Lease.state == LeaseState.ACTIVE,
        Lease.expires_at > bindparam("now"), item.project_id == bindparam("project_id"),
    )


_CURRENT_TASK = (
    select(*Lease.__table__.c, *Item.__table__.c)
    .join(Item, Item.id == Lease.item_id)
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


def _candidate_query(not_tried) -> Select:
    """The first open item this annotator never held that has a free slot (parameters project_id, user_id,
    now, n, tried); none while the annotator holds a live lease in this project."""
    return (
        select(*Item.__table__.c)
        .where(
            Item.project_id == bindparam("project_id"),
            Item.status == ItemStatus.OPEN,
            Item.id >= _FIRST_OPEN_ID,
            # Never offered twice: NOT IN over this annotator's own history (one index range, hashed once)
            # rather than NOT EXISTS, which Postgres ran as a merge over every annotator's leases.
            Item.id.not_in(select(Lease.item_id).where(Lease.annotator_id == bindparam("user_id"))),
            Item.completed_count + _active_leases(Item.id).scalar_subquery() < bindparam("n"),
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


# On Postgres, entering a project also locks the annotator's row for the transaction: two "Next" clicks of one
# annotator run one after the other (the second resumes the first's lease). And the lease's commit does not
# wait for the WAL flush: a lease is cheap to lose, after a crash its item simply returns to the pool
# (submits stay fully durable). The membership check, the lock and the setting are one statement.
_ENTER_POSTGRES = {
    query: query.add_columns(func.set_config("synchronous_commit", "off", True))
    .join(User, User.id == bindparam("user_id")).with_for_update(of=User)
    for query in (projects.member_project_query(Role.ADMIN), projects.member_project_query(Role.ANNOTATOR))
}
# session.info: the last entry's (transaction, project id, user id); a weak reference to the transaction, so
# the session does not hold itself in a reference cycle (left to the garbage collector's full sweeps).
_ENTERED = "redline_queue_entered"


def enter_project(session: Session, project_id: int, user: User) -> Project | None:
    """Start a "Next": the active project if `user` works in it (admins: any), else None; with the
    annotator's row locked (Postgres) or the database write-locked (SQLite) until the transaction ends."""
    lock_for_write(session)
    query = projects.member_project_query(user.role)
    if is_postgres(session.get_bind()):
        query = _ENTER_POSTGRES[query]
    project = session.scalars(query, {"project_id": project_id, "user_id": user.id}).first()
    if project is not None:
        session.info[_ENTERED] = (weakref.ref(session.get_transaction()), project.id, user.id)
    return project


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


def _leasing(project: Project, user: User, now: datetime) -> Steps[Task | None]:
    """The steps of "Next" once the project is entered (see app.driver): lease the first item with a free
    slot, or find the annotator's live lease here; None when nothing is left for them."""
    if _sweep_due():
        yield _SWEEP, {"now": now}
    tried: list[int] = []
    for _ in range(CANDIDATE_TRIES):
        params = {"project_id": project.id, "user_id": user.id, "now": now, "n": project.annotations_per_item,
                  "tried": tried}
        if (row := (yield _CANDIDATE, params)) is None:  # their live lease here, or nothing left for them
            row = yield _CURRENT_TASK, {"user_id": user.id, "now": now, "project_id": project.id}
            return None if row is None else Task(entity(Lease, row), entity(Item, row[columns_of(Lease):]), project)
        item = entity(Item, row)
        values = {
            "item_id": item.id, "annotator_id": user.id, "state": LeaseState.ACTIVE.value, "leased_at": now,
            "expires_at": now + timedelta(seconds=project.lease_seconds),
        }
        free_slots = project.annotations_per_item - item.completed_count
        if (row := (yield _LEASE_IF_SLOT_FREE, {**values, "now": now, "free_slots": free_slots})) is not None:
            return Task(Lease(id=row[0], **values), item, project)
        tried.append(item.id)
    return None


def next_task(session: Session, project: Project, user: User) -> Task | None:
    """`enter_project`, then `next_task_entered`: for callers that hold the project already."""
    if enter_project(session, project.id, user) is None:
        raise PermissionError(f"{user.username} does not work in project {project.name}")
    return next_task_entered(session, project, user)


def next_task_entered(session: Session, project: Project, user: User) -> Task | None:
    """Lease the next item to `user` (or return their current task); None when nothing is left for them.

    Runs in the caller's transaction, after `enter_project` in it; the caller commits at once, which
    releases the row locks.
    """
    transaction, *entered = session.info.get(_ENTERED, (lambda: None, None, None))
    if transaction() is not session.get_transaction() or entered != [project.id, user.id]:
        raise RuntimeError("next_task_entered: call enter_project first, in the same transaction (it takes the "
                           "locks)")
    return driver.run(session, _leasing(project, user, utcnow()))


async def next_task_on_driver(conn: AsyncConnection, project_id: int, user: User) -> tuple[Project | None, Task | None]:
    """"Next" on Postgres from the event loop (app.driver): enter the project and lease, in one transaction.
    Returns (None, None) if `user` does not work in the project, else the project and the task (None when
    nothing is left for them)."""
    async with conn.transaction():
        row = await driver.first(conn, _ENTER_POSTGRES[projects.member_project_query(user.role)],
                                 {"project_id": project_id, "user_id": user.id})
        if row is None:
            return None, None
        project = entity(Project, row)  # the row ends with set_config's result
        return project, await driver.run_on_driver(conn, _leasing(project, user, utcnow()))
