"""Benchmark `server`: next-task and submit under 50 concurrent annotators, real Postgres, loopback HTTP.

A Postgres database (REDLINE_BENCH_PG_URL, default postgresql://postgres@127.0.0.1:5432/redline_bench)
holds one project (N = 3) with 100,000 items whose responses are about 300 tokens. The real app runs
under uvicorn in a subprocess; an asyncio httpx client plays 50 logged-in annotators, each looping:

  POST /annotate/{project}/next        ("next": leases an item, SKIP LOCKED)  -> 303 to the task page
  GET  /annotate/task/{lease}          (the editor page; the client reads the original from it)
  POST /annotate/task/{lease}/submit   ("submit": labels recomputed server-side, one transaction)

Submitted texts are minimal edits (two words changed). After a warm-up, figures cover a fixed window.
The seeded database is kept between runs (only annotations are reset) so reruns start in seconds.
Context figures: `healthz_req_per_s` (the bare framework at the same concurrency, measured right after), CPU
per annotation cycle of server and client, and the load average, since the box may be shared.
"""

from __future__ import annotations

import asyncio
import html
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import httpx
import psycopg
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app import migrate
from app.models import utcnow
from app.security import hash_password, new_token, token_digest
from bench.common import write_results

PG_URL = os.environ.get("REDLINE_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/redline_bench")
ITEMS = int(os.environ.get("REDLINE_BENCH_ITEMS", "100000"))
ANNOTATORS = int(os.environ.get("REDLINE_BENCH_ANNOTATORS", "50"))
WEB_WORKERS = int(os.environ.get("REDLINE_BENCH_WEB_WORKERS", "2"))
WARMUP_S = float(os.environ.get("REDLINE_BENCH_WARMUP_S", "5"))
WINDOW_S = float(os.environ.get("REDLINE_BENCH_WINDOW_S", "30"))
N = 3
TOKENIZER = os.environ.get("REDLINE_DEFAULT_MODEL", "var/models/SmolLM2-135M-Instruct")
WORDS = (
    "the model answer explains how light scatters in air because shorter wavelengths bend more while longer "
    "ones pass through so daylight looks blue and sunsets look red when the path through the atmosphere is "
    "long many people think oceans reflect the sky but the effect is mostly scattering by molecules small "
    "particles dust and water droplets also matter clouds look white since larger drops scatter all colours"
).split()
ORIGINAL_RE = re.compile(r'<template id="original-text">(.*?)</template>', re.S)
CSRF_RE = re.compile(r'<meta name="csrf-token" content="([^"]*)"')


def _urls() -> tuple[str, str]:
    url = make_url(PG_URL).set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False), url.set(database="postgres").render_as_string(False)


def response_text(index: int) -> str:
    """About 300 SmolLM2 tokens of English-like text, unique per item."""
    rng = random.Random(index)
    words = [rng.choice(WORDS) for _ in range(265)]
    return f"Answer {index}: " + " ".join(words).capitalize() + "."


def _ensure_database(url: str, admin_url: str) -> None:
    name = make_url(url).database
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if not conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}):
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    migrate.upgrade(url)


def _seed(url: str) -> int:
    """Project, annotators and items (kept between runs); annotations and sessions reset. Returns project id."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE edits, leases, reviews, comments, web_sessions, audit_events CASCADE"))
        project_id = conn.scalar(text("SELECT id FROM projects WHERE name = 'bench'"))
        if project_id is None:
            project_id = conn.scalar(text(
                "INSERT INTO projects (name, description, guidelines_md, tokenizer, annotations_per_item, "
                "minimality_budget, lease_seconds, created_at, archived) VALUES ('bench', '', 'Fix it.', :t, :n, "
                "0.35, 1800, now(), false) RETURNING id"), {"t": TOKENIZER, "n": N})
        conn.execute(text("UPDATE projects SET tokenizer = :t WHERE id = :p"), {"t": TOKENIZER, "p": project_id})
        conn.execute(text("UPDATE items SET completed_count = 0, status = 'open' WHERE project_id = :p"),
                     {"p": project_id})
        have = conn.scalar(text("SELECT count(*) FROM items WHERE project_id = :p"), {"p": project_id})
    engine.dispose()
    if have < ITEMS:
        _copy_items(url, project_id, have)
    return project_id


def _copy_items(url: str, project_id: int, start: int) -> None:
    import hashlib
    import json

    print(f"seeding items {start}..{ITEMS} (kept for later runs)", flush=True)
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        with cur.copy("COPY items (project_id, prompt, original, source, content_hash, status, completed_count, "
                      "created_at) FROM STDIN") as copy:
            for index in range(start, ITEMS):
                prompt = f"Question {index}: why is the sky blue?"
                original = response_text(index)
                digest = hashlib.sha256(f"{prompt}\x00{original}".encode()).hexdigest()
                copy.write_row((project_id, prompt, original, json.dumps({"bench": index}), digest, "open", 0,
                                utcnow()))
        conn.execute("ANALYZE items")


def _sessions(url: str, project_id: int) -> list[tuple[str, str]]:
    """Annotator accounts (members of the project) with a login session each: (cookie, csrf) pairs."""
    engine = create_engine(url)
    password_hash = hash_password(new_token())
    pairs = []
    with engine.begin() as conn:
        for i in range(ANNOTATORS):
            name = f"bench{i:03d}"
            user_id = conn.scalar(text("SELECT id FROM users WHERE username = :u"), {"u": name})
            if user_id is None:
                user_id = conn.scalar(text(
                    "INSERT INTO users (username, display_name, role, password_hash, is_active, created_at) "
                    "VALUES (:u, '', 'annotator', :h, true, now()) RETURNING id"), {"u": name, "h": password_hash})
                conn.execute(text("INSERT INTO project_members (project_id, user_id, added_at) VALUES (:p, :u, now())"),
                             {"p": project_id, "u": user_id})
            cookie, csrf = new_token(), new_token()
            conn.execute(text(
                "INSERT INTO web_sessions (token_hash, user_id, csrf_token, created_at, expires_at, user_agent) "
                "VALUES (:h, :u, :c, now(), :e, 'bench')"),
                {"h": token_digest(cookie), "u": user_id, "c": csrf, "e": utcnow() + timedelta(hours=2)})
            pairs.append((cookie, csrf))
    engine.dispose()
    return pairs


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_server(url: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": url, "REDLINE_DEFAULT_MODEL": TOKENIZER, "TOKENIZERS_PARALLELISM": "false"}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1", "--port",
         str(port), "--workers", str(WEB_WORKERS), "--no-access-log", "--log-level", "warning"],
        env=env, start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
    os.killpg(server.pid, signal.SIGTERM)
    raise RuntimeError("the server did not start")


def minimal_edit(original: str, rng: random.Random) -> str:
    words = original.split(" ")
    for _ in range(2):
        position = rng.randrange(2, len(words))
        words[position] = rng.choice(WORDS)
    return " ".join(words)


class Recorder:
    def __init__(self, start: float) -> None:
        self.measure_from = start + WARMUP_S
        self.measure_to = self.measure_from + WINDOW_S
        self.samples: dict[str, list[float]] = {"next": [], "page": [], "submit": []}
        self.errors = 0

    def add(self, kind: str, began: float, ended: float) -> None:
        if self.measure_from <= began and ended <= self.measure_to:
            self.samples[kind].append((ended - began) * 1000)


async def _timed(recorder: Recorder, kind: str, request) -> httpx.Response:
    began = time.perf_counter()
    response = await request
    recorder.add(kind, began, time.perf_counter())
    return response


async def annotator(base: str, project_id: int, cookie: str, csrf: str, recorder: Recorder, seed: int) -> None:
    rng = random.Random(seed)
    headers = {"X-CSRF-Token": csrf}
    async with httpx.AsyncClient(base_url=base, cookies={"redline_session": cookie}, timeout=30) as client:
        while time.perf_counter() < recorder.measure_to:
            nxt = await _timed(recorder, "next", client.post(f"/annotate/{project_id}/next", headers=headers))
            location = nxt.headers.get("location", "")
            if nxt.status_code != 303 or "/annotate/task/" not in location:
                recorder.errors += 1
                continue
            page = await _timed(recorder, "page", client.get(location))
            original = html.unescape(ORIGINAL_RE.search(page.text).group(1))
            form = {"text": minimal_edit(original, rng), "outcome": "edited", "active_ms": "5000",
                    "time_to_first_key_ms": "800", "keystrokes": "12", "pastes": "0"}
            done = await _timed(recorder, "submit", client.post(f"{location}/submit", data=form, headers=headers))
            if done.status_code != 303:
                recorder.errors += 1


async def _floor_req_per_s(base: str, seconds: float = 5.0) -> float:
    """Requests per second of the bare framework (GET /healthz: no auth, no database) at the same
    concurrency on the same box: the ceiling any real route is measured against."""
    stop = time.perf_counter() + seconds
    done = 0

    async def hammer() -> None:
        nonlocal done
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            while time.perf_counter() < stop:
                await client.get("/healthz")
                done += 1

    await asyncio.gather(*(hammer() for _ in range(ANNOTATORS)))
    return done / seconds


def _process_tree_cpu_s(root: int) -> float:
    """User + system CPU seconds of `root` and its direct children (the uvicorn workers), from /proc."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we looked
        pid, ppid = int(stat.parent.name), int(fields[1])
        if root in (pid, ppid):
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def _cpu_during_window(recorder: Recorder, server_pid: int) -> tuple[float, float]:
    """(server CPU s, load-generator CPU s) spent inside the measurement window."""
    await asyncio.sleep(max(0.0, recorder.measure_from - time.perf_counter()))
    server0, client0 = _process_tree_cpu_s(server_pid), time.process_time()
    await asyncio.sleep(max(0.0, recorder.measure_to - time.perf_counter()))
    return _process_tree_cpu_s(server_pid) - server0, time.process_time() - client0


def _percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else float("nan")


async def _drive(
    base: str, project_id: int, sessions: list[tuple[str, str]], server_pid: int
) -> tuple[Recorder, tuple[float, float]]:
    recorder = Recorder(time.perf_counter())
    cpu = asyncio.create_task(_cpu_during_window(recorder, server_pid))
    await asyncio.gather(*(annotator(base, project_id, c, t, recorder, i) for i, (c, t) in enumerate(sessions)))
    return recorder, await cpu


def _check_invariants(url: str, project_id: int) -> tuple[int, int]:
    """Items over N, and (item, annotator) pairs annotated twice: both must be 0."""
    engine = create_engine(url)
    with engine.connect() as conn:
        over = conn.scalar(text(
            "SELECT count(*) FROM (SELECT item_id FROM edits GROUP BY item_id HAVING count(*) > :n) t"), {"n": N})
        twice = conn.scalar(text(
            "SELECT count(*) FROM (SELECT 1 FROM edits GROUP BY item_id, annotator_id HAVING count(*) > 1) t"))
        drift = conn.scalar(text(
            "SELECT count(*) FROM items i WHERE i.project_id = :p AND i.completed_count <> "
            "(SELECT count(*) FROM edits e WHERE e.item_id = i.id)"), {"p": project_id})
    engine.dispose()
    return over + drift, twice


def main() -> None:
    url, admin_url = _urls()
    _ensure_database(url, admin_url)
    project_id = _seed(url)
    sessions = _sessions(url, project_id)
    port = _free_port()
    server = _start_server(url, port)
    try:
        base = f"http://127.0.0.1:{port}"
        recorder, (server_cpu, client_cpu) = asyncio.run(_drive(base, project_id, sessions, server.pid))
        floor = asyncio.run(_floor_req_per_s(base))  # afterwards, on the warmed-up server
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    wrong_counts, duplicates = _check_invariants(url, project_id)
    submits, nexts, pages = recorder.samples["submit"], recorder.samples["next"], recorder.samples["page"]
    write_results(
        "server",
        {
            "submits_per_s": len(submits) / WINDOW_S,
            "next_p50_ms": _percentile(nexts, 50), "next_p99_ms": _percentile(nexts, 99),
            "submit_p50_ms": _percentile(submits, 50), "submit_p99_ms": _percentile(submits, 99),
            "page_p50_ms": _percentile(pages, 50), "page_p99_ms": _percentile(pages, 99),
            "errors": recorder.errors, "invariant_violations": wrong_counts + duplicates,
            # CPU per annotation cycle (next + page + submit): what the throughput is made of on a shared box.
            "server_cpu_ms_per_cycle": 1000 * server_cpu / max(1, len(submits)),
            "client_cpu_ms_per_cycle": 1000 * client_cpu / max(1, len(submits)),
            "healthz_req_per_s": floor,
            "load_avg_1m": os.getloadavg()[0],
        },
        notes={
            "setup": f"{ITEMS} items (~300 tokens), N={N}, {ANNOTATORS} annotators, {WEB_WORKERS} uvicorn "
                     f"workers, Postgres, loopback httpx; {WARMUP_S:.0f} s warm-up, {WINDOW_S:.0f} s window",
            "cpus": str(os.cpu_count()),
        },
    )


if __name__ == "__main__":
    main()
