"""FastAPI dependencies shared by every route: the database session, the user, role checks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import quote

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from app.db import new_session
from app.models import Role, User
from app.security import AuthContext
from app.templating import render


async def get_db() -> AsyncIterator[Session]:
    """One unit of work per request: committed when the handler returns, rolled back if it raises.

    Async so that FastAPI does not move it to its thread pool twice per request (entering and leaving):
    creating a session does no I/O, and neither does closing one whose handler already committed. Only
    a session with work left (a read that left a transaction open, unflushed changes, an error) is
    finished in a thread, since that is a round trip to the database.
    """
    session = new_session()
    try:
        yield session
    except BaseException:
        await anyio.to_thread.run_sync(session.close)  # closing rolls back
        raise
    if session.in_transaction() or session.new or session.dirty or session.deleted:
        await anyio.to_thread.run_sync(_commit_and_close, session)
    else:
        session.close()


def _commit_and_close(session: Session) -> None:
    try:
        session.commit()
    finally:
        session.close()


class NotAuthenticated(Exception):
    """Raised by `current_user`; turned into 401 (API, htmx) or a redirect to /login (pages)."""


class Forbidden(Exception):
    def __init__(self, detail: str = "You do not have permission to do this.") -> None:
        super().__init__(detail)
        self.detail = detail


# The user dependencies do no I/O (the middleware loaded the session), so they are `async`: FastAPI runs
# sync dependencies in its thread pool, one hop each, which costs more than the work itself.


async def current_auth(request: Request) -> AuthContext:
    auth: AuthContext | None = getattr(request.state, "auth", None)
    if auth is None:
        raise NotAuthenticated
    return auth


async def current_user(request: Request) -> User:
    """The logged-in, active user (a detached snapshot loaded by the security middleware)."""
    return (await current_auth(request)).user


def require_roles(*roles: Role) -> Callable[..., Awaitable[User]]:
    """Dependency factory: the current user if their role is one of `roles`; admins pass every check.

    One flat dependency (not one built on `current_user`): FastAPI's per-dependency bookkeeping costs
    more than the check, and this runs on every request."""
    allowed = {str(role) for role in roles} | {Role.ADMIN.value}

    async def check(request: Request) -> User:
        user = await current_user(request)
        if user.role not in allowed:
            raise Forbidden
        return user

    return check


def _wants_html_page(request: Request) -> bool:
    is_htmx = request.headers.get("hx-request") == "true"
    is_api = request.url.path.startswith("/api/")
    return not is_htmx and not is_api and "text/html" in request.headers.get("accept", "")


def _not_authenticated(request: Request, _exc: NotAuthenticated) -> Response:
    if _wants_html_page(request):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
    response = JSONResponse({"detail": "Not authenticated"}, status_code=401)
    if request.headers.get("hx-request") == "true":
        response.headers["HX-Redirect"] = "/login"
    return response


def _forbidden(request: Request, exc: Forbidden) -> Response:
    if _wants_html_page(request):
        return render(request, "error.html", status_code=403, title="Forbidden", message=exc.detail)
    return JSONResponse({"detail": exc.detail}, status_code=403)


def install_auth_handlers(app: FastAPI) -> None:
    app.add_exception_handler(NotAuthenticated, _not_authenticated)
    app.add_exception_handler(Forbidden, _forbidden)
