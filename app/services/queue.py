"""The annotation queue: leasing items so each gets exactly N completed annotations.

An item is offered while `completed_count + active unexpired leases < N` and the annotator has never
held it. Every change to an item's lease count happens with the item's row locked: on Postgres by
`SELECT … FOR UPDATE SKIP LOCKED` (concurrent annotators pass over each other's rows instead of
waiting), on SQLite by taking the database write lock up front (`BEGIN IMMEDIATE`). After the lock
the count is read again in a fresh statement, so a lease committed a moment earlier is always seen.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from app.db import is_postgres
from app.models import Item, ItemStatus, Lease, LeaseState, Project, User, utcnow

CANDIDATE_TRIES = 8  # rows re-checked per request before reporting the queue as empty
SWEEP_BATCH = 200
# Expired leases stop counting the moment they expire; marking them is bookkeeping, so each process
# sweeps at most this often instead of on every "Next".
SWEEP_EVERY_S = 10.0
_last_sweep = {"at": 0.0}


def lock_for_write(session: Session) -> None:
    """SQLite: take the write lock now, so the reads that follow cannot be overtaken (no-op on Postgres)."""
    connection = session.connection()
    if connection.dialect.name == "sqlite" and not connection.connection.dbapi_connection.in_transaction:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def lock_item(session: Session, item_id: int) -> Item:
    """The item with its row locked (Postgres) or the database write-locked (SQLite), freshly read."""
    lock_for_write(session)
    query = select(Item).where(Item.id == item_id).execution_options(populate_existing=True)
    if is_postgres(session.get_bind()):
        query = query.with_for_update()
    return session.scalars(query).one()


def active_lease_count(session: Session, item_id: int, now: datetime, exclude_lease: int | None = None) -> int:
    query = select(func.count()).select_from(Lease).where(
        Lease.item_id == item_id, Lease.state == LeaseState.ACTIVE, Lease.expires_at > now
    )
    if exclude_lease is not None:
        query = query.where(Lease.id != exclude_lease)
    return session.scalar(query)


def expire_stale_leases(session: Session, now: datetime) -> int:
    """Mark leases past their expiry as expired (they already stopped counting; this keeps state honest)."""
    stale = select(Lease.id).where(Lease.state == LeaseState.ACTIVE, Lease.expires_at <= now).limit(SWEEP_BATCH)
    if is_postgres(session.get_bind()):
        stale = stale.with_for_update(skip_locked=True)
    ids = list(session.scalars(stale))
    if ids:
        session.execute(update(Lease).where(Lease.id.in_(ids)).values(state=LeaseState.EXPIRED))
    return len(ids)


def current_lease(session: Session, project_id: int, user: User, now: datetime) -> Lease | None:
    """The annotator's unexpired lease in this project, so "Next" resumes instead of hoarding items."""
    return session.scalars(
        select(Lease)
        .join(Item, Item.id == Lease.item_id)
        .where(
            Lease.annotator_id == user.id, Lease.state == LeaseState.ACTIVE, Lease.expires_at > now,
            Item.project_id == project_id,
        )
        .order_by(Lease.id)
        .limit(1)
    ).first()


def _candidates(session: Session, project: Project, user: User, now: datetime, tried: list[int]):
    held_before = select(Lease.id).where(Lease.item_id == Item.id, Lease.annotator_id == user.id).exists()
    active = (
        select(func.count()).select_from(Lease)
        .where(Lease.item_id == Item.id, Lease.state == LeaseState.ACTIVE, Lease.expires_at > now)
        .scalar_subquery()
    )
    query = (
        select(Item)
        .where(
            Item.project_id == project.id, Item.status == ItemStatus.OPEN, ~held_before,
            Item.completed_count + active < project.annotations_per_item,
        )
        .order_by(Item.id)
        .limit(1)
        .execution_options(populate_existing=True)
    )
    if tried:
        query = query.where(Item.id.not_in(tried))
    if is_postgres(session.get_bind()):
        query = query.with_for_update(skip_locked=True, of=Item)
    return session.scalars(query).first()


def _lease_commit_without_fsync(session: Session) -> None:
    """A lease is cheap to lose: after a crash its item simply returns to the pool. So its commit need not
    wait for the WAL flush (several ms per commit on ordinary disks). Submits stay fully durable."""
    if is_postgres(session.get_bind()):
        session.execute(text("SET LOCAL synchronous_commit TO off"))


def _serialise_per_annotator(session: Session, user: User) -> None:
    """Two "Next" clicks of one annotator run one after the other (the second resumes the first's lease)."""
    if is_postgres(session.get_bind()):
        session.execute(select(User.id).where(User.id == user.id).with_for_update())


def next_task(session: Session, project: Project, user: User) -> Lease | None:
    """Lease the next item to `user` (or return their current lease); None when nothing is left for them.

    Runs in the caller's transaction; the caller commits at once, which releases the row locks.
    """
    lock_for_write(session)
    _lease_commit_without_fsync(session)
    _serialise_per_annotator(session, user)
    now = utcnow()
    if time.monotonic() - _last_sweep["at"] >= SWEEP_EVERY_S:
        _last_sweep["at"] = time.monotonic()
        expire_stale_leases(session, now)
    if (lease := current_lease(session, project.id, user, now)) is not None:
        return lease
    tried: list[int] = []
    for _ in range(CANDIDATE_TRIES):
        item = _candidates(session, project, user, now, tried)
        if item is None:
            return None
        # Locked now: count again in a new statement, which sees every lease committed before the lock.
        if item.completed_count + active_lease_count(session, item.id, now) < project.annotations_per_item:
            lease = Lease(
                item_id=item.id, annotator_id=user.id, state=LeaseState.ACTIVE, leased_at=now,
                expires_at=now + timedelta(seconds=project.lease_seconds),
            )
            session.add(lease)
            session.flush()
            return lease
        tried.append(item.id)
    return None

