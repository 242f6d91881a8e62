"""The JSON API under /api/v1, documented by its OpenAPI schema (/openapi.json, /docs; login or token).

Every route authenticates with a bearer API token (or a browser session) and checks a scope that the
caller's role allows; see app/services/api_tokens.py.
"""

from __future__ import annotations

from fastapi import APIRouter

from app.api import datasets, editors, edits, items, projects, webhooks

router = APIRouter(prefix="/api/v1")
for module in (projects, items, edits, datasets, webhooks, editors):
    router.include_router(module.router)
