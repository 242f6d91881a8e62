"""Benchmark `editor`: a model editor's bulk job over ≥ 100 items against a real model server, side by side
with a plain script that sends the same prompts to the same endpoint at the same concurrency.

Setup (not timed): `transformers serve` on the default SmolLM2 folder (warmed up), a fresh Postgres
database (dropped afterwards) with a project of short items, and an editor (one-stage prompt, token cap
REDLINE_BENCH_EDITOR_MAX_TOKENS, concurrency REDLINE_BENCH_EDITOR_CONCURRENCY). The project's minimality
budget is set high so the guard never asks twice: both sides then send exactly one request per item.

- plain: `openai.AsyncOpenAI` sends each item's rendered prompt, at most C at once; edits/s = items / wall.
- redline: the job process (`python -m app.editors.bulk`, what the worker runs) works the project
  through the queue, the model, the guard and the one submit; edits/s = items / wall.
- cpu_ms_per_edit: CPU of Redline's own processes (the job process and its Postgres backends; the
  model server excluded) per edit, from the first stored edit to the end (start-up — interpreter,
  imports, tokenizer — is a fixed cost, reported apart as `startup_cpu_s`). Backends are found in
  pg_stat_activity and their CPU read from /proc while the job runs.

Goals (issue #16): ratio_to_plain ≥ 0.9, cpu_ms_per_edit < 5.
Environment: REDLINE_TEST_PG_URL, REDLINE_BENCH_EDITOR_ITEMS (default 100), REDLINE_BENCH_DIR.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import openai
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench._llm import transformers_serve
from bench.common import write_results

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "var" / "models" / "SmolLM2-135M-Instruct"
PG_ADMIN = os.environ.get("REDLINE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
ITEMS = int(os.environ.get("REDLINE_BENCH_EDITOR_ITEMS", "100"))
CONCURRENCY = int(os.environ.get("REDLINE_BENCH_EDITOR_CONCURRENCY", "4"))
MAX_TOKENS = int(os.environ.get("REDLINE_BENCH_EDITOR_MAX_TOKENS", "24"))
TICKS = os.sysconf("SC_CLK_TCK")

PLACES = [("France", "Paris", "Lyon"), ("Italy", "Rome", "Milan"), ("Spain", "Madrid", "Seville"),
          ("Japan", "Tokyo", "Osaka"), ("Canada", "Ottawa", "Toronto"), ("Australia", "Canberra", "Sydney"),
          ("Brazil", "Brasília", "Rio"), ("Germany", "Berlin", "Bonn"), ("Turkey", "Ankara", "Istanbul"),
          ("India", "New Delhi", "Mumbai")]


def items(count: int) -> list[dict[str, str]]:
    """Short questions with one wrong word in each answer, all distinct."""
    rows = []
    for n in range(count):
        country, _right, wrong = PLACES[n % len(PLACES)]
        rows.append({"prompt": f"Question {n + 1}: what is the capital of {country}?",
                     "response": f"The capital of {country} is {wrong}."})
    return rows


def _cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def _setup(url: str) -> dict:
    """Project, items and editor through the services; returns the job config and the prompts."""
    os.environ["DATABASE_URL"] = url
    from app.db import session_scope
    from app.services.importer import import_records
    from app.services.projects import ProjectSettings, create_project
    from app.settings import get_settings

    get_settings.cache_clear()
    with session_scope() as session:
        project = create_project(session, ProjectSettings(name="bench", tokenizer=str(MODEL_DIR),
                                                          minimality_budget=10.0), None)
        import_records(session, project, items(ITEMS), filename="bench.jsonl")
        return {"project_id": project.id}


def _editor(base_url: str, model: str, project_id: int) -> tuple[dict, list[str]]:
    from sqlalchemy import select

    from app.db import session_scope
    from app.editors import service
    from app.editors.service import EditorSettings
    from app.models import Item, Project

    with session_scope() as session:
        editor = service.create_editor(session, EditorSettings(
            name="bench", base_url=base_url, model=model, max_tokens=MAX_TOKENS, timeout_s=600,
            max_concurrency=CONCURRENCY), None)
        job = service.start_job(session, editor, project_id, "annotate", None)
        project = session.get(Project, project_id)
        template = service.template(editor)
        prompts = [template.render(0, prompt=item.prompt, response=item.original, guidelines=project.guidelines_md,
                                   budget=project.minimality_budget, stricter=False)
                   for item in session.scalars(select(Item).where(Item.project_id == project_id).order_by(Item.id))]
        return dict(job.config), prompts


async def plain(base_url: str, model: str, prompts: list[str]) -> float:
    """The same prompts, the same endpoint, the same concurrency, nothing else; returns the wall time."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="none", timeout=600, max_retries=0)
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one(prompt: str) -> None:
        async with slots:
            await client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                 temperature=0.0, max_tokens=MAX_TOKENS)

    started = time.perf_counter()
    await asyncio.gather(*(one(p) for p in prompts))
    wall = time.perf_counter() - started
    await client.close()
    return wall


def redline(url: str, database: str, config: dict, workdir: Path) -> dict[str, float]:
    """Run the job process to its end, watching its CPU and its Postgres backends' CPU."""
    config_path = workdir / "job.yaml"
    config_path.write_text(yaml.safe_dump(config))
    output = workdir / "out"
    env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    admin = create_engine(url.replace(f"/{database}", "/postgres"), isolation_level="AUTOCOMMIT")
    backends: dict[int, float] = {}
    first: tuple[float, float, int] | None = None  # (job cpu, backends' cpu, edits) at the first stored edit
    started = time.perf_counter()
    with (workdir / "job.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "app.editors.bulk", "--config", str(config_path),
                                 "--output", str(output)], env=env, stdout=log, stderr=subprocess.STDOUT)
    with admin.connect() as conn:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # reaped here, for its rusage
            if pid:
                break
            for (backend,) in conn.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = :d"),
                                           {"d": database}):
                if (cpu := _cpu_s(backend)) is not None:
                    backends[backend] = cpu
            if first is None and (output / "progress.json").exists():
                done = json.loads((output / "progress.json").read_text())["step"]
                if done >= 1 and (cpu := _cpu_s(proc.pid)) is not None:
                    first = (cpu, sum(backends.values()), done)
            time.sleep(0.2)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    admin.dispose()
    if proc.returncode != 0:
        raise SystemExit(f"the editor job failed ({proc.returncode}): {(workdir / 'job.log').read_text()[-3000:]}")
    job_cpu = usage.ru_utime + usage.ru_stime
    backend_cpu = sum(backends.values())
    assert first is not None, "the job stored no edit"
    steady_edits = ITEMS - first[2]
    steady_cpu = (job_cpu - first[0]) + (backend_cpu - first[1])
    return {"wall_s": wall, "job_cpu_s": job_cpu, "backend_cpu_s": backend_cpu, "startup_cpu_s": first[0],
            "cpu_ms_per_edit": 1000 * steady_cpu / max(steady_edits, 1),
            "cpu_ms_per_edit_total": 1000 * (job_cpu + backend_cpu) / ITEMS}


def main() -> None:
    from app import migrate

    admin_url = make_url(PG_ADMIN).set(drivername="postgresql+psycopg")
    database = f"redline_bench_editor_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{database}"'))
    url = admin_url.set(database=database).render_as_string(hide_password=False)
    load = os.getloadavg()[0]
    try:
        migrate.upgrade(url)
        with tempfile.TemporaryDirectory(prefix="bench-editor-") as tmp, \
                transformers_serve(MODEL_DIR, Path(tmp) / "serve.log") as server:
            project_id = _setup(url)["project_id"]
            config, prompts = _editor(server.base_url, server.model, project_id)
            plain_wall = asyncio.run(plain(server.base_url, server.model, prompts))
            ours = redline(url, database, config, Path(tmp))
    finally:
        from app.db import engine_for

        engine_for.cache_clear()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()
    edits_per_s = ITEMS / ours["wall_s"]
    plain_per_s = ITEMS / plain_wall
    write_results("editor", {
        "edits_per_s": edits_per_s, "plain_edits_per_s": plain_per_s, "ratio_to_plain": edits_per_s / plain_per_s,
        "cpu_ms_per_edit": ours["cpu_ms_per_edit"], "cpu_ms_per_edit_total": ours["cpu_ms_per_edit_total"],
        "startup_cpu_s": ours["startup_cpu_s"], "items": ITEMS, "concurrency": CONCURRENCY,
        "max_tokens": MAX_TOKENS, "load_avg_1m": load,
    }, notes={"server": "transformers serve (answers one request at a time), SmolLM2-135M-Instruct, CPU",
              "order": "plain first, then Redline, on the warmed-up server"})


if __name__ == "__main__":
    main()
