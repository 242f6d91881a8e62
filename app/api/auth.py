"""Who calls the JSON API: a bearer API token, or a logged-in browser session (CSRF-checked upstream)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.deps import get_db
from app.errors import Forbidden
from app.models import User
from app.services import api_tokens

bearer = HTTPBearer(auto_error=False, description="An API token (`rl_…`) created on Settings → API tokens.")


@dataclass(frozen=True)
class Principal:
    user: User
    scopes: frozenset[str]
    token_id: int | None  # None for a browser session


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(status_code=401, detail=message, headers={"WWW-Authenticate": "Bearer"})


def principal(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    db: Session = Depends(get_db),
) -> Principal:
    if credentials is not None:
        found = api_tokens.authenticate(db, credentials.credentials)
        if found is None:
            raise _unauthorized("invalid, revoked or expired API token")
        token, user = found
        return Principal(user=user, scopes=api_tokens.effective_scopes(token, user), token_id=token.id)
    auth = getattr(request.state, "auth", None)
    if auth is None:
        raise _unauthorized("authenticate with `Authorization: Bearer rl_…` (an API token)")
    return Principal(user=auth.user, scopes=api_tokens.allowed_scopes(auth.user), token_id=None)


def require_scope(scope: str) -> Callable[..., Principal]:
    """Dependency: the caller, if their token (within their role) grants `scope`; 403 otherwise."""
    if scope not in api_tokens.SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    def check(caller: Principal = Depends(principal)) -> Principal:
        if scope not in caller.scopes:
            raise Forbidden(f"this token or role lacks the {scope!r} scope")
        return caller

    return check
