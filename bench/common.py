"""Shared plumbing of the benchmarks: the results table and the flat JSON file."""

from __future__ import annotations

import json
import os
import platform
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BENCH_DIR = Path(os.environ.get("REDLINE_BENCH_DIR", "var/bench"))


def write_results(name: str, figures: dict[str, float], notes: dict[str, str] | None = None) -> Path:
    """Print a table of `figures` and write them as flat JSON (name -> number)."""
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    path = BENCH_DIR / f"{name}.json"
    path.write_text(json.dumps({k: round(float(v), 4) for k, v in figures.items()}, indent=2) + "\n")
    width = max(len(k) for k in figures)
    print(f"\n== bench {name} ({platform.processor() or platform.machine()}, {os.cpu_count()} cpus)")
    for key, value in figures.items():
        print(f"  {key:<{width}}  {value:>12.4g}")
    for key, value in (notes or {}).items():
        print(f"  # {key}: {value}")
    print(f"  -> {path}")
    return path


def timed_freeze(url: str, flt_fields: dict, name: str) -> tuple[int, int, float, str]:
    """Freeze a dataset version as its job does (app.services.freeze.freeze_requested, on the settings'
    REDLINE_FREEZE_CONNECTIONS connections); returns (version id, rows, seconds, how)."""
    from app.db import engine_for, session_scope
    from app.models import DatasetVersion
    from app.services import freeze
    from app.services.datasets import DatasetFilter
    from app.settings import get_settings

    os.environ["DATABASE_URL"] = url  # the job's connections come from the settings, as in the worker
    get_settings.cache_clear()
    engine = engine_for(url)
    with session_scope(engine) as session:
        version_id = freeze.request_version(session, DatasetFilter(**flt_fields), name, None).id
    began = time.perf_counter()
    freeze.freeze_requested(version_id)
    seconds = time.perf_counter() - began
    with session_scope(engine) as session:
        rows = session.get(DatasetVersion, version_id).row_count
    return version_id, rows, seconds, f"freeze job's work on {get_settings().freeze_connections} connections"


@contextmanager
def scratch_database(admin_url: str, prefix: str) -> Iterator[str]:
    """A fresh, migrated Postgres database for one benchmark run (its SQLAlchemy URL), dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from app import migrate
    from app.db import engine_for

    base = make_url(admin_url).set(drivername="postgresql+psycopg")
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = base.set(database=name).render_as_string(hide_password=False)
    try:
        migrate.upgrade(url)
        yield url
    finally:
        engine_for.cache_clear()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
