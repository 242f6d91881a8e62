"""The one rule for NUL characters in text that enters Redline: refused, with where it was.

Postgres `text` and `jsonb` cannot hold U+0000, and SQLite would keep it and break every export and
copy to Postgres later. Silently stripping it would change what a person wrote, so text with a NUL is
refused everywhere it enters: imported files (line and field, by the importer), form posts and JSON
bodies and query strings of every route (field, by `NulGuard` below).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from app.security import UNSAFE_METHODS, Replay, peek_body

NUL = "\x00"
MAX_BODY_SCAN = 8 * 1024 * 1024  # larger bodies are uploads, checked by their importer


def nul_error(value: str) -> str | None:
    """The message for a text holding NUL, or None."""
    position = value.find(NUL)
    if position < 0:
        return None
    return (f"contains a NUL character (U+0000) at character {position + 1}; remove it "
            "(no text in Redline can hold NUL)")


def find_nul(value: Any, path: str = "") -> tuple[str, str] | None:
    """(field path, message) of the first NUL in a JSON-like value's strings or keys, or None."""
    if isinstance(value, str):
        message = nul_error(value)
        return (path or "(value)", message) if message else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and NUL in key:
                return where.replace(NUL, "\\0"), "the field name contains a NUL character (U+0000)"
            if found := find_nul(item, where):
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if found := find_nul(item, f"{path}[{index}]"):
                return found
    return None


def _found_in_form(body: bytes) -> tuple[str, str] | None:
    fields = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    return find_nul(dict(reversed(fields)))


def _found_in_json(body: bytes) -> tuple[str, str] | None:
    try:
        return find_nul(json.loads(body))
    except ValueError:
        return None  # not JSON: the route says so


class NulGuard:
    """Refuses (422) a request whose query string, form body or JSON body holds a NUL, naming the field.
    The cheap byte scan runs first; only a body that has one is parsed to say where."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        query = scope.get("query_string", b"")
        if b"%00" in query or b"\x00" in query:
            found = _found_in_form(query)
            if found:
                await _refuse(scope, send, found)
                return
        if scope["method"] in UNSAFE_METHODS:
            content_type = next((v for k, v in scope["headers"] if k == b"content-type"), b"").lower()
            check = (_found_in_form if content_type.startswith(b"application/x-www-form-urlencoded")
                     else _found_in_json if content_type.startswith(b"application/json") else None)
            if check is not None:
                chunks, body = await peek_body(receive, MAX_BODY_SCAN, lambda _buf: False)
                receive = Replay(chunks, receive)
                if (b"%00" in body or b"\\u0000" in body or b"\x00" in body) and (found := check(body)):
                    await _refuse(scope, send, found)
                    return
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, send: Send, found: tuple[str, str]) -> None:
    field, message = found
    text = f"Field {field!r} {message}."
    wants_json = scope["path"].startswith("/api/") or any(
        k == b"accept" and b"application/json" in v for k, v in scope["headers"])
    body = json.dumps({"detail": text}).encode() if wants_json else text.encode()
    kind = b"application/json" if wants_json else b"text/plain; charset=utf-8"
    await send({"type": "http.response.start", "status": 422,
                "headers": [(b"content-type", kind), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})
