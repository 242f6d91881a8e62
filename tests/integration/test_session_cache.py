"""The per-process login cache: served only while listening, emptied by every change to users or sessions,
whether this process made it (at once) or another connection did (through Postgres notifications)."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import psycopg
import pytest
from sqlalchemy.engine import make_url

from app.db import session_scope
from app.models import utcnow
from app.security import SESSION_COOKIE, cached_auth
from app.services import users
from app.session_cache import SessionCache


def pg_only(test):
    return pytest.mark.postgres(pytest.mark.parametrize("db_url", ["postgres"], indirect=True)(test))


def _wait_for(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        time.sleep(0.01)


def _logged_in(web_client, make_user, login_as, username: str = "ann", role: str = "annotator"):
    user = make_user(username, role)
    web_client.csrf = login_as(web_client, username)
    logins = web_client.app.state.logins
    token = web_client.cookies[SESSION_COOKIE]

    def cached_after_a_request() -> bool:
        # Checked in the database, then cached; the login's own notification (it updated the user's
        # last_login_at) may still arrive and empty the cache once.
        assert web_client.get("/account").status_code == 200
        return cached_auth(token, logins) is not None

    _wait_for(cached_after_a_request)
    return user, token, logins


def _sql(db_url: str, statement: str) -> None:
    """A change made outside this process's SQLAlchemy sessions, as an admin's psql would."""
    dsn = make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement)


# --- the cache's own rules ------------------------------------------------------------------------------


def test_cache_serves_only_while_listening_and_never_a_value_older_than_its_last_emptying() -> None:
    cache: SessionCache[str] = SessionCache(capacity=2)
    now = utcnow()
    later = now + timedelta(hours=1)
    cache.put("a", "login a", later, cache.generation)
    assert cache.get("a", now) is None  # not listening: nothing stored, nothing served

    cache._set_serving(True)
    stale = cache.generation
    cache.clear()  # a change arrived while "a" was being read
    cache.put("a", "login a", later, stale)
    assert cache.get("a", now) is None
    cache.put("a", "login a", later, cache.generation)
    assert cache.get("a", now) == "login a"
    assert cache.get("a", later) is None  # expired

    cache.put("b", "login b", later, cache.generation)
    cache.put("c", "login c", later, cache.generation)  # over capacity: the oldest goes
    assert (cache.get("a", now), cache.get("b", now), cache.get("c", now)) == (None, "login b", "login c")

    cache._set_serving(False)  # the listener lost its connection: notifications may be missed from now on
    assert cache.get("b", now) is None and len(cache) == 0


def test_a_naive_expiry_from_sqlite_counts_as_utc() -> None:
    cache: SessionCache[str] = SessionCache(capacity=1)
    cache._set_serving(True)
    cache.put("a", "login a", (utcnow() + timedelta(minutes=1)).replace(tzinfo=None), cache.generation)
    assert cache.get("a", utcnow()) == "login a"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_sqlite_never_caches(web_client, make_user, login_as) -> None:
    make_user("ann")
    login_as(web_client, "ann")
    assert web_client.get("/account").status_code == 200
    assert not web_client.app.state.logins.serving and len(web_client.app.state.logins) == 0


# --- changes made by this process take effect at once ---------------------------------------------------


@pg_only
def test_logout_ends_the_cached_login_at_once(web_client, make_user, login_as) -> None:
    _user, token, logins = _logged_in(web_client, make_user, login_as)
    logout = web_client.post("/logout", data={"csrf_token": web_client.csrf}, follow_redirects=False)
    assert logout.status_code == 303
    assert cached_auth(token, logins) is None
    web_client.cookies.set(SESSION_COOKIE, token)  # the old cookie, replayed
    assert web_client.get("/account").status_code == 401


@pg_only
@pytest.mark.parametrize("change", ["deactivate", "role", "password"])
def test_account_changes_through_the_services_end_cached_logins_at_once(
    web_client, make_user, login_as, change: str
) -> None:
    user, token, logins = _logged_in(web_client, make_user, login_as)
    with session_scope() as session:
        account = users.get_user(session, user.id)
        if change == "deactivate":
            users.set_active(session, account, False, None)
        elif change == "role":
            users.set_role(session, account, "reviewer", None)
        else:
            users.reset_password(session, account, "a brand new password", None)
    assert cached_auth(token, logins) is None
    expected = 403 if change == "role" else 401  # a reviewer is logged in, but not an annotator
    assert web_client.get("/annotate", headers={"HX-Request": "true"}).status_code == expected


@pg_only
def test_a_rolled_back_change_keeps_the_cache(web_client, make_user, login_as) -> None:
    user, token, logins = _logged_in(web_client, make_user, login_as)
    with pytest.raises(RuntimeError), session_scope() as session:
        users.set_active(session, users.get_user(session, user.id), False, None)
        raise RuntimeError("changed my mind")
    assert cached_auth(token, logins) is not None


# --- changes made elsewhere arrive as notifications -----------------------------------------------------


@pg_only
@pytest.mark.parametrize("statement", [
    "DELETE FROM web_sessions",
    "UPDATE users SET is_active = false",
    "UPDATE users SET role = 'reviewer'",
    "TRUNCATE web_sessions",
])
def test_changes_from_another_connection_reach_the_cache(
    web_client, make_user, login_as, db_url: str, statement: str
) -> None:
    _user, token, logins = _logged_in(web_client, make_user, login_as)
    _sql(db_url, statement)
    _wait_for(lambda: cached_auth(token, logins) is None)
    assert web_client.get("/annotate", headers={"HX-Request": "true"}).status_code in (401, 403)


@pg_only
def test_a_lost_listener_stops_the_cache_until_it_is_back(web_client, make_user, login_as, db_url: str) -> None:
    _user, token, logins = _logged_in(web_client, make_user, login_as)
    _sql(db_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN %'")
    _wait_for(lambda: not logins.serving)
    assert cached_auth(token, logins) is None
    assert web_client.get("/account").status_code == 200  # still logged in: checked in the database
    _wait_for(lambda: logins.serving)  # reconnected, empty
    assert web_client.get("/account").status_code == 200
    assert cached_auth(token, logins) is not None


def test_the_listener_does_not_serve_without_a_database() -> None:
    async def run() -> bool:
        cache: SessionCache[str] = SessionCache(capacity=1)
        listener = asyncio.create_task(cache.keep_listening("postgresql://nobody@127.0.0.1:1/none"))
        await asyncio.sleep(0.3)
        listener.cancel()
        return cache.serving

    assert asyncio.run(run()) is False
