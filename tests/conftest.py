"""Shared fixtures: real databases (a fresh SQLite file, a fresh Postgres database per test run)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from app import migrate
from app.db import engine_for
from app.models import Base
from app.settings import get_settings
from bench.common import scratch_database

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "var" / "models" / "SmolLM2-135M-Instruct"
PG_URL = os.environ.get("REDLINE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A fresh, migrated Postgres database for this test run (this xdist worker), dropped afterwards."""
    with scratch_database(PG_URL, "redline_test") as url:
        yield url


def truncate_all(engine: Engine) -> None:
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture
def pg_url(pg_database_url: str) -> Iterator[str]:
    """The run's Postgres database, emptied after each test."""
    yield pg_database_url
    truncate_all(engine_for(pg_database_url))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'redline.db'}"
    migrate.upgrade(url)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """Runs a test once on SQLite and once on the real Postgres."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def settings_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str):
    """App settings pointing at a temporary data directory and the test database."""
    monkeypatch.setenv("REDLINE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("REDLINE_DEFAULT_MODEL", str(DEFAULT_MODEL))
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def default_tokenizer_path() -> Path:
    if not (DEFAULT_MODEL / "tokenizer.json").is_file():
        pytest.fail(f"{DEFAULT_MODEL} is missing: run `make model` (make test does it)")
    return DEFAULT_MODEL


# --- annotation app (accounts, clients) -----------------------------------------------------------

TEST_PASSWORD = "correct horse battery"


@pytest.fixture
def make_user(settings_env):
    """Create a user directly in the test database: make_user("ann", "annotator") -> User."""
    from app.db import session_scope
    from app.services.users import create_user

    def make(username: str, role: str = "annotator", password: str = TEST_PASSWORD):
        with session_scope() as session:
            return create_user(session, username, password, role)

    return make


@pytest.fixture
def web_client(settings_env):
    """An in-process HTTP client for the whole app (middleware included); no login yet."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(), base_url="http://testserver") as client:
        yield client


def _login_through_form(client, username: str, password: str = TEST_PASSWORD) -> str:
    import re as _re

    page = client.get("/login")
    token = _re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    response = client.post(
        "/login", data={"username": username, "password": password, "csrf_token": token},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    page = client.get("/account")
    return _re.search(r'<meta name="csrf-token" content="([^"]*)"', page.text).group(1)


@pytest.fixture
def login_as():
    """login_as(client, username) logs in through the real form and returns the session's CSRF token."""
    return _login_through_form


# --- jobs (worker and dashboard) -------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory, default_tokenizer_path: Path) -> Path:
    """A randomly initialised 2-layer Llama (hidden 32) with the real SmolLM2 tokenizer: trains in seconds.
    Seeded, so every run has the same weights (and a test that generates with it, the same text)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-model")
    tokenizer = AutoTokenizer.from_pretrained(default_tokenizer_path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def make_project(settings_env, default_tokenizer_path):
    """make_project(name, n=1, members=[users], **settings) -> Project, created through the service."""
    from app.db import session_scope
    from app.services.projects import ProjectSettings, create_project, set_members

    def make(name: str = "Test project", n: int = 1, members=(), **fields):
        with session_scope() as session:
            project = create_project(
                session,
                ProjectSettings(name=name, tokenizer=str(default_tokenizer_path), annotations_per_item=n, **fields),
                None,
            )
            set_members(session, project, {m.id for m in members}, None)
            return project

    return make


@pytest.fixture
def add_items(settings_env):
    """add_items(project, [(prompt, response), ...]) -> list of item ids, through the real importer."""
    from sqlalchemy import select

    from app.db import session_scope
    from app.models import Item
    from app.services.importer import import_records

    def add(project, pairs):
        with session_scope() as session:
            records = [{"prompt": p, "response": r} for p, r in pairs]
            batch = import_records(session, project, records, filename="test.jsonl").batch_id
            return list(session.scalars(select(Item.id).where(Item.import_batch_id == batch).order_by(Item.id)))

    return add


@pytest.fixture
def live_server(settings_env):
    """The real app served by uvicorn on a free loopback port, in a background thread."""
    import socket
    import threading
    import time

    import uvicorn

    from app.main import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            pytest.fail("the test server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def chromium():
    """Debian's Chromium driven by Playwright (never `playwright install`)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


@pytest.fixture
def user_password() -> str:
    """The password `make_user` gives every account."""
    return TEST_PASSWORD


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state, as a training process has one run; in a test process
    each test that builds an Accelerator (or a TRL trainer) starts from a clean one."""
    yield
    import sys

    if "accelerate.state" in sys.modules:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture
def worker_process_env(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Environment shared by this test process and the `redline serve` / `redline worker` processes it
    starts: the test database, a private data directory, and worker timings short enough for tests."""
    env = {
        "DATABASE_URL": pg_url,
        "REDLINE_DATA_DIR": str(tmp_path / "data"),
        "REDLINE_WORKER_POLL_S": "0.2",
        "REDLINE_WORKER_HEARTBEAT_S": "0.5",
        "REDLINE_WORKER_CANCEL_GRACE_S": "5",
        "TOKENIZERS_PARALLELISM": "false",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield {**os.environ, **env}
    get_settings.cache_clear()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where browser tests save their screenshots: the README's docs/screenshots/ when
    REDLINE_SCREENSHOTS=1 (to refresh them), else a temporary folder so a test run leaves the tree clean."""
    folder = ROOT / "docs" / "screenshots" if os.environ.get("REDLINE_SCREENSHOTS") == "1" else tmp_path / "shots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# --- a real OpenAI-compatible model server (model editors) ------------------------------------------


@pytest.fixture(scope="session")
def llm_server(tmp_path_factory, default_tokenizer_path: Path) -> Iterator[dict]:
    """`transformers serve` on the default SmolLM2 folder, on a free loopback port, for the whole run:
    {"base_url": ..., "model": ..., "root": ...}. Tests that use it are marked `llm`."""
    from bench._llm import ServerFailed, transformers_serve

    try:
        with transformers_serve(default_tokenizer_path, tmp_path_factory.mktemp("llm") / "serve.log") as server:
            yield {"base_url": server.base_url, "model": server.model, "root": server.root}
    except ServerFailed as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real one-host Slurm cluster (munged, slurmctld, two slurmd nodes) for this test run; SLURM_CONF
    points this process and its children (workers, sbatch) at it."""
    from slurm_cluster import SlurmCluster, missing_binaries

    missing = missing_binaries()
    if missing:
        pytest.skip(f"Slurm is not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", str(cluster.conf))
        try:
            yield cluster
        finally:
            cluster.stop()
