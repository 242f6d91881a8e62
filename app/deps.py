"""FastAPI dependencies shared by every route: the database session, the user, role checks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from urllib.parse import quote

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from app.db import session_scope
from app.models import Role, User
from app.security import AuthContext
from app.templating import render


def get_db() -> Iterator[Session]:
    """One unit of work per request; handlers commit what they change, errors roll back."""
    with session_scope() as session:
        yield session


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


async def current_user(auth: AuthContext = Depends(current_auth)) -> User:
    """The logged-in, active user (a detached snapshot loaded by the security middleware)."""
    return auth.user


def require_roles(*roles: Role) -> Callable[..., Awaitable[User]]:
    """Dependency factory: the current user if their role is one of `roles`; admins pass every check."""
    allowed = {str(role) for role in roles} | {Role.ADMIN.value}

    async def check(user: User = Depends(current_user)) -> User:
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
