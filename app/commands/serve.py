"""`redline serve`: the web server."""

from __future__ import annotations

import click
import uvicorn

from app.settings import get_settings


@click.command()
@click.option("--host", default=None, help="Default: REDLINE_HOST.")
@click.option("--port", type=int, default=None, help="Default: REDLINE_PORT.")
@click.option("--workers", type=int, default=None, help="Default: REDLINE_WEB_WORKERS.")
def serve(host: str | None, port: int | None, workers: int | None) -> None:
    """Serve the web application."""
    settings = get_settings()
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers or settings.web_workers,
        proxy_headers=True,
    )
