"""Benchmark `editor`: a model editor's bulk job over ≥ 100 items against a real model server, side by side
with a plain script that sends the same prompts to the same endpoint at the same concurrency.

Setup (not timed): `transformers serve` on the default SmolLM2 folder (warmed up), a fresh Postgres
database (dropped afterwards) with a project of short items, and an editor (one-stage prompt, token cap
REDLINE_BENCH_EDITOR_MAX_TOKENS, concurrency REDLINE_BENCH_EDITOR_CONCURRENCY). The project's minimality
budget is set high so the guard never asks twice: both sides then send exactly one request per item.

- plain: `openai.AsyncOpenAI` sends each item's rendered prompt, at most C at once, from this (already
  started) process; edits/s = items / wall.
- redline: the job process (`python -m app.editors.bulk`, what the worker runs) works the project
  through the queue, the model, the guard and the one submit. Timed like the plain script, from the
  moment it is ready to work (its progress file appears: settings, database, tokenizer loaded) to its
  exit: edits/s = items / that wall. Its start-up (interpreter, imports, tokenizer) is a fixed cost per
  job, reported apart (`startup_s`, `startup_cpu_s`), as the plain script's own is left out.
- cpu_ms_per_edit: CPU of Redline's own processes (the job process and its Postgres backends; the
  model server excluded) per edit, from its first reported edit to its end, also split into the two. The
  first edit carries one-off costs (the first statements compiled, the first connection to the endpoint,
  modules imported on first use), reported apart as `first_edits_cpu_s` (with the edits reported with it).
  Backends are found in pg_stat_activity and their CPU read from /proc while the job runs. For scale,
  `plain_cpu_ms_per_request` is the plain script's own CPU per request (its first requests included), and
  `client_cpu_ms_per_request` the job's own model call alone (`EditorClient.chat`, after a warm-up): the
  `openai` client's share, which Redline's figure includes.
- mean_in_flight / plain_mean_in_flight: requests in flight on average (time-weighted) on each side: how
  busy each kept the endpoint, at most C.

Goals (issue #16): ratio_to_plain ≥ 0.9, cpu_ms_per_edit < 5.
Environment: REDLINE_TEST_PG_URL, REDLINE_BENCH_EDITOR_ITEMS (default 100), REDLINE_BENCH_DIR.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench._llm import transformers_serve
from bench.common import scratch_database, write_results

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "var" / "models" / "SmolLM2-135M-Instruct"
PG_ADMIN = os.environ.get("REDLINE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
ITEMS = int(os.environ.get("REDLINE_BENCH_EDITOR_ITEMS", "100"))
CONCURRENCY = int(os.environ.get("REDLINE_BENCH_EDITOR_CONCURRENCY", "4"))
MAX_TOKENS = int(os.environ.get("REDLINE_BENCH_EDITOR_MAX_TOKENS", "24"))
TICKS = os.sysconf("SC_CLK_TCK")
POLL_S = 0.05  # how often the job's exit and readiness are checked: the error on its wall time

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


def _step(output: Path) -> int | None:
    """Items the job has reported done or failed; None before it is ready (or mid-write)."""
    try:
        return int(json.loads((output / "progress.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return None


def _setup(url: str) -> int:
    """The project and its items, through the services; returns the project's id."""
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
        return project.id


def _editor(base_url: str, model: str, project_id: int) -> tuple[dict, list[str]]:
    """The editor and its annotate job, through the services; returns the job's config and every prompt."""
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


async def plain(base_url: str, model: str, prompts: list[str]) -> dict[str, float]:
    """The same prompts, the same endpoint, the same concurrency, nothing else: wall time, this process's
    CPU, and the requests in flight on average."""
    from app.editors.client import InFlight

    client = openai.AsyncOpenAI(base_url=base_url, api_key="none", timeout=600, max_retries=0)
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one(prompt: str) -> None:
        async with slots:
            with in_flight:
                await client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                     temperature=0.0, max_tokens=MAX_TOKENS)

    in_flight, cpu, started = InFlight(), _own_cpu_s(), time.perf_counter()
    await asyncio.gather(*(one(p) for p in prompts))
    wall, cpu = time.perf_counter() - started, _own_cpu_s() - cpu
    mean = in_flight.mean()
    await client.close()
    return {"wall_s": wall, "cpu_s": cpu, "mean_in_flight": mean}


CLIENT_WARMUP, CLIENT_REQUESTS = 8, 40


async def client_only(base_url: str, model: str, prompts: list[str]) -> float:
    """The job's own model call alone (`EditorClient.chat`: the openai client's request, the answer's checks), at
    the same concurrency, from this process: CPU per request, after CLIENT_WARMUP requests. The share of
    cpu_ms_per_edit any job that uses the official client pays whatever else it does."""
    from app.editors.client import EditorClient, EndpointConfig

    client = EditorClient(EndpointConfig(base_url=base_url, model=model, max_tokens=MAX_TOKENS, timeout_s=600,
                                         max_concurrency=CONCURRENCY))
    await asyncio.gather(*(client.chat(p) for p in prompts[:CLIENT_WARMUP]))
    cpu = _own_cpu_s()
    await asyncio.gather(*(client.chat(p) for p in prompts[CLIENT_WARMUP:CLIENT_WARMUP + CLIENT_REQUESTS]))
    cpu = _own_cpu_s() - cpu
    await client.close()
    return 1000 * cpu / CLIENT_REQUESTS


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Backends:
    """The CPU of a database's backends, read from /proc; the list of them refreshed every `REFRESH_S`."""

    REFRESH_S = 1.0

    def __init__(self, url: str, database: str) -> None:
        self.admin = create_engine(url.replace(f"/{database}", "/postgres"), isolation_level="AUTOCOMMIT")
        self.database = database
        self.cpu: dict[int, float] = {}  # last reading of each backend ever seen
        self.listed_at = 0.0

    def read(self) -> float:
        if time.monotonic() - self.listed_at >= self.REFRESH_S:
            self.listed_at = time.monotonic()
            with self.admin.connect() as conn:
                pids = conn.scalars(text("SELECT pid FROM pg_stat_activity WHERE datname = :d"), {"d": self.database})
                self.cpu.update({pid: self.cpu.get(pid, 0.0) for pid in pids})
        for pid in self.cpu:
            if (cpu := _cpu_s(pid)) is not None:
                self.cpu[pid] = cpu
        return sum(self.cpu.values())

    def close(self) -> None:
        self.admin.dispose()


def redline(url: str, database: str, config: dict, workdir: Path) -> dict[str, float]:
    """Run the job process to its end, watching its CPU and its Postgres backends' CPU."""
    config_path = workdir / "job.yaml"
    config_path.write_text(yaml.safe_dump(config))
    output = workdir / "out"
    env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    backends = _Backends(url, database)
    ready: tuple[float, float] | None = None  # (time, job's and backends' cpu) when it was ready to work
    first: tuple[float, float, int] | None = None  # (job's cpu, backends' cpu, items) at its first reported edit
    started = time.perf_counter()
    with (workdir / "job.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "app.editors.bulk", "--config", str(config_path),
                                 "--output", str(output)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # reaped here, for its rusage
            if pid:
                ended = time.perf_counter()
                break
            backend_cpu, job_cpu = backends.read(), _cpu_s(proc.pid)
            if first is None and job_cpu is not None and (step := _step(output)) is not None:
                if ready is None:
                    ready = (time.perf_counter(), job_cpu + backend_cpu)
                if step >= 1:
                    first = (job_cpu, backend_cpu, step)
            time.sleep(POLL_S)
    finally:
        backends.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"the editor job failed ({proc.returncode}): {(workdir / 'job.log').read_text()[-3000:]}")
    assert ready is not None and first is not None, "the job never reported that it was ready, or no edit"
    job_cpu, backend_cpu, steady_items = usage.ru_utime + usage.ru_stime, sum(backends.cpu.values()), ITEMS - first[2]
    job_ms = 1000 * (job_cpu - first[0]) / steady_items
    database_ms = 1000 * (backend_cpu - first[1]) / steady_items
    last = json.loads((output / "metrics.jsonl").read_text().splitlines()[-1])
    return {"wall_s": ended - ready[0], "startup_s": ready[0] - started, "startup_cpu_s": ready[1],
            "first_edits_cpu_s": first[0] + first[1] - ready[1], "cpu_ms_per_edit": job_ms + database_ms,
            "job_cpu_ms_per_edit": job_ms, "database_cpu_ms_per_edit": database_ms, "done": last["done"],
            "failed": last["failed"],
            "mean_in_flight": last["mean_in_flight"], "unused_answers": last["unused_answers"],
            "model_calls": last["model_calls"]}


def main() -> None:
    load = os.getloadavg()[0]
    with scratch_database(PG_ADMIN, "redline_bench_editor") as url, \
            tempfile.TemporaryDirectory(prefix="bench-editor-") as tmp, \
            transformers_serve(MODEL_DIR, Path(tmp) / "serve.log") as server:
        project_id = _setup(url)
        config, prompts = _editor(server.base_url, server.model, project_id)
        theirs = asyncio.run(plain(server.base_url, server.model, prompts))
        ours = redline(url, make_url(url).database, config, Path(tmp))
        client_ms = asyncio.run(client_only(server.base_url, server.model, prompts))
    edits_per_s = ITEMS / ours["wall_s"]
    plain_per_s = ITEMS / theirs["wall_s"]
    write_results("editor", {
        "edits_per_s": edits_per_s, "plain_edits_per_s": plain_per_s, "ratio_to_plain": edits_per_s / plain_per_s,
        "cpu_ms_per_edit": ours["cpu_ms_per_edit"], "job_cpu_ms_per_edit": ours["job_cpu_ms_per_edit"],
        "database_cpu_ms_per_edit": ours["database_cpu_ms_per_edit"],
        "plain_cpu_ms_per_request": 1000 * theirs["cpu_s"] / ITEMS, "client_cpu_ms_per_request": client_ms,
        "mean_in_flight": ours["mean_in_flight"], "plain_mean_in_flight": theirs["mean_in_flight"],
        "startup_s": ours["startup_s"], "startup_cpu_s": ours["startup_cpu_s"],
        "first_edits_cpu_s": ours["first_edits_cpu_s"], "done": ours["done"],
        "failed": ours["failed"], "unused_answers": ours["unused_answers"], "model_calls": ours["model_calls"],
        "items": ITEMS, "concurrency": CONCURRENCY,
        "max_tokens": MAX_TOKENS, "load_avg_1m": load,
    }, notes={"server": "transformers serve (answers one request at a time), SmolLM2-135M-Instruct, CPU",
              "order": "plain first, then Redline, then the job's client call alone, on the warmed-up server",
              "span": "both sides timed from ready to done; Redline's start-up reported apart"})


if __name__ == "__main__":
    main()
