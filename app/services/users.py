"""Accounts: creation, authentication with throttling, password resets, (de)activation."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.errors import DomainError
from app.models import AnnotatorKind, LoginAttempt, Role, User, utcnow
from app.security import (
    end_all_sessions,
    hash_password,
    password_needs_rehash,
    validate_new_password,
    verify_password,
)
from app.services import audit
from app.settings import get_settings

# Written once for Python and for the form's `pattern` attribute, which browsers compile with the `v`
# flag: there a literal "-" in a class must be escaped.
USERNAME_PATTERN = r"[A-Za-z0-9_.@\-]{2,64}"
USERNAME_RE = re.compile(f"^{USERNAME_PATTERN}$")
# One address may try a few accounts (a shared office), but not sweep them.
IP_LIMIT_FACTOR = 5


class AccountError(DomainError):
    """A request about an account that cannot be honoured; the message says why."""


class TooManyAttempts(AccountError):
    status_code = 429


def _user_snapshot(user: User) -> dict:
    return {"username": user.username, "role": user.role, "is_active": user.is_active}


def parse_role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise AccountError(f"unknown role {value!r}; choose one of {', '.join(r.value for r in Role)}") from None


def create_user(
    session: Session, username: str, password: str, role: Role | str, *, display_name: str = "",
    actor: User | None = None,
) -> User:
    username = username.strip()
    if not USERNAME_RE.match(username):
        raise AccountError("username: 2–64 characters, letters, digits and . _ @ - only")
    role = parse_role(str(role))
    try:
        validate_new_password(password)
    except ValueError as exc:
        raise AccountError(str(exc)) from None
    if session.scalar(select(User.id).where(func.lower(User.username) == username.lower())):
        raise AccountError(f"username {username!r} is taken")
    user = User(
        username=username, display_name=display_name.strip(), role=role.value,
        password_hash=hash_password(password), is_active=True,
    )
    session.add(user)
    session.flush()
    audit.record(session, actor, "user.create", "user", user.id, after=_user_snapshot(user))
    return user


def create_service_account(session: Session, username: str, display_name: str, kind: AnnotatorKind) -> User:
    """An annotator account that no person logs in as (a model editor's, an import source's): its edits go
    through the same lease and submit code as a person's. "!" is no argon2 hash, so no password opens it."""
    user = User(username=username, display_name=display_name, role=Role.ANNOTATOR.value, kind=kind.value,
                password_hash="!", is_active=True)
    session.add(user)
    session.flush()
    return user


def _recent_failures(session: Session, column, value: str) -> int:
    since = utcnow() - timedelta(minutes=1)
    return session.scalar(
        select(func.count()).select_from(LoginAttempt).where(column == value, LoginAttempt.at > since)
    )


def authenticate(session: Session, username: str, password: str, ip: str) -> User:
    """The user for these credentials; failures are recorded and throttled per username and address."""
    limit = get_settings().login_attempts_per_minute
    username = username.strip()[:64]
    if (
        _recent_failures(session, LoginAttempt.username, username) >= limit
        or _recent_failures(session, LoginAttempt.ip, ip) >= limit * IP_LIMIT_FACTOR
    ):
        raise TooManyAttempts("Too many failed attempts. Wait a minute, then try again.")
    user = session.scalar(select(User).where(User.username == username))
    if not verify_password(user.password_hash if user else None, password) or not user.is_active:
        session.add(LoginAttempt(username=username, ip=ip[:64]))
        raise AccountError("Wrong username or password, or the account is deactivated.", 401)
    if password_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    user.last_login_at = utcnow()
    return user


def reset_password(session: Session, user: User, new_password: str, actor: User | None) -> None:
    try:
        validate_new_password(new_password)
    except ValueError as exc:
        raise AccountError(str(exc)) from None
    user.password_hash = hash_password(new_password)
    end_all_sessions(session, user.id)
    audit.record(session, actor, "user.reset_password", "user", user.id)


def set_active(session: Session, user: User, active: bool, actor: User | None) -> None:
    if actor is not None and actor.id == user.id and not active:
        raise AccountError("you cannot deactivate your own account")
    before = _user_snapshot(user)
    user.is_active = active
    if not active:
        end_all_sessions(session, user.id)
    audit.record(session, actor, "user.activate" if active else "user.deactivate", "user", user.id,
                 before=before, after=_user_snapshot(user))


def set_role(session: Session, user: User, role: str, actor: User | None) -> None:
    new_role = parse_role(role)
    if actor is not None and actor.id == user.id and new_role != Role.ADMIN:
        raise AccountError("you cannot remove your own admin role")
    before = _user_snapshot(user)
    user.role = new_role.value
    audit.record(session, actor, "user.role", "user", user.id, before=before, after=_user_snapshot(user))


def get_user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise AccountError(f"no user with id {user_id}")
    return user
