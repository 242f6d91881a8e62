"""Login, logout, sessions, throttling and CSRF through the real app and database."""

from __future__ import annotations

import re

from sqlalchemy import func, select

from app.db import session_scope
from app.models import AuditEvent, User, WebSession


def test_login_sets_session_and_logout_ends_it(web_client, make_user, login_as):
    make_user("ann", "annotator")
    csrf = login_as(web_client, "ann")
    assert web_client.get("/account", follow_redirects=False).status_code != 303
    with session_scope() as session:
        stored = session.scalars(select(WebSession)).one()
    cookie = web_client.cookies.get("redline_session")
    assert cookie and stored.token_hash != cookie  # only the digest is stored
    response = web_client.post("/logout", headers={"X-CSRF-Token": csrf}, follow_redirects=False)
    assert response.status_code == 303
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(WebSession)) == 0
    assert web_client.get("/account", follow_redirects=False).status_code == 401


def test_wrong_password_is_refused_and_throttled(web_client, make_user, settings_env):
    make_user("ann", "annotator")
    page = web_client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    wrong = {"username": "ann", "password": "nope-nope-nope", "csrf_token": token}
    statuses = [
        web_client.post("/login", data=wrong).status_code
        for _ in range(settings_env.login_attempts_per_minute + 1)
    ]
    assert statuses[:-1] == [401] * settings_env.login_attempts_per_minute
    assert statuses[-1] == 429
    # Even the right password waits out the throttle window.
    ok = web_client.post(
        "/login", data={"username": "ann", "password": "correct horse battery", "csrf_token": token},
        follow_redirects=False,
    )
    assert ok.status_code == 429


def test_login_without_csrf_is_refused(web_client, make_user):
    make_user("ann", "annotator")
    web_client.get("/login")
    response = web_client.post("/login", data={"username": "ann", "password": "correct horse battery"})
    assert response.status_code == 403


def test_state_change_needs_session_csrf_token(web_client, make_user, login_as):
    make_user("ann", "annotator")
    csrf = login_as(web_client, "ann")
    assert web_client.post("/logout", follow_redirects=False).status_code == 403
    assert web_client.post("/logout", headers={"X-CSRF-Token": "x" * 43}).status_code == 403
    assert web_client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303


def test_open_redirect_after_login_is_blocked(web_client, make_user):
    make_user("ann", "annotator")
    page = web_client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    response = web_client.post(
        "/login",
        data={"username": "ann", "password": "correct horse battery", "csrf_token": token,
              "next": "//evil.example/"},
        follow_redirects=False,
    )
    assert response.headers["location"] == "/"


def test_anonymous_page_redirects_and_htmx_gets_401(web_client):
    page = web_client.get("/account", headers={"Accept": "text/html"}, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Faccount"
    fragment = web_client.get("/account", headers={"HX-Request": "true"})
    assert fragment.status_code == 401 and fragment.headers["HX-Redirect"] == "/login"


def test_user_creation_is_audited(make_user):
    user = make_user("rev", "reviewer")
    with session_scope() as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.object_id == str(user.id))).one()
    assert event.action == "user.create" and event.after["role"] == "reviewer"


def test_admin_user_pages(web_client, make_user, login_as, settings_env):
    from fastapi.testclient import TestClient

    from app.main import create_app

    boss = make_user("boss", "admin")
    csrf = login_as(web_client, "boss")
    created = web_client.post("/admin/users", data={"username": "newbie", "password": "long enough pw",
                                                    "role": "annotator", "csrf_token": csrf})
    assert created.status_code == 200 and "Created newbie" in created.text
    taken = web_client.post("/admin/users", data={"username": "newbie", "password": "long enough pw",
                                                  "role": "annotator", "csrf_token": csrf})
    assert taken.status_code == 400 and "taken" in taken.text
    with session_scope() as session:
        newbie = session.scalars(select(User).where(User.username == "newbie")).one()

    with TestClient(create_app()) as other:  # newbie logs in elsewhere
        login_as(other, "newbie", "long enough pw")
        web_client.post(f"/admin/users/{newbie.id}/password", data={"password": "another long pw",
                                                                    "csrf_token": csrf})
        assert other.get("/account").status_code == 401  # the reset ended newbie's sessions
        login_as(other, "newbie", "another long pw")
        web_client.post(f"/admin/users/{newbie.id}/active", data={"active": "false", "csrf_token": csrf})
        assert other.get("/account").status_code == 401
    refused = web_client.post(f"/admin/users/{boss.id}/active", data={"active": "false", "csrf_token": csrf})
    assert refused.status_code == 400 and "your own account" in refused.text
    with session_scope() as session:
        actions = set(session.scalars(select(AuditEvent.action)))
    assert {"user.create", "user.reset_password", "user.deactivate"} <= actions
