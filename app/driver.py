"""How the hot paths reach the database: logic written once as *steps*, run by a `Database`.

Steps are a generator that yields `(statement, parameters)` and is sent back the statement's first row, or
None when there is none (every step's statement returns rows: an UPDATE has a RETURNING). Rows are read by
name (`row.column`), which SQLAlchemy's rows and the driver's named tuples both answer. A statement may be
a mapping of dialect name to statement, for the few that differ between databases.

A `Database` runs steps, in a transaction when asked. Two kinds, chosen once when the app starts (the
routes get theirs from `app.deps.database` and never see a pool):
  `SessionDatabase`  in a SQLAlchemy Session: any database (SQLite, the command line, tests, a worker).
  `DriverDatabase`   Postgres on psycopg's async pool, straight from the event loop.
A model editor's job process picks the same way (`process_database`); its annotate loop, which runs its
steps one after the other, has the driver on one connection (`ConnectionDatabase`) instead of a pool.
Why the driver: on "Next" and submit, SQLAlchemy's own work per statement (cache key, parameter and result
processing) and the hop to the thread pool and back cost more than everything else the request does;
measured with the same prebuilt statements, SQLAlchemy's async engine spent 7.4-8.4 ms of CPU per Next and
submit against 4.2-5.1 ms here. The statements stay SQLAlchemy expressions, compiled once for the psycopg
dialect, so each is written in one place and runs the same SQL either way. They are compiled with `$n`
placeholders and sent on psycopg's raw cursor, which passes them through as they are: psycopg re-parses a
`%(name)s` query at every execution once it has more than 50 parameters (a submit has more), and that
parse alone cost a tenth of the server's CPU per cycle.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator, Callable, Generator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol, TypeVar

from psycopg import AsyncConnection, AsyncRawCursor
from psycopg.rows import namedtuple_row
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import (
    LABEL_STYLE_TABLENAME_PLUS_COL,
    Column,
    ColumnElement,
    Connection,
    Engine,
    Executable,
    Select,
    Table,
    inspect,
    literal,
)
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app import db

T = TypeVar("T")
Statement = Executable | Mapping[str, Executable]
Row = Any  # a row whose columns are attributes: SQLAlchemy's Row, psycopg's named tuple
Step = tuple[Statement, dict[str, Any]]
Steps = Generator[Step, Row | None, T]

DIALECT = PGDialect_psycopg(paramstyle="numeric_dollar")  # `$n`: the raw cursor's placeholders


class Database(Protocol):
    dialect: str  # "postgresql", "sqlite"

    async def run(self, steps: Steps[T], *, transaction: bool = False) -> T:
        """The steps' result. `transaction`: all of them in one transaction that holds the write lock from
        its start on SQLite (BEGIN IMMEDIATE); else each statement commits on its own where it can."""
        ...


def _statement_for(statement: Statement, dialect: str) -> Executable:
    return statement[dialect] if isinstance(statement, Mapping) else statement


def run(executor: Session | Connection, steps: Steps[T]) -> T:
    """Drive `steps` in a SQLAlchemy Session or Connection (any database), in its transaction."""
    dialect = (executor.get_bind() if isinstance(executor, Session) else executor).dialect.name
    row: Row | None = None
    try:
        while True:
            statement, params = steps.send(row)
            row = executor.execute(_statement_for(statement, dialect), params).first()
    except StopIteration as done:
        return done.value


def lock_for_write(session: Session) -> None:
    """SQLite: take the write lock now, so the reads that follow cannot be overtaken (no-op on Postgres,
    whose steps lock the rows they need)."""
    connection = session.connection()
    if connection.dialect.name == "sqlite" and not connection.connection.dbapi_connection.in_transaction:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


class SessionDatabase:
    """Steps in a Session. Given one (a script, a test, a worker's unit of work), they run at once, in its
    transaction if it has one in progress (its owner commits); without one, each run is a unit of work of
    its own in the thread pool. Steps run outside a transaction commit statement by statement."""

    def __init__(self, session: Session | None = None) -> None:
        self._session = session
        self.dialect = (session.get_bind() if session else db.get_engine()).dialect.name

    async def run(self, steps: Steps[T], *, transaction: bool = False) -> T:
        if self._session is not None:
            return self._run_in(self._session, steps, transaction)
        return await run_in_threadpool(self._run_scoped, steps, transaction)

    def _run_scoped(self, steps: Steps[T], transaction: bool) -> T:
        with db.session_scope() as session:
            return self._run_in(session, steps, transaction)

    @staticmethod
    def _run_in(session: Session, steps: Steps[T], transaction: bool) -> T:
        if transaction:
            lock_for_write(session)
            return run(session, steps)
        if session.in_transaction():  # lends it: the steps see its work, and cannot wait on its locks
            return run(session, steps)
        # As on the driver, each statement commits by itself. Run in a transaction, a one statement that
        # declined would keep the row locks it waited for, and the locking path after it could deadlock.
        with session.get_bind().connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            return run(connection, steps)


class DriverDatabase:
    """Steps on psycopg's async pool (Postgres), on the event loop. The pool's connections autocommit, so
    a step run outside a transaction is a statement that commits by itself (no BEGIN, no COMMIT)."""

    dialect = "postgresql"

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def run(self, steps: Steps[T], *, transaction: bool = False) -> T:
        async with self.pool.connection() as conn:
            return await _run_on(conn, steps, transaction)


class ConnectionDatabase:
    """Steps on one autocommit psycopg connection (Postgres), one run at a time: for a process whose database
    work is one sequence (a model editor's annotate loop), what `DriverDatabase` does without a pool's
    checkout and return around every run."""

    dialect = "postgresql"

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.turn = asyncio.Lock()  # a transaction must not take in another run's statements

    async def run(self, steps: Steps[T], *, transaction: bool = False) -> T:
        async with self.turn:
            return await _run_on(self.conn, steps, transaction)


async def _run_on(conn: AsyncConnection, steps: Steps[T], transaction: bool) -> T:
    if not transaction:
        return await run_on_driver(conn, steps)
    async with conn.transaction():
        return await run_on_driver(conn, steps)


async def run_on_driver(conn: AsyncConnection, steps: Steps[T]) -> T:
    """Drive `steps` on an async psycopg connection (Postgres)."""
    row: Row | None = None
    try:
        while True:
            statement, params = steps.send(row)
            compiled = compiled_for_driver(_statement_for(statement, DIALECT.name))
            row = await (await AsyncRawCursor(conn).execute(compiled.sql, compiled.bind(params))).fetchone()
    except StopIteration as done:
        return done.value


@dataclass(frozen=True)
class DriverStatement:
    """A statement's SQL for psycopg (`$n` placeholders), the parameter name of each placeholder, the values
    of its constants, and its parameters' type conversions (JSON, for instance): what SQLAlchemy would do at
    each execution, worked out once."""

    sql: str
    order: tuple[str, ...]
    constants: dict[str, Any]
    processors: dict[str, Callable[[Any], Any]]

    def bind(self, params: dict[str, Any]) -> list[Any]:
        values = {**self.constants, **params}
        for name, process in self.processors.items():
            values[name] = process(values[name])
        return [values[name] for name in self.order]


@lru_cache(maxsize=128)  # the hot statements are module constants: compiled once per process
def compiled_for_driver(statement: Executable) -> DriverStatement:
    """Only SQLAlchemy's public compiler API (`binds`, `positiontup`, a bind's `expanding`, `literal_execute`,
    `required`, `effective_value`, a type's `bind_processor`); tests/integration/test_driver.py checks that
    the SQL is what SQLAlchemy itself sends, placeholders aside."""
    compiled = statement.compile(dialect=DIALECT)
    binds = compiled.binds  # by the name the SQL uses
    if any(bind.expanding or bind.literal_execute for bind in binds.values()):
        raise ValueError("expanding parameters need SQLAlchemy at each execution: use = ANY / <> ALL on the driver")
    processors = {name: process for name, bind in binds.items()
                  if (process := bind.type.dialect_impl(DIALECT).bind_processor(DIALECT)) is not None}
    constants = {name: bind.effective_value for name, bind in binds.items() if not bind.required}
    return DriverStatement(
        compiled.string, tuple(compiled.positiontup or ()),
        {name: processors.pop(name)(value) if name in processors else value for name, value in constants.items()},
        processors,
    )


def model_default(column: Column) -> ColumnElement:
    """A column's scalar default from the model, as a value in the statement: statements the driver runs
    name every column, since SQLAlchemy's per-execution defaults never run there."""
    return literal(column.default.arg, type_=column.type)


# --- rows of whole tables ----------------------------------------------------------------------------


def labelled(query: Select) -> Select:
    """`query` with every column labelled `<table>_<column>`, so tables joined in one row keep their names."""
    return query.set_label_style(LABEL_STYLE_TABLENAME_PLUS_COL)


@lru_cache(maxsize=32)
def _labels(cls: type) -> tuple[tuple[str, str], ...]:
    """(attribute, row label) of each column of a mapped class, as `labelled` names them."""
    mapper = inspect(cls)
    table: Table = cls.__table__
    return tuple((mapper.get_property_by_column(column).key, f"{table.name}_{column.name}") for column in table.c)


def entity(cls: type[T], row: Row) -> T:
    """A transient instance of a mapped class from a `labelled` row that holds its table's columns."""
    return cls(**{key: getattr(row, label) for key, label in _labels(cls)})


# --- the pool ---------------------------------------------------------------------------------------

# A connection that sat in the pool this long is pinged before use (as the engine's pool does, see
# app.db): the server may have restarted meanwhile. One in steady use has just proven itself.
IDLE_PING_S = 10.0
CONNECT_WAIT_S = 10.0
APPLICATION_NAME = "redline-web-driver"  # in pg_stat_activity, unless the process names itself
_returned_at: weakref.WeakKeyDictionary[AsyncConnection, float] = weakref.WeakKeyDictionary()


async def _note_return(conn: AsyncConnection) -> None:
    _returned_at[conn] = time.monotonic()


async def _ping_if_idle(conn: AsyncConnection) -> None:
    if time.monotonic() - _returned_at.get(conn, 0.0) > IDLE_PING_S:
        await AsyncConnectionPool.check_connection(conn)  # raises if dead: the pool replaces it


def _connection_options(application_name: str) -> dict[str, Any]:
    return {"autocommit": True, "application_name": application_name, "row_factory": namedtuple_row}


async def open_pool(conninfo: str, size: int, application_name: str = APPLICATION_NAME) -> AsyncConnectionPool:
    """A pool of `size` autocommit connections whose rows are named tuples. It connects in the background:
    a server that starts before its database does, and a request waits at most `CONNECT_WAIT_S` for a
    connection."""
    pool = AsyncConnectionPool(
        conninfo, min_size=size, max_size=size, name="redline-driver", timeout=CONNECT_WAIT_S,
        kwargs=_connection_options(application_name), check=_ping_if_idle, reset=_note_return, open=False,
    )
    await pool.open(wait=False)
    return pool


def conninfo(engine: Engine) -> str:
    """The psycopg connection string of a Postgres engine."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


@asynccontextmanager
async def process_database(application_name: str, *, pool_size: int = 0) -> AsyncIterator[Database]:
    """The `Database` of a process that runs steps from its event loop (a model editor's job). On Postgres
    the driver: a pool of `pool_size` connections, or with 0 one connection for a process that runs its
    steps one after the other; elsewhere Sessions in the thread pool."""
    engine = db.get_engine()
    if engine.dialect.name != "postgresql":
        yield SessionDatabase()
        return
    if pool_size:
        pool = await open_pool(conninfo(engine), pool_size, application_name)
        try:
            yield DriverDatabase(pool)
        finally:
            await pool.close()
        return
    conn = await AsyncConnection.connect(conninfo(engine), connect_timeout=int(CONNECT_WAIT_S),
                                         **_connection_options(application_name))
    try:
        yield ConnectionDatabase(conn)
    finally:
        await conn.close()
