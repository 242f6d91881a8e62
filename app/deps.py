"""FastAPI dependencies shared by every route: the database session (and the hot routes' `Database`), the user,
role checks; and the answers
to a missing login and to a refused request (`app.errors`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import quote

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from app.db import new_session
from app.driver import Database
from app.errors import DomainError, Forbidden, error_message
from app.models import Role, User
from app.security import AuthContext
from app.templating import is_htmx, render


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


async def database(request: Request) -> Database:
    """Where the hot routes ("Next", the editor, submit) run their steps (app.driver): chosen once when the
    app starts (app.main), the driver's pool on Postgres, Sessions in the thread pool elsewhere."""
    return request.app.state.database


class NotAuthenticated(Exception):
    """Raised by `current_user`; turned into 401 (API, htmx) or a redirect to /login (pages)."""


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
    is_api = request.url.path.startswith("/api/")
    return not is_htmx(request) and not is_api and "text/html" in request.headers.get("accept", "")


def _not_authenticated(request: Request, _exc: NotAuthenticated) -> Response:
    if _wants_html_page(request):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
    response = JSONResponse({"detail": "Not authenticated"}, status_code=401)
    if is_htmx(request):
        response.headers["HX-Redirect"] = "/login"
    return response


def _refused(request: Request, exc: DomainError) -> Response:
    """Every `DomainError`, answered the way the asker reads it: a page, an htmx fragment, or JSON."""
    if is_htmx(request) and request.headers.get("hx-boosted") != "true":  # a boosted link swaps a whole page
        return render(request, "_error.html", status_code=exc.status_code, message=str(exc))
    accept = request.headers.get("accept", "")
    if request.url.path.startswith("/api/") or ("application/json" in accept and "text/html" not in accept):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status_code)
    return render(request, "error.html", status_code=exc.status_code, title=exc.title, message=str(exc))


# The part of a request FastAPI names first in an error's location; the field follows it.
REQUEST_PARTS = frozenset({"body", "query", "path", "header", "cookie"})


def _field(loc: tuple[int | str, ...]) -> str:
    parts = loc[1:] if loc and loc[0] in REQUEST_PARTS else loc
    return ".".join(map(str, parts)) or str(loc[0] if loc else "request")


def _invalid(request: Request, exc: RequestValidationError) -> Response:
    """A malformed query, path or body (422): each error with its field and the validator's own words, never
    pydantic's "Value error, " prefix. JSON keeps FastAPI's list (`loc`, `type`) with the field added; a page or
    fragment shows `field: message` lines."""
    errors = [{"loc": list(e["loc"]), "field": _field(tuple(e["loc"])), "msg": error_message(e), "type": e["type"]}
              for e in exc.errors()]
    accept = request.headers.get("accept", "")
    if request.url.path.startswith("/api/") or not (is_htmx(request) or "text/html" in accept):
        return JSONResponse({"detail": errors}, status_code=422)
    return _refused(request, DomainError("; ".join(f"{e['field']}: {e['msg']}" for e in errors), 422))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(NotAuthenticated, _not_authenticated)
    app.add_exception_handler(DomainError, _refused)
    app.add_exception_handler(RequestValidationError, _invalid)
