"""Every route refuses anonymous users and wrong roles; every state change needs the CSRF token."""

from __future__ import annotations

import re

import pytest

from app.main import create_app

PUBLIC = {"/login", "/healthz"}
# Who may use the annotation app's pages (admins pass every role check).
ACCESS = {
    "/admin/": {"admin"},
    "/annotate": {"annotator", "admin"},
    "/review": {"reviewer", "admin"},
}
ROLES = ("admin", "reviewer", "annotator", "researcher")


def _routes(prefixes: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
    """(method, concrete path) of every route in the OpenAPI schema, path parameters set to 1."""
    found = []
    for template, operations in create_app().openapi()["paths"].items():
        if template in PUBLIC or (prefixes and not template.startswith(prefixes)):
            continue
        path = re.sub(r"\{[^}]+\}", "1", template)
        found.extend((method.upper(), path) for method in sorted(operations))
    return found


def _allowed(path: str) -> set[str]:
    return next((roles for prefix, roles in ACCESS.items() if path.startswith(prefix)), set(ROLES))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_anonymous_requests_are_refused_everywhere(web_client):
    routes = _routes()
    assert len(routes) > 20
    for method, path in routes:
        response = web_client.request(method, path, follow_redirects=False)
        assert response.status_code in (401, 403, 303), (method, path, response.status_code)
        if response.status_code == 303:
            assert response.headers["location"].startswith("/login"), (method, path)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("role", ROLES)
def test_wrong_roles_are_refused(web_client, make_user, login_as, role):
    make_user(f"user_{role}", role)
    csrf = login_as(web_client, f"user_{role}")
    for method, path in _routes(tuple(ACCESS)):
        if role in _allowed(path):
            continue
        response = web_client.request(method, path, headers={"X-CSRF-Token": csrf}, follow_redirects=False)
        assert response.status_code == 403, (role, method, path, response.status_code)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_csrf_is_enforced_on_every_state_change(web_client, make_user, login_as):
    make_user("boss", "admin")
    login_as(web_client, "boss")
    unsafe = [(m, p) for m, p in _routes() if m in ("POST", "PUT", "PATCH", "DELETE")]
    assert unsafe
    for method, path in unsafe:
        for headers in ({}, {"X-CSRF-Token": "forged"}, {"HX-Request": "true"}):
            response = web_client.request(method, path, headers=headers, data={"csrf_token": "forged"} if
                                          method == "POST" else None, follow_redirects=False)
            assert response.status_code == 403 and "CSRF" in response.text, (method, path, headers)
