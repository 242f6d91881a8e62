"""Benchmark `admin`: the admin pages at a million edits over a million items, on Postgres.

Setup (not timed): a Postgres database (REDLINE_BENCH_ADMIN_PG_URL, default
postgresql://postgres@127.0.0.1:5432/redline_bench_admin), migrated and filled inside Postgres with
generate_series: 1,000,000 items whose prompts are unique ("… (case 123456)") and whose responses are a
few hundred real model-written responses reused round-robin, and one edit each (the `export`
benchmark's analysed pairs: real labels, diffs and stats; outcomes, annotators and review states vary).
The full-text index is built once after the load, as a restore would. The filled database is kept for
later runs (about 12 minutes to fill here); each run first clears what the last one added (dataset
versions, jobs, sessions, audit events). The app then runs under uvicorn
in a subprocess and is asked over HTTP by a logged-in admin, one request at a time:

- dashboard: `GET /admin/dashboard`;
- search: `GET /items?q=PHRASE` for phrases that pick one item, and with the edit filters
  (annotator, outcome, edit-rate range, review) on their own and combined with a phrase;
- history: `GET /items/{id}` for random items;
- freeze: a dataset version of all edits, as its job freezes it (`bench.common.timed_freeze`; rows/s).

Goal (issue #18): dashboard, search and history p95 under 300 ms. JSON keys: dashboard_p95_ms,
search_p95_ms, history_p95_ms, freeze_rows_per_s (and medians). Environment: REDLINE_BENCH_ADMIN_PG_URL,
REDLINE_BENCH_ADMIN_ITEMS (default 1000000), REDLINE_BENCH_ADMIN_REQUESTS (default 40 per page kind),
REDLINE_BENCH_ADMIN_FREEZE_ROWS (default 0: all edits), REDLINE_FREEZE_CONNECTIONS (the app's setting).
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import time
from datetime import timedelta

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.common import timed_freeze, write_results
from bench.export import PAIRS, START, _setup, analysed_pairs
from bench.server import _ensure_database, _free_port, _start_server, _stop_server

PG_URL = os.environ.get("REDLINE_BENCH_ADMIN_PG_URL", "postgresql://postgres@127.0.0.1:5432/redline_bench_admin")

ITEMS = int(os.environ.get("REDLINE_BENCH_ADMIN_ITEMS", "1000000"))
REQUESTS = int(os.environ.get("REDLINE_BENCH_ADMIN_REQUESTS", "40"))
FREEZE_ROWS = int(os.environ.get("REDLINE_BENCH_ADMIN_FREEZE_ROWS", "0"))  # 0: all edits
FILL_BATCH = 100_000
ANNOTATORS = 20

ITEMS_SQL = """
INSERT INTO items (id, project_id, prompt, original, source, content_hash, status, completed_count, created_at)
SELECT g, :project, p.prompt || ' (case ' || g || ')', p.original, '{}'::jsonb, md5('bench-' || g),
       CASE WHEN g % 7 = 0 THEN 'open' ELSE 'complete' END, CASE WHEN g % 7 = 0 THEN 0 ELSE 1 END,
       :start + g * interval '1 second'
FROM generate_series(CAST(:low AS bigint), CAST(:high AS bigint)) g JOIN bench_pairs p ON p.n = g % CAST(:pairs AS int)
"""
# Outcomes, annotators and review states vary with the id; leases are the edits' own.
EDITS_SQL = """
INSERT INTO edits (id, item_id, annotator_id, outcome, edited_text, skip_reason, char_diff, token_labels,
                   tokenizer_hash, algorithm, stats, edit_rate, not_minimal, keystrokes, pastes, review_status,
                   created_at, version, lease_id)
SELECT g, g, (SELECT min(id) FROM users) + g % 20,
       CASE WHEN g % 10 = 9 THEN 'no_change_needed' WHEN g % 31 = 0 THEN 'unfixable' ELSE 'edited' END,
       p.edited, '', p.char_diff, p.token_labels, p.tokenizer_hash, p.algorithm, p.stats, p.edit_rate, false,
       0, 0, CASE WHEN g % 3 = 0 THEN 'pending' WHEN g % 11 = 0 THEN 'rejected' ELSE 'accepted' END,
       :start + g * interval '1 second', 1, g
FROM generate_series(CAST(:low AS bigint), CAST(:high AS bigint)) g JOIN bench_pairs p ON p.n = g % CAST(:pairs AS int)
"""
LEASES_SQL = """
INSERT INTO leases (id, item_id, annotator_id, state, leased_at, expires_at)
SELECT g, g, (SELECT min(id) FROM users) + g % 20, 'submitted',
       :start + g * interval '1 second' - interval '90 seconds',
       :start + g * interval '1 second' + interval '30 minutes'
FROM generate_series(CAST(:low AS bigint), CAST(:high AS bigint)) g
"""
REVIEWS_SQL = """
INSERT INTO reviews (edit_id, reviewer_id, verdict, comment, created_at)
SELECT e.id, (SELECT id FROM users WHERE username = 'bench-admin'),
       CASE WHEN e.review_status = 'rejected' THEN 'reject' ELSE 'accept' END,
       CASE WHEN e.review_status = 'rejected' THEN 'changed the meaning' ELSE '' END,
       e.created_at + interval '1 hour'
FROM edits e WHERE e.id BETWEEN :low AND :high AND e.review_status <> 'pending'
"""


def fill(url: str, pairs: int, project_id: int) -> float:
    began = time.perf_counter()
    engine = create_engine(url)
    with engine.begin() as conn:  # built once after the load (a GIN index maintained row by row is slow)
        conn.execute(text("DROP INDEX ix_items_search"))
    for low in range(1, ITEMS + 1, FILL_BATCH):
        params = {"low": low, "high": min(ITEMS, low + FILL_BATCH - 1), "pairs": pairs, "project": project_id,
                  "start": START}
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL synchronous_commit = off"))
            for statement in (ITEMS_SQL, LEASES_SQL, EDITS_SQL, REVIEWS_SQL):
                conn.execute(text(statement), params)
        print(f"  loaded {params['high']} items and edits", flush=True)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("SET maintenance_work_mem = '512MB'"))
        conn.execute(text("CREATE INDEX ix_items_search ON items USING gin "
                          "(to_tsvector('simple'::regconfig, prompt || ' ' || original))"))
        for table in ("items", "edits", "leases", "reviews"):
            conn.execute(text(f"VACUUM ANALYZE {table}"))
    engine.dispose()
    return time.perf_counter() - began


def _urls() -> tuple[str, str]:
    url = make_url(PG_URL).set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False), url.set(database="postgres").render_as_string(False)


def _seeded(url: str) -> bool:
    with create_engine(url).connect() as conn:
        users = conn.scalar(text("SELECT count(*) FROM users WHERE username = 'bench-admin'"))
        items = conn.scalar(text("SELECT count(*) FROM items"))
        edits = conn.scalar(text("SELECT count(*) FROM edits"))
    return users == 1 and items == edits == ITEMS


def seed(url: str) -> str:
    """The database filled for ITEMS (kept between runs; refilled when its size differs); returns a note."""
    from app.models import Base

    if _seeded(url):
        return f"{ITEMS} items, {ITEMS} edits, leases and reviews kept from an earlier run"
    print(f"seeding {ITEMS} items and edits (kept for later runs)", flush=True)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with create_engine(url).begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        conn.execute(text("DROP TABLE IF EXISTS bench_pairs"))
    pairs = analysed_pairs(PAIRS)
    with create_engine(url).begin() as conn:
        project_id = _setup(conn, pairs)
        conn.execute(text(
            "INSERT INTO users (username, display_name, role, password_hash, is_active, created_at) "
            "VALUES ('bench-admin', '', 'admin', 'x', true, now())"))
    seconds = fill(url, len(pairs), project_id)
    return f"{ITEMS} items, {ITEMS} edits, leases and reviews loaded and indexed in {seconds:.0f} s"


def reset(url: str) -> None:
    """What an earlier run left besides the seed: dataset versions, freeze jobs, sessions, audit events."""
    with create_engine(url).begin() as conn:
        conn.execute(text("TRUNCATE dataset_rows, dataset_versions, jobs, web_sessions, audit_events, "
                          "webhook_deliveries CASCADE"))


def _admin_session(url: str) -> tuple[str, str]:
    from app.models import utcnow
    from app.security import hash_password, new_token, token_digest

    cookie, csrf = new_token(), new_token()
    with create_engine(url).begin() as conn:
        user_id = conn.scalar(text("SELECT id FROM users WHERE username = 'bench-admin'"))
        conn.execute(text("UPDATE users SET password_hash = :h WHERE id = :u"),
                     {"h": hash_password(new_token()), "u": user_id})
        conn.execute(text(
            "INSERT INTO web_sessions (token_hash, user_id, csrf_token, created_at, expires_at, user_agent) "
            "VALUES (:h, :u, :c, now(), :e, 'bench')"),
            {"h": token_digest(cookie), "u": user_id, "c": csrf, "e": utcnow() + timedelta(hours=4)})
    return cookie, csrf


def _timed(client: httpx.Client, paths: list[str], needle: str | None = None) -> list[float]:
    times = []
    for path in paths:
        began = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - began) * 1000)
        if response.status_code != 200 or (needle and needle not in response.text):
            raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:300]}")
    return times


def _p95(times: list[float]) -> float:
    return statistics.quantiles(times, n=20)[-1]


def measure(url: str, figures: dict[str, float], notes: dict[str, str]) -> None:
    rng = random.Random(18)
    cookie, _ = _admin_session(url)
    port = _free_port()
    server = _start_server(url, port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", cookies={"redline_session": cookie},
                          headers={"Accept": "text/html"}, timeout=60) as client:
            _timed(client, ["/admin/dashboard", "/items", "/items/1"])  # warm the server's caches once
            dashboard = _timed(client, ["/admin/dashboard"] * REQUESTS, "Queue health")
            cases = [rng.randrange(1, ITEMS + 1) for _ in range(REQUESTS)]
            phrase = [f"/items?q=case+{n})" for n in cases[: REQUESTS // 2]]
            filters = [
                f"/items?annotator=bench-annotator-{n % 20 + 1}&outcome=edited&min_rate=0.01&max_rate=0.2"
                for n in cases[REQUESTS // 2: 3 * REQUESTS // 4]
            ] + [f"/items?review=reject&status=complete&before={n}" for n in cases[3 * REQUESTS // 4:]]
            search = _timed(client, phrase, "case ") + _timed(client, filters)
            history = _timed(client, [f"/items/{n}" for n in cases], "History")
    finally:
        _stop_server(server)
    for key, times in (("dashboard", dashboard), ("search", search), ("history", history)):
        figures[f"{key}_p95_ms"] = _p95(times)
        figures[f"{key}_median_ms"] = statistics.median(times)
    notes["requests"] = (f"{len(dashboard)} dashboard, {len(search)} search ({len(phrase)} phrase, "
                         f"{len(filters)} filters), {len(history)} history; one at a time, keep-alive")


def freeze(url: str) -> tuple[int, float, str]:
    # Edit g was created at START + g seconds: the first FREEZE_ROWS edits are those created before that.
    until = START + timedelta(seconds=FREEZE_ROWS + 1) if FREEZE_ROWS else None
    _, rows, seconds, how = timed_freeze(url, {
        "outcomes": ["edited", "no_change_needed", "unfixable"], "review_statuses": ["accepted", "pending", "rejected"],
        "created_before": until}, "all edits")
    return rows, seconds, how


def main() -> None:
    from app.settings import get_settings

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit(143)))
    os.environ.setdefault("REDLINE_PSEUDONYM_SALT", "bench-admin")  # never the deployment's secret
    get_settings.cache_clear()
    load_before = os.getloadavg()[0]
    figures: dict[str, float] = {}
    notes: dict[str, str] = {}
    url, admin_url = _urls()
    _ensure_database(url, admin_url)
    notes["setup"] = seed(url)
    reset(url)
    measure(url, figures, notes)
    rows, freeze_s, how = freeze(url)
    figures["freeze_rows_per_s"] = rows / freeze_s
    notes["freeze"] = f"{rows} rows in {freeze_s:.1f} s ({how})"
    notes["machine"] = (f"{os.cpu_count()} cpus shared with other work; Postgres on the same host; 1-min load "
                        f"average {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    write_results("admin", figures, notes)


if __name__ == "__main__":
    main()
