"""Jinja2 rendering: autoescaped templates, safe markdown, and the per-request context every page needs."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from pathlib import Path

import bleach
from fastapi import Request
from fastapi.templating import Jinja2Templates
from jinja2 import select_autoescape
from markdown_it import MarkdownIt
from markupsafe import Markup
from starlette.responses import Response

from app.security import PRE_CSRF_COOKIE

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
templates.env.autoescape = select_autoescape(default=True, default_for_string=True)

# Raw HTML in markdown is disabled at the parser; bleach is the second wall (tags, attributes, schemes).
_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
_ALLOWED_TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "code", "pre", "blockquote",
    "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td",
}


def render_markdown(text: str | None) -> Markup:
    return _render_markdown(text or "")


@lru_cache(maxsize=256)
def _render_markdown(text: str) -> Markup:
    """Cached: the same guidelines appear on every editor page, and sanitising is the slow part."""
    html = _markdown.render(text)
    clean = bleach.clean(
        html,
        tags=_ALLOWED_TAGS,
        attributes={"a": ["href", "title"]},
        protocols={"http", "https", "mailto"},
        strip=True,
    )
    return Markup(clean)


def format_datetime(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "—"


def format_ms(value: float | int | None) -> str:
    if value is None:
        return "—"
    seconds = value / 1000
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


templates.env.filters["markdown"] = render_markdown
templates.env.filters["dt"] = format_datetime
templates.env.filters["ms"] = format_ms


def render(request: Request, name: str, *, status_code: int = 200, headers: dict | None = None, **context) -> Response:
    """Render `name` with the signed-in user and the CSRF token in the context."""
    auth = getattr(request.state, "auth", None)
    base = {
        "user": auth.user if auth else None,
        "csrf_token": auth.csrf_token if auth else request.cookies.get(PRE_CSRF_COOKIE, ""),
    }
    return templates.TemplateResponse(
        request, name, {**base, **context}, status_code=status_code, headers=headers
    )


def is_htmx(request: Request) -> bool:
    """The request came from htmx (it swaps the answer into the page), not from a page load or a client."""
    return request.headers.get("hx-request") == "true"
