"""The FastAPI application factory."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app import api
from app.deps import install_auth_handlers
from app.routes import admin_projects, admin_users, annotate, auth, dashboard, review, settings_tokens
from app.routes import datasets as dataset_routes
from app.routes import jobs as job_routes
from app.security import SecurityMiddleware

ROOT = Path(__file__).resolve().parent.parent
STATIC_DIR = ROOT / "static"
TEMPLATES_DIR = ROOT / "templates"


def create_app() -> FastAPI:
    app = FastAPI(title="Redline", version="0.1.0")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(SecurityMiddleware)
    install_auth_handlers(app)
    for router in (auth.router, admin_users.router, admin_projects.router, annotate.router, review.router,
                   dashboard.router, job_routes.router, api.router, dataset_routes.router,
                   settings_tokens.router):
        app.include_router(router)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
