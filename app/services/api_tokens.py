"""API tokens: `rl_…` bearer secrets shown once, stored as SHA-256, scoped, revocable.

A token's power is the intersection of its scopes with what its owner's *current* role allows, so
demoting or deactivating a user immediately narrows or ends every token they made.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import DomainError
from app.models import ApiToken, Role, User, utcnow
from app.security import token_digest
from app.services import audit

TOKEN_PREFIX = "rl_"
SHOWN_PREFIX_CHARS = 10
# last_used_at is written at most this often per token, so busy clients do not turn reads into writes.
LAST_USED_RESOLUTION = timedelta(seconds=60)

SCOPES: dict[str, str] = {
    "projects:read": "List projects and their progress",
    "items:write": "Import items into projects",
    "edits:read": "List collected edits",
    "datasets:read": "List and download dataset versions",
    "datasets:write": "Create dataset versions",
    "webhooks:admin": "Manage webhooks",
    "editors:admin": "Manage model editors and start their jobs",
}

ROLE_SCOPES: dict[str, frozenset[str]] = {
    Role.ADMIN.value: frozenset(SCOPES),
    Role.RESEARCHER.value: frozenset({"projects:read", "edits:read", "datasets:read", "datasets:write"}),
    Role.REVIEWER.value: frozenset({"projects:read", "edits:read"}),
    Role.ANNOTATOR.value: frozenset(),
}


class TokenError(DomainError):
    """A token request that cannot be granted; the message says why."""

    status_code = 422


def allowed_scopes(user: User) -> frozenset[str]:
    return ROLE_SCOPES.get(user.role, frozenset())


def effective_scopes(token: ApiToken, user: User) -> frozenset[str]:
    return frozenset(token.scopes) & allowed_scopes(user)


def _validate(user: User, name: str, scopes: list[str]) -> tuple[str, list[str]]:
    name = name.strip()
    if not 1 <= len(name) <= 128:
        raise TokenError("name: give the token a name of 1 to 128 characters")
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise TokenError(f"scopes: unknown scope(s) {unknown}; known: {sorted(SCOPES)}")
    if not scopes:
        raise TokenError("scopes: choose at least one scope")
    beyond = sorted(set(scopes) - allowed_scopes(user))
    if beyond:
        raise TokenError(f"scopes: the {user.role} role cannot grant {beyond}")
    return name, sorted(set(scopes))


def create_token(session: Session, user: User, name: str, scopes: list[str]) -> tuple[ApiToken, str]:
    """Make a token for `user`; returns it and the plaintext secret, which is never stored or shown again."""
    name, scopes = _validate(user, name, scopes)
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        user_id=user.id, name=name, token_hash=token_digest(secret), prefix=secret[:SHOWN_PREFIX_CHARS],
        scopes=scopes,
    )
    session.add(token)
    session.flush()
    audit.record(session, user, "api_token.create", "api_token", token.id,
                 after={"name": name, "scopes": scopes, "prefix": token.prefix})
    return token, secret


def authenticate(session: Session, secret: str) -> tuple[ApiToken, User] | None:
    """The live token and active user behind `secret`, or None; records when the token was last used."""
    if not secret.startswith(TOKEN_PREFIX):
        return None
    row = session.execute(
        select(ApiToken, User)
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.token_hash == token_digest(secret), ApiToken.revoked_at.is_(None), User.is_active.is_(True))
    ).first()
    if row is None:
        return None
    token, user = row
    now = utcnow()
    last = token.last_used_at
    if last is None or (last if last.tzinfo else last.replace(tzinfo=now.tzinfo)) < now - LAST_USED_RESOLUTION:
        token.last_used_at = now
    return token, user


def tokens_of(session: Session, user: User) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id.desc())))


def revoke(session: Session, token_id: int, actor: User) -> ApiToken:
    """Revoke a token of the actor's own (admins may revoke anyone's); revoking twice is harmless."""
    token = session.get(ApiToken, token_id)
    if token is None or (token.user_id != actor.id and actor.role != Role.ADMIN):
        raise TokenError(f"token {token_id} not found")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        audit.record(session, actor, "api_token.revoke", "api_token", token.id,
                     before={"revoked_at": None}, after={"revoked_at": token.revoked_at.isoformat()})
    return token
