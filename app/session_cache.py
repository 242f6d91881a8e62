"""A per-process cache of checked login sessions, kept honest by Postgres notifications.

Checking a session cookie costs a query and a hop to a thread, on every request. This cache answers
from memory instead, but only while its process listens on the channel `redline_auth`, which the
triggers of migration 0005 notify on every update, delete or truncate of `users` and `web_sessions`
(logout, deactivation, role change, password reset, an admin's SQL): each notification empties the
whole cache. So a change ends cached logins in every web process within the notification's delivery
(milliseconds), and at once in the process that committed it through a `Session` (the hooks below).

It fails closed: while the listener is not connected (starting, reconnecting, SQLite) nothing is served
from the cache or stored in it, and each new connection starts empty, since notifications sent in
between were lost. A lookup that raced with a change cannot store a stale answer either: `put` refuses a
value read before the latest emptying (the generation counter).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from datetime import datetime
from typing import Generic, TypeVar

import psycopg
from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session

from app.models import as_utc

CHANNEL = "redline_auth"  # notified by the triggers of migration 0005
AUTH_TABLES = frozenset({"users", "web_sessions"})
RECONNECT_S = 1.0

log = logging.getLogger(__name__)
V = TypeVar("V")


class SessionCache(Generic[V]):
    """Values by key (a session token's digest), each valid until its own expiry, at most `capacity`."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.serving = False  # True only while the listener is connected
        self._entries: dict[str, tuple[V, datetime]] = {}
        self._generation = 0
        self._lock = threading.Lock()  # orders `put` against `clear`; reads need none
        _live_caches.add(self)

    @property
    def generation(self) -> int:
        """Read before loading a value from the database, and passed to `put` with it."""
        return self._generation

    def get(self, key: str, now: datetime) -> V | None:
        if not self.serving:
            return None
        entry = self._entries.get(key)
        if entry is None or entry[1] <= now:
            return None
        return entry[0]

    def put(self, key: str, value: V, expires_at: datetime, generation: int) -> None:
        """Keep `value` unless the cache was emptied since `generation` was read (the value may predate a
        change) or is not serving."""
        expires_at = as_utc(expires_at)
        with self._lock:
            if not self.serving or generation != self._generation or self.capacity <= 0:
                return
            if len(self._entries) >= self.capacity:
                del self._entries[next(iter(self._entries))]  # the oldest entry
            self._entries[key] = (value, expires_at)

    def clear(self) -> None:
        with self._lock:
            self._empty()

    def _empty(self) -> None:
        """(With the lock held.) Drop every entry and refuse values read before now."""
        self._generation += 1
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    async def keep_listening(self, dsn: str) -> None:
        """Serve while subscribed to `CHANNEL`, emptying the cache on each notification; reconnect after
        a lost connection. Runs until cancelled."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self._set_serving(True)
                    async for _ in conn.notifies():
                        self.clear()
            except psycopg.Error as exc:
                log.warning("login cache off until the database is back (%s)", exc)
            finally:
                self._set_serving(False)
            await asyncio.sleep(RECONNECT_S)

    def _set_serving(self, serving: bool) -> None:
        with self._lock:
            self.serving = serving
            self._empty()


# --- this process's own changes take effect at once -------------------------------------------------

_live_caches: weakref.WeakSet[SessionCache] = weakref.WeakSet()
_CHANGED = "redline_auth_changed"


def _clear_all() -> None:
    for cache in list(_live_caches):
        cache.clear()


@event.listens_for(Session, "before_flush")
def _note_flushed_change(session: Session, _context, _instances) -> None:
    changed = (*session.dirty, *session.deleted)
    if any(getattr(obj, "__tablename__", None) in AUTH_TABLES for obj in changed):
        session.info[_CHANGED] = True


@event.listens_for(Session, "do_orm_execute")
def _note_statement_change(state: ORMExecuteState) -> None:
    if (state.is_update or state.is_delete) and getattr(state.statement.table, "name", None) in AUTH_TABLES:
        state.session.info[_CHANGED] = True


@event.listens_for(Session, "after_commit")
def _clear_after_change(session: Session) -> None:
    if session.info.pop(_CHANGED, False):
        _clear_all()


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back_change(session: Session) -> None:
    session.info.pop(_CHANGED, None)
