"""The connection pool: a pooled connection the server dropped while it sat idle is replaced, not failed."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from app import db

pytestmark = pytest.mark.postgres


def _backend_pid(engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(text("SELECT pg_backend_pid()"))


def test_a_connection_killed_while_idle_is_replaced_on_checkout(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = db.engine_for.__wrapped__(pg_url)  # a private pool, not the cached one other tests share
    try:
        first = _backend_pid(engine)
        admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:  # what a Postgres restart or a dropped TCP connection looks like
            assert conn.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
        admin.dispose()
        monkeypatch.setattr(db, "IDLE_PING_S", 0.0)  # every pooled connection now counts as idle
        second = _backend_pid(engine)
        assert second != first
    finally:
        engine.dispose()


def test_only_a_connection_idle_for_a_while_is_pinged(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = db.engine_for.__wrapped__(pg_url)
    pings: list[object] = []
    real_ping = engine.dialect.do_ping
    monkeypatch.setattr(engine.dialect, "do_ping", lambda dbapi_conn: pings.append(dbapi_conn) or real_ping(dbapi_conn))
    try:
        _backend_pid(engine)
        _backend_pid(engine)  # back from the pool a moment later: in steady use, no extra round trip
        assert pings == []
        monkeypatch.setattr(db, "IDLE_PING_S", 0.0)
        _backend_pid(engine)
        assert len(pings) == 1
    finally:
        engine.dispose()
