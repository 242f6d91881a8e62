"""Benchmark `server`: next-task and submit under 50 concurrent annotators, real Postgres, loopback HTTP.

A Postgres database (REDLINE_BENCH_PG_URL, default postgresql://postgres@127.0.0.1:5432/redline_bench)
holds one project (N = 3) with 100,000 items whose responses are about 300 tokens. The real app runs
under uvicorn in a subprocess; 50 logged-in annotators (one keep-alive connection each, bench/_http.py)
loop, as the browser does:

  POST /annotate/{project}/next         "next": leases an item (SKIP LOCKED) and, as the htmx "Next" button
                                        asks, answers with the editor page; the client edits its original
  POST /annotate/task/{lease}/submit    "submit": labels recomputed server-side, one transaction -> 303

Submitted texts are minimal edits (two words changed). Two phases, each a warm-up then a fixed window:
  paced      50 annotators together offer REDLINE_BENCH_RATE (default 210) cycles per second, each on a
             fixed schedule; latency counts from when a request was due, so a server that falls behind
             shows its backlog instead of slowing the clients down. -> submits_per_s, next_/submit_ p50/p99
             REDLINE_BENCH_LOWER_RATE (default 100; 0: skip) repeats it at a lower rate -> lower_rate_*
  saturated  closed loop, no think time: the most the box can do. -> max_submits_per_s, saturated_*
REDLINE_BENCH_BASELINE=<git revision> adds closed-loop rounds alternating between that revision (checked out
in a temporary worktree) and this checkout, each window from a freshly reset database -> current_vs_baseline
(median of the per-round ratios), baseline_/current_ max_submits_per_s and server_cpu_ms_per_cycle;
REDLINE_BENCH_BASELINE_ROUNDS (4) rounds. The baseline's migrations must be a prefix of this checkout's
(the database is migrated to this checkout's head).
Context: CPU per cycle of the server, of the Postgres backends and of the load generator (saturated
phase), `healthz_req_per_s` (the bare framework at the same concurrency), and the load average, since the
box may be shared. The seeded database is kept between runs (annotations are reset); the tables a cycle
writes are vacuumed before each phase, as autovacuum would (it is off on the development box).
"""

from __future__ import annotations

import asyncio
import html
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import psycopg
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app import migrate
from app.models import utcnow
from app.security import hash_password, new_token, token_digest
from bench._http import Connection
from bench.common import write_results

PG_URL = os.environ.get("REDLINE_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/redline_bench")
ITEMS = int(os.environ.get("REDLINE_BENCH_ITEMS", "100000"))
ANNOTATORS = int(os.environ.get("REDLINE_BENCH_ANNOTATORS", "50"))
WEB_WORKERS = int(os.environ.get("REDLINE_BENCH_WEB_WORKERS", "2"))
WARMUP_S = float(os.environ.get("REDLINE_BENCH_WARMUP_S", "5"))
WINDOW_S = float(os.environ.get("REDLINE_BENCH_WINDOW_S", "30"))
# Offered load of the paced phase, in annotation cycles (= submits) per second over all annotators: 5% over
# the goal of 200, so that the count of a window (whose edges cut cycles in flight) clears the goal itself
# and the latencies are those of a little more load than the goal asks for.
RATE = float(os.environ.get("REDLINE_BENCH_RATE", "210"))
# A second paced phase at a lower rate: the latency the server gives when it is not saturated.
LOWER_RATE = float(os.environ.get("REDLINE_BENCH_LOWER_RATE", "100"))
# A git revision to compare with, side by side: closed-loop rounds alternate between it and this checkout.
BASELINE = os.environ.get("REDLINE_BENCH_BASELINE", "")
BASELINE_ROUNDS = int(os.environ.get("REDLINE_BENCH_BASELINE_ROUNDS", "4"))
ROOT = Path(__file__).resolve().parent.parent
N = 3
TOKENIZER = os.environ.get("REDLINE_DEFAULT_MODEL", "var/models/SmolLM2-135M-Instruct")
WORDS = (
    "the model answer explains how light scatters in air because shorter wavelengths bend more while longer "
    "ones pass through so daylight looks blue and sunsets look red when the path through the atmosphere is "
    "long many people think oceans reflect the sky but the effect is mostly scattering by molecules small "
    "particles dust and water droplets also matter clouds look white since larger drops scatter all colours"
).split()
ORIGINAL_RE = re.compile(r'<template id="original-text">(.*?)</template>', re.S)
HTMX = {"HX-Request": "true"}


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
        conn.execute(text("UPDATE items SET completed_count = 0, status = 'open' WHERE project_id = :p "
                          "AND (completed_count <> 0 OR status <> 'open')"), {"p": project_id})
        have = conn.scalar(text("SELECT count(*) FROM items WHERE project_id = :p"), {"p": project_id})
    if have < ITEMS:
        _copy_items(url, project_id, have)
    engine.dispose()
    _vacuum(url)
    return project_id


def _vacuum(url: str) -> None:
    """VACUUM ANALYZE the tables a cycle writes. Every submit leaves dead row versions in items and leases
    (and their indexes), and autovacuum may be off (it is off on the development box) or late: without this,
    each phase and each rerun would measure a little more bloat than the one before."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("VACUUM ANALYZE items, leases, edits, web_sessions, webhook_deliveries"))
    engine.dispose()


def _copy_items(url: str, project_id: int, start: int) -> None:
    import hashlib
    import json

    print(f"seeding items {start}..{ITEMS} (kept for later runs)", flush=True)
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    columns = "project_id, prompt, original, source, content_hash, status, completed_count, created_at"
    with psycopg.connect(dsn) as conn, conn.cursor() as cur, cur.copy(f"COPY items ({columns}) FROM STDIN") as copy:
        for index in range(start, ITEMS):
            prompt = f"Question {index}: why is the sky blue?"
            original = response_text(index)
            digest = hashlib.sha256(f"{prompt}\x00{original}".encode()).hexdigest()
            copy.write_row((project_id, prompt, original, json.dumps({"bench": index}), digest, "open", 0, utcnow()))


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


def _start_server(url: str, port: int, code: Path = ROOT) -> subprocess.Popen:
    """The app of the checkout at `code` under uvicorn (`python -m` imports `app` from the working directory)."""
    env = {**os.environ, "DATABASE_URL": url, "REDLINE_DEFAULT_MODEL": TOKENIZER, "TOKENIZERS_PARALLELISM": "false"}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1", "--port",
         str(port), "--workers", str(WEB_WORKERS), "--no-access-log", "--log-level", "warning"],
        env=env, start_new_session=True, cwd=code,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
    _stop_server(server)
    raise RuntimeError("the server did not start")


def _stop_server(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


def minimal_edit(original: str, rng: random.Random) -> str:
    words = original.split(" ")
    for _ in range(2):
        position = rng.randrange(2, len(words))
        words[position] = rng.choice(WORDS)
    return " ".join(words)


class Recorder:
    """Latencies of the requests that end inside the measurement window."""

    def __init__(self, start: float) -> None:
        self.measure_from = start + WARMUP_S
        self.measure_to = self.measure_from + WINDOW_S
        self.samples: dict[str, list[float]] = {"next": [], "submit": []}
        self.errors = 0

    def add(self, kind: str, began: float, ended: float) -> None:
        # By end time: a paced cycle that fell behind schedule still counts, with all of its delay.
        if self.measure_from <= ended <= self.measure_to:
            self.samples[kind].append((ended - began) * 1000)


async def annotator(
    port: int, project_id: int, cookie: str, csrf: str, recorder: Recorder, seed: int, period: float, offset: float
) -> None:
    """One annotator's loop of next → editor page → submit.

    Paced (period > 0): cycle k is due at start + offset + k·period. The "next" latency counts from when the
    cycle was due, not from when it could be sent, so a server that falls behind shows it in the figures
    instead of silently slowing the clients down (coordinated omission). Closed loop (period 0): the next
    cycle starts as soon as the last one ends.
    """
    rng = random.Random(seed)
    conn = Connection("127.0.0.1", port, {"Cookie": f"redline_session={cookie}", "X-CSRF-Token": csrf})
    due = recorder.measure_from - WARMUP_S + offset
    clock = time.perf_counter
    try:
        while (now := clock()) < recorder.measure_to:
            if period:
                await asyncio.sleep(max(0.0, due - now))
            else:
                due = now
            # As the "Next item" button sends it (htmx): the editor page comes back in the same response.
            nxt = await conn.request("POST", f"/annotate/{project_id}/next", headers=HTMX)
            recorder.add("next", due, began := clock())
            task_url = nxt.headers.get("hx-push-url", "")
            if nxt.status != 200 or "/annotate/task/" not in task_url:
                recorder.errors += 1
                due += period
                continue
            original = html.unescape(ORIGINAL_RE.search(nxt.text).group(1))
            form = {"text": minimal_edit(original, rng), "outcome": "edited", "active_ms": "5000",
                    "time_to_first_key_ms": "800", "keystrokes": "12", "pastes": "0"}
            done = await conn.request("POST", f"{task_url}/submit", form=form)
            recorder.add("submit", began, clock())
            if done.status != 303:
                recorder.errors += 1
            due += period
    finally:
        await conn.close()


async def _floor_req_per_s(port: int, seconds: float = 5.0) -> float:
    """Requests per second of the bare framework (GET /healthz: no auth, no database) at the same
    concurrency on the same box: the ceiling any real route is measured against."""
    stop = time.perf_counter() + seconds
    done = 0

    async def hammer() -> None:
        nonlocal done
        conn = Connection("127.0.0.1", port)
        while time.perf_counter() < stop:
            await conn.request("GET", "/healthz")
            done += 1
        await conn.close()

    await asyncio.gather(*(hammer() for _ in range(ANNOTATORS)))
    return done / seconds


def _cpu_by_pid(wanted) -> dict[int, float]:
    """User + system CPU seconds of each process for which `wanted(pid, ppid, cmdline)` holds, from /proc."""
    found: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # the process ended while we looked
        pid = int(stat.parent.name)
        if wanted(pid, int(fields[1]), cmdline):
            found[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return found


def _cpu_counters(server_pid: int) -> dict[str, dict[int, float]]:
    """CPU seconds so far, per process, of the uvicorn processes, of the Postgres backends serving the bench
    database, and of this load generator."""
    database = make_url(PG_URL).database
    return {
        "server": _cpu_by_pid(lambda pid, ppid, _cmd: server_pid in (pid, ppid)),
        "postgres": _cpu_by_pid(lambda _pid, _ppid, cmd: cmd.startswith("postgres:") and f" {database} " in cmd),
        "client": {os.getpid(): time.process_time()},
    }


async def _cpu_during_window(recorder: Recorder, server_pid: int) -> dict[str, float]:
    """CPU seconds spent inside the window; a process that started meanwhile counts from zero (one that
    ended meanwhile is lost, so the pools are sized to keep their connections)."""
    # Off the event loop: walking /proc takes tens of milliseconds, and the annotators' requests would wait
    # for it (their latencies at the window's edges measured the load generator, not the server).
    await asyncio.sleep(max(0.0, recorder.measure_from - time.perf_counter()))
    before = await asyncio.to_thread(_cpu_counters, server_pid)
    await asyncio.sleep(max(0.0, recorder.measure_to - time.perf_counter()))
    after = await asyncio.to_thread(_cpu_counters, server_pid)
    return {who: sum(cpu - before[who].get(pid, 0.0) for pid, cpu in after[who].items()) for who in after}


def _percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else float("nan")


async def _drive(
    port: int, project_id: int, sessions: list[tuple[str, str]], server_pid: int, rate: float
) -> tuple[Recorder, dict[str, float]]:
    """All annotators for one phase: paced at `rate` submits/s in total, or closed loop when rate is 0."""
    recorder = Recorder(time.perf_counter())
    period = len(sessions) / rate if rate else 0.0
    cpu = asyncio.create_task(_cpu_during_window(recorder, server_pid))
    await asyncio.gather(*(
        annotator(port, project_id, cookie, csrf, recorder, seed=i, period=period, offset=i * period / len(sessions))
        for i, (cookie, csrf) in enumerate(sessions)
    ))
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


def _phase_figures(recorder: Recorder, prefix: str = "") -> dict[str, float]:
    figures = {f"{prefix}submits_per_s": len(recorder.samples["submit"]) / WINDOW_S}
    for kind in ("next", "submit"):
        figures[f"{prefix}{kind}_p50_ms"] = _percentile(recorder.samples[kind], 50)
        figures[f"{prefix}{kind}_p99_ms"] = _percentile(recorder.samples[kind], 99)
    figures[f"{prefix}errors"] = recorder.errors
    return figures


@contextmanager
def _checkout(revision: str) -> Iterator[Path]:
    """The repository at `revision` in a temporary git worktree, sharing this checkout's var/ (the model)."""
    where = Path(tempfile.mkdtemp(prefix="redline-baseline-")) / "tree"
    git = ["git", "-C", str(ROOT)]
    try:
        added = subprocess.run([*git, "worktree", "add", "--detach", str(where), revision], capture_output=True,
                               text=True)
        if added.returncode:
            raise SystemExit(f"REDLINE_BENCH_BASELINE={revision}: git worktree add failed: {added.stderr.strip()}")
        theirs, ours = ([p.name for p in sorted((tree / "migrations" / "versions").glob("*.py"))]
                        for tree in (where, ROOT))
        if ours[:len(theirs)] != theirs:  # the database is at our head: it must have passed through theirs
            raise SystemExit(f"baseline {revision} has migrations this checkout lacks: both sides share one database")
        (where / "var").symlink_to(ROOT / "var")
        yield where
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(where)], check=False, capture_output=True)
        shutil.rmtree(where.parent, ignore_errors=True)


def _closed_loop(url: str, code: Path) -> tuple[float, float]:
    """Submits per second and server CPU ms per cycle of one closed-loop window of the code at `code`,
    from a freshly reset database (every window starts from the same state)."""
    project_id = _seed(url)
    sessions = _sessions(url, project_id)
    port = _free_port()
    server = _start_server(url, port, code)
    try:
        recorder, cpu = asyncio.run(_drive(port, project_id, sessions, server.pid, 0.0))
    finally:
        _stop_server(server)
    cycles = len(recorder.samples["submit"])
    return cycles / WINDOW_S, 1000 * cpu["server"] / max(1, cycles)


def side_by_side(url: str, revision: str) -> dict[str, float]:
    """Closed-loop windows alternating between `revision` and this checkout, on one database: the box is
    shared and its speed drifts by tens of percent within minutes, so only ratios taken this way hold."""
    rounds: dict[str, list[tuple[float, float]]] = {"baseline": [], "current": []}
    with _checkout(revision) as baseline:
        for _ in range(BASELINE_ROUNDS):
            rounds["baseline"].append(_closed_loop(url, baseline))
            rounds["current"].append(_closed_loop(url, ROOT))
    ratios = [now[0] / before[0] for before, now in zip(rounds["baseline"], rounds["current"], strict=True)]
    figures = {"current_vs_baseline": statistics.median(ratios)}
    for who, runs in rounds.items():
        figures[f"{who}_max_submits_per_s"] = statistics.median(rate for rate, _ in runs)
        figures[f"{who}_server_cpu_ms_per_cycle"] = statistics.median(cpu for _, cpu in runs)
    return figures


def main() -> None:
    url, admin_url = _urls()
    _ensure_database(url, admin_url)
    project_id = _seed(url)
    sessions = _sessions(url, project_id)
    port = _free_port()
    server = _start_server(url, port)
    try:
        paced, _ = asyncio.run(_drive(port, project_id, sessions, server.pid, RATE))
        lower = None
        if LOWER_RATE:
            _vacuum(url)
            lower = asyncio.run(_drive(port, project_id, sessions, server.pid, LOWER_RATE))[0]
        _vacuum(url)
        saturated, cpu = asyncio.run(_drive(port, project_id, sessions, server.pid, 0.0))
        floor = asyncio.run(_floor_req_per_s(port))  # afterwards, on the warmed-up server
    finally:
        _stop_server(server)
    wrong_counts, duplicates = _check_invariants(url, project_id)
    compared = side_by_side(url, BASELINE) if BASELINE else {}
    cycles = max(1, len(saturated.samples["submit"]))
    write_results(
        "server",
        {
            **_phase_figures(paced),
            **(_phase_figures(lower, "lower_rate_") if lower else {}),
            "max_submits_per_s": len(saturated.samples["submit"]) / WINDOW_S,
            **{k: v for k, v in _phase_figures(saturated, "saturated_").items() if k != "saturated_submits_per_s"},
            "invariant_violations": wrong_counts + duplicates,
            # CPU per annotation cycle (next + submit) at saturation: what throughput is made of.
            **{f"{who}_cpu_ms_per_cycle": 1000 * seconds / cycles for who, seconds in cpu.items()},
            "healthz_req_per_s": floor,
            "load_avg_1m": os.getloadavg()[0],
            **compared,
        },
        notes={
            "setup": f"{ITEMS} items (~300 tokens), N={N}, {ANNOTATORS} annotators, {WEB_WORKERS} uvicorn "
                     f"workers, Postgres, loopback keep-alive HTTP; per phase {WARMUP_S:.0f} s warm-up, "
                     f"{WINDOW_S:.0f} s window",
            "phases": f"paced: {RATE:.0f} (lower_rate_*: {LOWER_RATE:.0f}) cycles/s offered in total (latency "
                      "counted from when each cycle was due); "
                      "saturated: closed loop, no think time (max_submits_per_s, saturated_*, CPU per cycle)",
            "cpus": str(os.cpu_count()),
            **({"baseline": f"{BASELINE}: {BASELINE_ROUNDS} closed-loop rounds each, alternating (medians)"}
               if BASELINE else {}),
        },
    )


if __name__ == "__main__":
    main()
