"""Passwords, server-side login sessions, and the middleware that authenticates and enforces CSRF.

The session cookie carries only a random token; the database keeps its SHA-256, so a leaked database
cannot be replayed as cookies. Every unsafe request (POST/PUT/PATCH/DELETE) must carry the session's
CSRF token as header `X-CSRF-Token` or form field `csrf_token`. Anonymous forms (the login page) use a
double-submit cookie instead. Requests that authenticate with `Authorization: Bearer` and send no
session cookie are exempt: they carry no ambient credential a third-party page could ride on.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import parse_qs

import anyio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import bindparam, delete, select
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.db import get_engine
from app.models import User, WebSession, utcnow
from app.session_cache import SessionCache
from app.settings import get_settings

SESSION_COOKIE = "redline_session"
PRE_CSRF_COOKIE = "redline_csrf"  # double-submit token for forms shown before login
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_FORM_PEEK = 1 << 20  # bytes of a url-encoded body buffered to find the token

_hasher = PasswordHasher()
# Verified against when the username does not exist, so a miss costs as much time as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


# --- passwords ----------------------------------------------------------------------------------


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def password_needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


def validate_new_password(password: str) -> None:
    if len(password) < 10:
        raise ValueError("password must be at least 10 characters")


# --- sessions -----------------------------------------------------------------------------------


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def start_session(session: Session, user: User, user_agent: str = "") -> str:
    """Create a login session and return the raw cookie token (shown only to the browser)."""
    token = new_token()
    session.add(
        WebSession(
            token_hash=token_digest(token),
            user_id=user.id,
            csrf_token=new_token(),
            expires_at=utcnow() + timedelta(seconds=get_settings().session_max_age_s),
            user_agent=user_agent[:255],
        )
    )
    return token


def end_session(session: Session, session_id: int) -> None:
    session.execute(delete(WebSession).where(WebSession.id == session_id))


def end_all_sessions(session: Session, user_id: int) -> None:
    """Used on deactivation and password reset: existing logins stop working at once."""
    session.execute(delete(WebSession).where(WebSession.user_id == user_id))


def cookie_kwargs(max_age: int | None = None) -> dict:
    return {
        "httponly": True,
        "samesite": "lax",
        "secure": get_settings().secure_cookies,
        "max_age": max_age,
        "path": "/",
    }


@dataclass(frozen=True)
class AuthContext:
    """Who is making the request; set on `request.state.auth` by the middleware."""

    user: User  # detached snapshot, safe to read after the lookup's session closed
    session_id: int
    csrf_token: str


# `kind` too: a submit decides by it whether the edit counts toward the item's N.
_USER_COLUMNS = (User.id, User.username, User.display_name, User.role, User.kind, User.is_active, User.created_at,
                 User.last_login_at)


@dataclass(frozen=True)
class Login:
    """A checked session as the cache keeps it: plain values, so no request shares another's objects."""

    session_id: int
    csrf_token: str
    user_values: tuple  # in `_USER_COLUMNS` order

    def context(self) -> AuthContext:
        user = User(**{column.key: value for column, value in zip(_USER_COLUMNS, self.user_values, strict=True)})
        return AuthContext(user=user, session_id=self.session_id, csrf_token=self.csrf_token)


# Built once: the request path only binds the two values (building the expression costs more than running it).
_AUTH_QUERY = (
    select(WebSession.id, WebSession.csrf_token, WebSession.expires_at, *_USER_COLUMNS)
    .join(User, User.id == WebSession.user_id)
    .where(
        WebSession.token_hash == bindparam("digest"),
        WebSession.expires_at > bindparam("now"),
        User.is_active.is_(True),
    )
)


def cached_auth(token: str, cache: SessionCache[Login]) -> AuthContext | None:
    """The login behind a cookie token from the process's cache, or None (not cached: ask `load_auth`)."""
    login = cache.get(token_digest(token), utcnow())
    return login.context() if login else None


def load_auth(token: str, cache: SessionCache[Login] | None = None) -> AuthContext | None:
    """The active user and session behind a cookie token, or None (unknown, expired, deactivated); a
    found login is offered to `cache`.

    One Core query; the user comes back as a detached object without its password hash, which no request
    handler needs."""
    digest = token_digest(token)
    generation = cache.generation if cache is not None else 0  # read before the query: see SessionCache.put
    # Autocommit: one read needs no transaction, which saves a BEGIN and a ROLLBACK round trip per request.
    with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        row = conn.execute(_AUTH_QUERY, {"digest": digest, "now": utcnow()}).first()
    if row is None:
        return None
    session_id, csrf_token, expires_at, *user_values = row
    login = Login(session_id, csrf_token, tuple(user_values))
    if cache is not None:
        cache.put(digest, login, expires_at, generation)
    return login.context()


# --- the middleware -----------------------------------------------------------------------------


def _cookies(scope: Scope) -> dict[str, str]:
    """Cookie header -> dict, as browsers send it (`a=1; b=2`); our own values are URL-safe tokens."""
    cookies: dict[str, str] = {}
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            for pair in value.decode("latin-1").split(";"):
                key, sep, val = pair.strip().partition("=")
                if sep and key not in cookies:
                    cookies[key] = val.strip('"')
    return cookies


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope.get("headers", []):
        if name == wanted:
            return value.decode("latin-1")
    return None


def _token_from_urlencoded(body: bytes) -> str | None:
    values = parse_qs(body.decode("latin-1"), keep_blank_values=True).get(CSRF_FIELD)
    return values[0] if values else None


_FIRST_PART = re.compile(
    rb'\A--[^\r\n]+\r\nContent-Disposition:\s*form-data;\s*name="csrf_token"\r\n(?:[^\r\n]+\r\n)*\r\n'
    rb"([^\r\n]*)\r\n--",
    re.IGNORECASE,
)


def _token_from_multipart(head: bytes) -> str | None:
    """Uploads stream, so only the first part is inspected: forms put `csrf_token` first."""
    match = _FIRST_PART.match(head)
    return match.group(1).decode("latin-1") if match else None


class Replay:
    """Feeds the already-read body chunks back to the app, then continues with the live stream."""

    def __init__(self, chunks: list[Message], receive: Receive) -> None:
        self.chunks = chunks
        self.receive = receive

    async def __call__(self) -> Message:
        if self.chunks:
            return self.chunks.pop(0)
        return await self.receive()


async def peek_body(receive: Receive, limit: int, done) -> tuple[list[Message], bytes]:
    """Read body chunks until `done(buffer)` or `limit` bytes or the end of the body."""
    chunks: list[Message] = []
    buffer = b""
    while True:
        message = await receive()
        chunks.append(message)
        buffer += message.get("body", b"")
        if not message.get("more_body", False) or len(buffer) >= limit or done(buffer):
            return chunks, buffer


async def _send_forbidden(send: Send, reason: str) -> None:
    body = f"CSRF check failed: {reason}".encode()
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


class SecurityMiddleware:
    """Authenticates the session cookie (from `logins`, else one query off the event loop) and enforces CSRF."""

    def __init__(self, app: ASGIApp, logins: SessionCache[Login]) -> None:
        self.app = app
        self.logins = logins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cookies = _cookies(scope)
        auth = None
        if token := cookies.get(SESSION_COOKIE):
            auth = cached_auth(token, self.logins) or await anyio.to_thread.run_sync(load_auth, token, self.logins)
        scope.setdefault("state", {})["auth"] = auth
        if scope["method"] in UNSAFE_METHODS and not self._exempt(scope, cookies):
            expected = auth.csrf_token if auth else cookies.get(PRE_CSRF_COOKIE)
            if not expected:
                await _send_forbidden(send, "no session; reload the page and try again")
                return
            given, receive = await self._given_token(scope, receive)
            if not given or not hmac.compare_digest(given.encode(), expected.encode()):
                await _send_forbidden(send, "missing or wrong token; reload the page and try again")
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _exempt(scope: Scope, cookies: dict[str, str]) -> bool:
        bearer = (_header(scope, b"authorization") or "").lower().startswith("bearer ")
        return bearer and SESSION_COOKIE not in cookies

    @staticmethod
    async def _given_token(scope: Scope, receive: Receive) -> tuple[str | None, Receive]:
        header = _header(scope, CSRF_HEADER.encode())
        if header:
            return header, receive
        content_type = (_header(scope, b"content-type") or "").lower()
        if content_type.startswith("application/x-www-form-urlencoded"):
            chunks, body = await peek_body(receive, MAX_FORM_PEEK, lambda _buf: False)
            return _token_from_urlencoded(body), Replay(chunks, receive)
        if content_type.startswith("multipart/form-data"):
            chunks, head = await peek_body(receive, 64 * 1024, lambda buf: _FIRST_PART.match(buf) is not None)
            return _token_from_multipart(head), Replay(chunks, receive)
        return None, receive
