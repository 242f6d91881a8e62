"""The hottest routes' way to Postgres: SQLAlchemy statements compiled once, run on psycopg's async
connections straight from the event loop.

Why: on "Next" and submit, SQLAlchemy's own work per statement (cache key, parameter and result
processing, ORM loading) cost two to three times what the driver spends, and every request's hop to the
thread pool and back cost as much again. The statements stay SQLAlchemy expressions, compiled once for
the psycopg dialect, so each is written in one place and runs the same SQL either way.

Logic that runs both here and in a Session (SQLite, the command line, tests) is written once, as a
generator of steps: it yields `(statement, parameters)` and is sent back the statement's first row as a
tuple, or None when there is none (every step's statement returns rows: an UPDATE has a RETURNING).
`run` drives such steps in a Session or Connection, `run_on_driver` on an async psycopg connection. A
statement may be a mapping of dialect name to statement, for the few that differ between databases.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import Connection, Executable, inspect
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.orm import Session

T = TypeVar("T")
Statement = Executable | Mapping[str, Executable]
Row = Sequence[Any]
Step = tuple[Statement, dict[str, Any]]
Steps = Generator[Step, Row | None, T]

DIALECT = PGDialect_psycopg()


def _statement_for(statement: Statement, dialect: str) -> Executable:
    return statement[dialect] if isinstance(statement, Mapping) else statement


def run(executor: Session | Connection, steps: Steps[T]) -> T:
    """Drive `steps` in a SQLAlchemy Session or Connection (any database)."""
    bind = executor.get_bind() if isinstance(executor, Session) else executor
    row: Row | None = None
    try:
        while True:
            statement, params = steps.send(row)
            row = executor.execute(_statement_for(statement, bind.dialect.name), params).first()
    except StopIteration as done:
        return done.value


async def run_on_driver(conn: AsyncConnection, steps: Steps[T]) -> T:
    """Drive `steps` on an async psycopg connection (Postgres)."""
    row: Row | None = None
    try:
        while True:
            statement, params = steps.send(row)
            row = await first(conn, statement, params)
    except StopIteration as done:
        return done.value


async def first(conn: AsyncConnection, statement: Statement, params: dict[str, Any]) -> Row | None:
    """The first row of `statement` (one that returns rows) run on the driver; None if it has none."""
    compiled = compiled_for_driver(_statement_for(statement, DIALECT.name))
    return await (await conn.execute(compiled.sql, compiled.bind(params))).fetchone()


@dataclass(frozen=True)
class DriverStatement:
    """A statement's SQL for psycopg, the values of its constants, and its parameters' type conversions
    (JSON, for instance): what SQLAlchemy would do at each execution, worked out once."""

    sql: str
    constants: dict[str, Any]
    processors: dict[str, Callable[[Any], Any]]

    def bind(self, params: dict[str, Any]) -> dict[str, Any]:
        values = {**self.constants, **params}
        for name, process in self.processors.items():
            values[name] = process(values[name])
        return values


@lru_cache(maxsize=128)  # the hot statements are module constants: compiled once per process
def compiled_for_driver(statement: Executable) -> DriverStatement:
    compiled = statement.compile(dialect=DIALECT)
    binds = {name: bind for bind, name in compiled.bind_names.items()}  # by the name the SQL uses
    if any(bind.expanding for bind in binds.values()) or "__[POSTCOMPILE" in compiled.string:
        raise ValueError("expanding parameters need SQLAlchemy at each execution: use = ANY / <> ALL on the driver")
    processors = {name: process for name, bind in binds.items()
                  if (process := bind.type.dialect_impl(DIALECT).bind_processor(DIALECT)) is not None}
    constants = {name: bind.effective_value for name, bind in binds.items() if not bind.required}
    return DriverStatement(
        compiled.string,
        {name: processors.pop(name)(value) if name in processors else value for name, value in constants.items()},
        processors,
    )


@lru_cache(maxsize=32)
def _attribute_keys(cls: type) -> tuple[str, ...]:
    mapper = inspect(cls)
    return tuple(mapper.get_property_by_column(column).key for column in cls.__table__.columns)


def entity(cls: type[T], values: Row) -> T:
    """A transient instance of a mapped class from a row that starts with its table's columns, in order."""
    return cls(**dict(zip(_attribute_keys(cls), values, strict=False)))


def columns_of(cls: type) -> int:
    return len(_attribute_keys(cls))


# --- the pool ---------------------------------------------------------------------------------------

# A connection that sat in the pool this long is pinged before use (as the engine's pool does, see
# app.db): the server may have restarted meanwhile. One in steady use has just proven itself.
IDLE_PING_S = 10.0
CONNECT_WAIT_S = 10.0
APPLICATION_NAME = "redline-web-driver"  # in pg_stat_activity
_returned_at: weakref.WeakKeyDictionary[AsyncConnection, float] = weakref.WeakKeyDictionary()


async def _note_return(conn: AsyncConnection) -> None:
    _returned_at[conn] = time.monotonic()


async def _ping_if_idle(conn: AsyncConnection) -> None:
    if time.monotonic() - _returned_at.get(conn, 0.0) > IDLE_PING_S:
        await AsyncConnectionPool.check_connection(conn)  # raises if dead: the pool replaces it


async def open_pool(conninfo: str, size: int) -> AsyncConnectionPool:
    """A pool of `size` autocommit connections (a step that needs a transaction opens one). It connects in
    the background: a server that starts before its database does, and a request waits at most
    `CONNECT_WAIT_S` for a connection."""
    pool = AsyncConnectionPool(
        conninfo, min_size=size, max_size=size, kwargs={"autocommit": True, "application_name": APPLICATION_NAME},
        check=_ping_if_idle, reset=_note_return, open=False, name="redline-driver", timeout=CONNECT_WAIT_S,
    )
    await pool.open(wait=False)
    return pool
