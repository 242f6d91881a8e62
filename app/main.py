"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio.to_thread
from fastapi import Depends, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import SQLAlchemyError

from app import api, driver
from app.api.auth import principal
from app.db import get_engine, is_postgres, session_scope
from app.deps import install_error_handlers
from app.driver import DriverDatabase, SessionDatabase
from app.heap import freeze_startup_heap
from app.routes import (
    admin_editors,
    admin_projects,
    admin_users,
    annotate,
    auth,
    dashboard,
    items,
    my_work,
    review,
    settings_tokens,
)
from app.routes import datasets as dataset_routes
from app.routes import jobs as job_routes
from app.security import Login, SecurityMiddleware
from app.services import annotation
from app.session_cache import SessionCache
from app.settings import get_settings
from app.text_input import NulGuard

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger(__name__)
STATIC_DIR = ROOT / "static"
TEMPLATES_DIR = ROOT / "templates"


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Sync routes and dependencies run in anyio's thread pool: size it to the database pool.
    anyio.to_thread.current_default_thread_limiter().total_tokens = get_settings().web_threads
    await anyio.to_thread.run_sync(_preload_tokenizers)
    freeze_startup_heap()
    engine = get_engine()
    if not is_postgres(engine):
        app.state.database = SessionDatabase()
        yield  # no driver pool, no login cache: the hot routes use Sessions, every request checks its login
        return
    dsn = driver.conninfo(engine)
    async with contextlib.AsyncExitStack() as stack:
        pool = await driver.open_pool(dsn, get_settings().web_threads)
        stack.push_async_callback(pool.close)
        app.state.database = DriverDatabase(pool)
        if app.state.logins.capacity:
            stack.push_async_callback(_stop, asyncio.create_task(app.state.logins.keep_listening(dsn)))
        yield


async def _stop(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _preload_tokenizers() -> None:
    try:
        with session_scope() as session:
            annotation.preload_tokenizers(session)
    except SQLAlchemyError as exc:  # no database yet (or not migrated): the first submit loads on demand
        log.warning("tokenizers not preloaded: %s", exc)


def create_app() -> FastAPI:
    # The default /docs, /redoc and /openapi.json would be public: they are served below behind login.
    app = FastAPI(title="Redline", version="0.1.0", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=_lifespan)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.state.logins = SessionCache[Login](get_settings().session_cache_entries)
    app.state.database = None  # the hot routes' app.driver.Database, chosen by the lifespan
    app.add_middleware(NulGuard)  # inside the security middleware: after authentication and CSRF
    app.add_middleware(SecurityMiddleware, logins=app.state.logins)
    install_error_handlers(app)
    # Routes are matched in order: the annotator's (the busiest by far) first, then the rest; no two
    # routers share a path prefix, so the order changes nothing else.
    for router in (annotate.router, auth.router, admin_users.router, admin_editors.router, admin_projects.router,
                   review.router, dashboard.router, job_routes.router, api.router, dataset_routes.router,
                   items.router, my_work.router, settings_tokens.router):
        app.include_router(router)

    install_api_docs(app)

    @app.get("/favicon.ico", include_in_schema=False)  # pages link the SVG; this serves bare requests
    def favicon() -> FileResponse:
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def install_api_docs(app: FastAPI) -> None:
    """The OpenAPI schema and Swagger UI, for a logged-in user or an API-token holder; UI assets are local."""

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(principal)])
    def openapi_schema() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(principal)])
    def api_docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="Redline API",
            swagger_js_url="/static/vendor/swagger-ui-bundle.js",
            swagger_css_url="/static/vendor/swagger-ui.css",
            swagger_favicon_url="data:,",  # no third-party request for an icon
        )
