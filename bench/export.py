"""Benchmark `export`: stream a dataset version of 100k and 1M edits out of Postgres to JSONL and Parquet.

Setup (not timed as export): a fresh Postgres database (dropped afterwards) is filled by COPY with
realistic edits — a few hundred pairs of ~300-token model-written responses (app/demo) with word-level
edits, analysed by the real label engine, reused round-robin — then a dataset version is frozen as its job
freezes it (`bench.common.timed_freeze`). Each export then runs in a child process (`python -m bench.export
--child …`) that streams `stream_export` into a file; it reports rows/s and its own peak RSS (VmHWM).

Goals: ≥ 20,000 rows/s to JSONL (issue #5), ≥ 30,000 rows/s to Parquet at 1M rows (issue #18); peak memory
< 300 MB and flat from 100k to 1M rows.
Environment: REDLINE_TEST_PG_URL (admin connection, default postgresql://postgres@127.0.0.1:5432/test),
REDLINE_BENCH_EXPORT_SIZES (default "100000,1000000"), REDLINE_BENCH_DIR.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.common import timed_freeze, write_results

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("REDLINE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
SIZES = [int(s) for s in os.environ.get("REDLINE_BENCH_EXPORT_SIZES", "100000,1000000").split(",")]
PAIRS = 300
FILL_BATCH = 100_000
START = datetime(2026, 1, 1, tzinfo=UTC)


def _psycopg_url(url: str, database: str | None = None) -> str:
    parsed = make_url(url).set(drivername="postgresql+psycopg")
    if database:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


# --- realistic pairs ------------------------------------------------------------------------------

FILLERS = ["really", "actually", "in fact", "generally", "usually", "clearly", "also"]


def _perturb(words: list[str], rng: random.Random) -> list[str]:
    """A minimal edit: a few substitutions, deletions and insertions (~6% of the words)."""
    out = list(words)
    for _ in range(max(1, len(out) // 16)):
        pos = rng.randrange(len(out))
        choice = rng.random()
        if choice < 0.4:
            out[pos] = out[pos].upper() if rng.random() < 0.2 else out[rng.randrange(len(out))]
        elif choice < 0.7 and len(out) > 10:
            del out[pos]
        else:
            out.insert(pos, rng.choice(FILLERS))
    return out


def analysed_pairs(count: int) -> list[dict]:
    from labels import analyse_edit, load_tokenizer

    tokenizer = load_tokenizer(str(ROOT / "var" / "models" / "SmolLM2-135M-Instruct"))
    demo = [json.loads(line) for line in (ROOT / "app" / "demo" / "items.jsonl").read_text().splitlines()]
    pairs = []
    for n in range(count):
        rng = random.Random(n)
        first, second = demo[n % len(demo)], demo[(n * 7 + 3) % len(demo)]
        original = f"{first['response']}\n\n{second['response']}"
        edited = " ".join(_perturb(original.split(" "), rng))
        analysis = analyse_edit(original, edited, tokenizer)
        record = analysis.to_record()
        pairs.append(
            {
                "prompt": first["prompt"],
                "original": original,
                "edited": edited,
                "edit_rate": analysis.stats.edit_rate,
                "tokenizer_hash": analysis.labels.tokenizer_hash,
                "algorithm": analysis.labels.algorithm,
                **{key: json.dumps(value) for key, value in record.items()},
            }
        )
    return pairs


# --- bulk data ------------------------------------------------------------------------------------


def _setup(conn, pairs: list[dict]) -> int:
    """Accounts, the project, and the analysed pairs as a template table; returns the project id."""
    conn.execute(text(
        "INSERT INTO users (username, display_name, role, password_hash, is_active, created_at) "
        "SELECT 'bench-annotator-' || n, '', 'annotator', 'x', true, now() FROM generate_series(1, 20) n"
    ))
    project_id = conn.execute(text(
        "INSERT INTO projects (name, description, guidelines_md, tokenizer, annotations_per_item, "
        "minimality_budget, lease_seconds, created_at, archived) VALUES ('bench', '', '', :tok, 1, 0.35, 1800, "
        "now(), false) RETURNING id"
    ), {"tok": str(ROOT / "var" / "models" / "SmolLM2-135M-Instruct")}).scalar_one()
    conn.execute(text(
        "CREATE TABLE bench_pairs (n int PRIMARY KEY, prompt text, original text, edited text, char_diff jsonb, "
        "token_labels jsonb, stats jsonb, edit_rate float, tokenizer_hash text, algorithm text)"
    ))
    conn.execute(
        text(
            "INSERT INTO bench_pairs VALUES (:n, :prompt, :original, :edited, CAST(:char_diff AS jsonb), "
            "CAST(:token_labels AS jsonb), CAST(:stats AS jsonb), :edit_rate, :tokenizer_hash, :algorithm)"
        ),
        [{"n": n, **pair} for n, pair in enumerate(pairs)],
    )
    return project_id


ITEMS_SQL = """
INSERT INTO items (id, project_id, prompt, original, source, content_hash, status, completed_count, created_at)
SELECT g, :project, p.prompt, p.original, '{}'::jsonb, md5('bench-' || g), 'complete', 1,
       :start + g * interval '1 second'
FROM generate_series(CAST(:low AS bigint), CAST(:high AS bigint)) g JOIN bench_pairs p ON p.n = g % CAST(:pairs AS int)
"""
# Every tenth edit is "no change needed"; annotators take turns.
EDITS_SQL = """
INSERT INTO edits (id, item_id, annotator_id, outcome, edited_text, skip_reason, char_diff, token_labels,
                   tokenizer_hash, algorithm, stats, edit_rate, not_minimal, keystrokes, pastes, review_status,
                   created_at, version)
SELECT g, g, (SELECT min(id) FROM users) + g % 20,
       CASE WHEN g % 10 = 9 THEN 'no_change_needed' ELSE 'edited' END,
       p.edited, '', p.char_diff, p.token_labels, p.tokenizer_hash, p.algorithm, p.stats, p.edit_rate, false,
       0, 0, 'accepted', :start + g * interval '1 second', 1
FROM generate_series(CAST(:low AS bigint), CAST(:high AS bigint)) g JOIN bench_pairs p ON p.n = g % CAST(:pairs AS int)
"""


def fill(url: str, start: int, stop: int, pairs: int, project_id: int) -> float:
    """Items and edits with ids start+1..stop, generated inside Postgres; returns seconds taken."""
    began = time.perf_counter()
    engine = create_engine(url)
    for low in range(start + 1, stop + 1, FILL_BATCH):
        params = {"low": low, "high": min(stop, low + FILL_BATCH - 1), "pairs": pairs, "project": project_id,
                  "start": START}
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL synchronous_commit = off"))
            conn.execute(text(ITEMS_SQL), params)
            conn.execute(text(EDITS_SQL), params)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE items"))
        conn.execute(text("VACUUM ANALYZE edits"))
    engine.dispose()
    return time.perf_counter() - began


# --- measured steps -------------------------------------------------------------------------------


FILTER = {"outcomes": ["edited", "no_change_needed"]}  # every edit the fill makes


def freeze(url: str, name: str) -> tuple[int, int, float]:
    version_id, rows, seconds, _ = timed_freeze(url, FILTER, name)
    return version_id, rows, seconds


CEILING_ROWS = 100_000  # rows each stage-alone figure is measured on


def build_hash_rows_per_s(url: str) -> float:
    """Postgres building and hashing the first CEILING_ROWS rows' text with the freeze's own statement, on one
    connection, writing nothing: per core, the ceiling of any freeze that writes rows of this text (hash format 2
    hashes it)."""
    from sqlalchemy import func, select

    from app.services import freeze
    from app.services.datasets import DatasetFilter

    engine = create_engine(url)
    with engine.connect() as conn:
        low = conn.execute(text("SELECT min(id) FROM edits")).scalar_one()
        rows = freeze.row_texts(DatasetFilter(**FILTER), freeze.Range(low - 1, low - 1 + CEILING_ROWS),
                                freeze.Names.of_users(conn)).subquery()
        began = time.perf_counter()
        count, _ = conn.execute(select(func.count(), func.sum(func.length(freeze.row_digest(rows.c.data))))).one()
        seconds = time.perf_counter() - began
    engine.dispose()
    return count / seconds


def parquet_convert_rows_per_s(url: str, version_id: int) -> float:
    """The Parquet export's conversion of stored rows to Arrow (`export.pairs_table`) alone, on one thread, over
    the version's first CEILING_ROWS rows fetched beforehand a range at a time: per core, the ceiling of the
    Parquet export from stored JSON rows."""
    from app.db import session_scope
    from app.services.datasets import batched
    from app.services.export import PARQUET_FETCH_ROWS, pairs_table
    from app.services.freeze import stored_lines

    engine = create_engine(url)
    converting, done = 0.0, 0
    with session_scope(engine) as session:
        lines = islice(stored_lines(session, version_id, PARQUET_FETCH_ROWS), CEILING_ROWS)
        for batch in batched(lines, PARQUET_FETCH_ROWS):  # fetched here, outside the timing
            began = time.perf_counter()
            pairs_table(batch)
            converting += time.perf_counter() - began
            done += len(batch)
    engine.dispose()
    return done / converting


def export_in_child(url: str, version_id: int, fmt: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="redline-bench-") as tmp:
        out = Path(tmp) / f"export.{fmt}"
        env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, "-m", "bench.export", "--child", str(version_id), fmt, str(out)],
            env=env, cwd=ROOT, check=True, capture_output=True, text=True,
        )
        return json.loads(done.stdout.strip().splitlines()[-1])


def _peak_rss_mb() -> float:
    """This process's RSS high-water mark. Not ru_maxrss: Linux carries the parent's peak into a child
    across fork and exec, so it would report the parent's memory, not the export's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(version_id: int, fmt: str, out: str) -> None:
    """Runs in the child: stream the export to `out`, print rows/s and peak RSS as JSON."""
    from app.db import session_scope
    from app.models import DatasetVersion
    from app.services.export import stream_export

    with session_scope() as session:
        rows = session.get(DatasetVersion, version_id).row_count
    began = time.perf_counter()
    size = 0
    with open(out, "wb") as handle:
        for piece in stream_export(session_scope, version_id, fmt):
            handle.write(piece)
            size += len(piece)
    seconds = time.perf_counter() - began
    peak_mb = _peak_rss_mb()
    print(json.dumps({"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "peak_mb": peak_mb,
                      "bytes": size}))


def _measure(url: str, size: int, figures: dict[str, float], notes: dict[str, str]) -> None:
    label = "1m" if size == 1_000_000 else f"{size // 1000}k"
    load_before = os.getloadavg()[0]
    version_id, rows, freeze_s = freeze(url, f"bench {label}")
    figures[f"freeze_rows_per_s_{label}"] = rows / freeze_s
    notes[f"freeze {label}"] = (
        f"{rows} rows in {freeze_s:.1f} s; 1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    peaks = []
    for fmt, key in (("pairs-jsonl", "jsonl"), ("pairs-parquet", "parquet")):
        load_before = os.getloadavg()[0]
        result = export_in_child(url, version_id, fmt)
        figures[f"{key}_rows_per_s_{label}"] = result["rows_per_s"]
        figures[f"{key}_peak_mb_{label}"] = result["peak_mb"]
        notes[f"{key} {label}"] = (
            f"{result['rows']} rows, {result['bytes'] / 1e9:.2f} GB in {result['seconds']:.1f} s; 1-min load average "
            f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
        )
        peaks.append(result["peak_mb"])
        print(f"  {fmt} @ {label}: {result}", flush=True)
    figures[f"peak_mb_{label}"] = max(peaks)
    if size == SIZES[-1]:
        figures["freeze_build_hash_rows_per_s_per_core"] = build_hash_rows_per_s(url)
        figures["parquet_convert_rows_per_s_per_core"] = parquet_convert_rows_per_s(url, version_id)
        notes["ceilings"] = (
            f"each stage alone on one core over {min(CEILING_ROWS, size)} rows: Postgres building and hashing the "
            "rows' text (the freeze's statement without its INSERT), and pairs_table turning stored rows into Arrow "
            f"(rows fetched beforehand); with all {os.cpu_count()} cores on one stage and nothing else, a freeze could "
            "not pass cores x the first, nor a Parquet export cores x the second"
        )


def _exit_on_sigterm(_signum, _frame) -> None:
    raise SystemExit(143)  # so the finally below still drops the benchmark database


def main() -> None:
    from app import migrate
    from app.settings import get_settings

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    load_before = os.getloadavg()[0]

    # Pseudonyms need a key; the bench must not create or read the deployment's secret.
    os.environ.setdefault("REDLINE_PSEUDONYM_SALT", "bench-export")
    get_settings.cache_clear()

    admin = create_engine(_psycopg_url(PG_ADMIN), isolation_level="AUTOCOMMIT")
    name = f"redline_bench_export_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = _psycopg_url(PG_ADMIN, name)
    figures: dict[str, float] = {}
    notes: dict[str, str] = {}
    try:
        migrate.upgrade(url)
        pairs = analysed_pairs(PAIRS)
        with create_engine(url).begin() as conn:
            project_id = _setup(conn, pairs)
        loaded = 0
        for size in SIZES:
            seconds = fill(url, loaded, size, len(pairs), project_id)
            print(f"  loaded edits {loaded}..{size} in {seconds:.0f} s", flush=True)
            loaded = size
            _measure(url, size, figures, notes)
        largest = "1m" if SIZES[-1] == 1_000_000 else f"{SIZES[-1] // 1000}k"
        figures["jsonl_rows_per_s"] = figures[f"jsonl_rows_per_s_{largest}"]
        figures["parquet_rows_per_s"] = figures[f"parquet_rows_per_s_{largest}"]
        mean_tokens = sum(json.loads(p["stats"])["original_tokens"] for p in pairs) / len(pairs)
        notes["rows"] = f"{PAIRS} analysed pairs reused; mean original length {mean_tokens:.0f} tokens"
        notes["machine"] = (
            f"{os.cpu_count()} cpus shared with other work; Postgres on the same host; 1-min load average "
            f"{load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end"
        )
    finally:
        from app.db import engine_for

        engine_for.cache_clear()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    write_results("export", figures, notes)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        main()
