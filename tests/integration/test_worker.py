"""The job worker on real databases, running a real (small) Python program in place of a training run.

The program honours the training CLI's contract (config.yaml in, metrics.jsonl / progress.json /
eval.json / a checkpoint folder out, output on stdout) and can be told to crash or to ignore SIGTERM.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from factories import make_corpus, make_project
from sqlalchemy import select

from app.db import engine_for, session_scope
from app.models import Item, Job, JobLogChunk, JobMetric, JobStatus
from app.services import jobs
from app.services.datasets import DatasetFilter
from app.services.freeze import create_version
from app.settings import Settings
from app.worker.command import job_command
from app.worker.loop import Worker

PROGRAM = textwrap.dedent(
    """
    import json, pathlib, signal, sys, time
    import yaml

    kind, _, config_path, _, output = sys.argv[1:6]
    cfg = yaml.safe_load(open(config_path))
    out = pathlib.Path(output.split("=", 1)[1])
    out.mkdir(parents=True, exist_ok=True)
    if cfg.get("ignore_term"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if cfg.get("ledger"):
        with open(cfg["ledger"], "a") as fh:
            fh.write(f"{out}\\n")
    print(f"start {kind} model={cfg['model']}", flush=True)
    if cfg.get("data"):
        rows = [json.loads(line) for line in open(cfg["data"]) if line.strip()]
        print(f"data rows={len(rows)} first prompt={rows[0]['prompt']!r}", flush=True)
    if kind == "generate":
        prompts = [json.loads(line)["prompt"] for line in open(cfg["data"]) if line.strip()]
        with open(out / "responses.jsonl", "w") as fh:
            for i, prompt in enumerate(prompts):
                row = {"id": str(i), "prompt": prompt, "response": f"answer {i}", "model": cfg["model"]}
                fh.write(json.dumps(row) + "\\n")
    if kind == "score":  # response i scores i
        with open(out / "scores.jsonl", "w") as fh:
            for line in open(cfg["data"]):
                row_id = json.loads(line)["id"]
                fh.write(json.dumps({"id": row_id, "score": float(row_id)}) + "\\n")
    steps = cfg.get("steps", 3)
    for step in range(1, steps + 1):
        time.sleep(cfg.get("sleep", 0.0))
        if step == cfg.get("crash_at"):
            raise RuntimeError(f"boom at step {step}")
        with open(out / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps({"step": step, "loss": 1.0 / step, "objective/kl": 0.1 * step}) + "\\n")
        (out / "progress.json").write_text(json.dumps({"step": step, "total_steps": steps}))
        print(f"step {step}", flush=True)
    (out / "eval.json").write_text(json.dumps({"accuracy": 0.75, "pairs": 4}))
    (out / "final").mkdir(exist_ok=True)
    (out / "final" / "model.safetensors").write_bytes(b"0" * 64)
    print("done", flush=True)
    """
)


@pytest.fixture
def program(tmp_path: Path) -> Path:
    path = tmp_path / "fake_training.py"
    path.write_text(PROGRAM)
    return path


def command_for(program: Path):
    def build(kind: str, config: Path, output: Path) -> list[str]:
        return [sys.executable, str(program), kind, "--config", str(config), "--set", f"output_dir={output}"]

    return build


def worker_settings(tmp_path: Path, **overrides: float) -> Settings:
    values = {
        "data_dir": tmp_path / "data",
        "worker_heartbeat_s": 0.2,
        "worker_stale_after_s": 3.0,
        "worker_poll_s": 0.05,
        "worker_cancel_grace_s": 1.0,
        **overrides,
    }
    return Settings(**values)


def add_job(url: str, dataset_version_id: int | None = None, base_model: str = "tiny-model", **config: object) -> int:
    with session_scope(engine_for(url)) as session:
        spec = jobs.JobSpec(
            kind="token-rm", config=dict(config), base_model=base_model, dataset_version_id=dataset_version_id
        )
        return jobs.create_job(session, spec, actor=None).id


def add_dataset(url: str) -> tuple[int, int]:
    """A dataset version of the factories' corpus (every edited pair); returns (version id, rows)."""
    with session_scope(engine_for(url)) as session:
        corpus = make_corpus(session)
        flt = DatasetFilter(project_id=corpus["project"].id, review_statuses=["accepted", "pending"])
        version = create_version(session, flt, "pairs", corpus["admin"])
        return version.id, version.row_count


def load(url: str, job_id: int) -> Job:
    with session_scope(engine_for(url)) as session:
        return session.get(Job, job_id)


def log_text(url: str, job_id: int) -> str:
    with session_scope(engine_for(url)) as session:
        chunks = session.scalars(select(JobLogChunk.text).where(JobLogChunk.job_id == job_id).order_by(JobLogChunk.seq))
        return "".join(chunks)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def start_worker_process(url: str, settings: Settings, program: Path) -> multiprocessing.Process:
    """A worker in its own process (forked), so it can be killed like a real one."""

    def target() -> None:
        engine = engine_for(url)
        engine.dispose(close=False)  # the parent's pooled connections stay the parent's
        Worker(engine, settings, command_for=command_for(program)).run_forever()

    proc = multiprocessing.get_context("fork").Process(target=target, daemon=True)
    proc.start()
    return proc


def stop_processes(processes: list[multiprocessing.Process]) -> None:
    for proc in processes:
        if proc.is_alive():
            proc.kill()
        proc.join(10)


def test_job_runs_to_success_with_metrics_log_progress_eval_and_artifacts(db_url, tmp_path, program):
    job_id = add_job(db_url, steps=3)
    worker = Worker(engine_for(db_url), worker_settings(tmp_path), command_for=command_for(program))

    assert worker.run_once() is True

    job = load(db_url, job_id)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.progress == 1.0
    assert job.eval == {"accuracy": 0.75, "pairs": 4}
    assert {"name": "final", "type": "dir", "bytes": 64, "resume_bytes": 0} in job.artifacts
    assert {a["name"] for a in job.artifacts} >= {"metrics.jsonl", "eval.json", "progress.json", "final"}
    with session_scope(engine_for(db_url)) as session:
        metrics = session.execute(
            select(JobMetric.name, JobMetric.step, JobMetric.value).where(JobMetric.job_id == job_id)
        ).all()
    assert sorted((name, step) for name, step, _ in metrics) == sorted(
        [(n, s) for n in ("loss", "objective/kl") for s in (1, 2, 3)]
    )
    text = log_text(db_url, job_id)
    assert "start token-rm model=tiny-model" in text
    assert "step 3" in text and "done" in text
    config = (tmp_path / "data" / "jobs" / str(job_id) / "config.yaml").read_text()
    assert "model: tiny-model" in config
    assert worker.run_once() is False  # queue empty


def test_metrics_appear_while_the_job_runs(db_url, tmp_path, program):
    job_id = add_job(db_url, steps=30, sleep=0.1)
    worker = Worker(engine_for(db_url), worker_settings(tmp_path), command_for=command_for(program))
    thread = threading.Thread(target=worker.run_once)
    thread.start()

    def partial_metrics() -> bool:
        with session_scope(engine_for(db_url)) as session:
            steps = set(session.scalars(select(JobMetric.step).where(JobMetric.job_id == job_id)))
        job = load(db_url, job_id)
        return bool(steps) and max(steps) < 30 and job.status == JobStatus.RUNNING and 0 < job.progress < 1

    wait_for(partial_metrics, 20, "metrics and progress of a running job")
    assert "step 1" in log_text(db_url, job_id)
    thread.join(30)
    assert load(db_url, job_id).status == JobStatus.SUCCEEDED


@pytest.mark.postgres
def test_crashing_training_marks_the_job_failed_with_the_error(pg_url, tmp_path, program):
    job_id = add_job(pg_url, steps=5, crash_at=2)
    worker = Worker(engine_for(pg_url), worker_settings(tmp_path), command_for=command_for(program))

    worker.run_once()

    job = load(pg_url, job_id)
    assert job.status == JobStatus.FAILED
    assert "the job's process exited with code 1" in job.error
    assert "RuntimeError: boom at step 2" in job.error
    assert "RuntimeError: boom at step 2" in log_text(pg_url, job_id)
    assert job.finished_at is not None and job.eval is None


def test_a_training_command_that_cannot_start_fails_the_job(db_url, tmp_path):
    job_id = add_job(db_url)
    worker = Worker(
        engine_for(db_url),
        worker_settings(tmp_path),
        command_for=lambda *_: ["/nonexistent/training-binary"],
    )
    worker.run_once()
    job = load(db_url, job_id)
    assert job.status == JobStatus.FAILED
    assert "/nonexistent/training-binary" in job.error


def run_in_thread(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    return thread


@pytest.mark.parametrize("ignore_term", [False, True], ids=["graceful", "forced"])
def test_cancel_stops_a_running_job(db_url, tmp_path, program, ignore_term):
    job_id = add_job(db_url, steps=1000, sleep=0.05, ignore_term=ignore_term)
    worker = Worker(engine_for(db_url), worker_settings(tmp_path), command_for=command_for(program))
    thread = run_in_thread(worker)
    wait_for(lambda: "step 2" in log_text(db_url, job_id), 20, "the job to make progress")

    with session_scope(engine_for(db_url)) as session:
        assert jobs.request_cancel(session, job_id) == "cancelling"
    thread.join(20)

    assert not thread.is_alive()
    job = load(db_url, job_id)
    assert job.status == JobStatus.CANCELLED
    text = log_text(db_url, job_id)
    assert "cancel requested: sending SIGTERM" in text
    assert ("sending SIGKILL" in text) == ignore_term
    assert "step 1000" not in text


def test_cancel_of_a_queued_job_is_immediate_and_final(db_url, tmp_path, program):
    job_id = add_job(db_url)
    with session_scope(engine_for(db_url)) as session:
        assert jobs.request_cancel(session, job_id) == JobStatus.CANCELLED
    worker = Worker(engine_for(db_url), worker_settings(tmp_path), command_for=command_for(program))
    assert worker.run_once() is False
    assert load(db_url, job_id).status == JobStatus.CANCELLED
    with session_scope(engine_for(db_url)) as session, pytest.raises(jobs.JobError, match="already cancelled"):
        jobs.request_cancel(session, job_id)


def test_concurrent_claims_never_hand_out_a_job_twice(db_url):
    job_ids = {add_job(db_url) for _ in range(24)}
    claimed: list[int] = []
    lock = threading.Lock()

    def claim_all(worker_id: str) -> None:
        while True:
            with session_scope(engine_for(db_url)) as session:
                job = jobs.claim_next_job(session, worker_id)
            if job is None:
                return
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=claim_all, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(claimed) == sorted(job_ids)


@pytest.mark.postgres
@pytest.mark.slow
def test_two_worker_processes_never_run_the_same_job(pg_url, tmp_path, program):
    ledger = tmp_path / "ledger.txt"
    job_ids = [add_job(pg_url, steps=2, sleep=0.05, ledger=str(ledger)) for _ in range(8)]
    settings = worker_settings(tmp_path)
    workers = [start_worker_process(pg_url, settings, program) for _ in range(2)]
    try:
        wait_for(
            lambda: all(load(pg_url, j).status == JobStatus.SUCCEEDED for j in job_ids), 90, "all jobs to succeed"
        )
    finally:
        stop_processes(workers)
    runs = Counter(ledger.read_text().split())
    assert len(runs) == len(job_ids) and set(runs.values()) == {1}
    assert len({load(pg_url, j).worker_id for j in job_ids}) == 2  # both took part


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


@pytest.mark.postgres
@pytest.mark.slow
def test_sigkilled_worker_leads_to_failed_job_and_the_next_job_still_runs(pg_url, tmp_path, program):
    settings = worker_settings(tmp_path, worker_stale_after_s=2.0)
    doomed = add_job(pg_url, steps=1000, sleep=0.05)
    victim = start_worker_process(pg_url, settings, program)
    wait_for(lambda: "step 3" in log_text(pg_url, doomed), 30, "the first job to make progress")
    training_pid = load(pg_url, doomed).pid
    next_job = add_job(pg_url, steps=2)

    os.kill(victim.pid, signal.SIGKILL)
    victim.join(5)
    killed_at = time.monotonic()
    survivor = start_worker_process(pg_url, settings, program)
    try:
        wait_for(lambda: load(pg_url, doomed).status == JobStatus.FAILED, 15, "the orphaned job to be failed")
        detected_after = time.monotonic() - killed_at
        wait_for(lambda: load(pg_url, next_job).status == JobStatus.SUCCEEDED, 30, "the next job to run")
    finally:
        stop_processes([survivor])

    assert detected_after < settings.worker_stale_after_s + 3 * settings.worker_heartbeat_s + 2
    job = load(pg_url, doomed)
    assert "stopped heartbeating" in job.error
    text = log_text(pg_url, doomed)
    assert "step 3" in text and "stopped heartbeating" in text  # the log up to the crash is kept
    wait_for(lambda: not process_alive(training_pid), 10, "the orphaned training process to exit")


@pytest.mark.postgres
def test_a_worker_whose_job_was_reaped_stops_its_process(pg_url, tmp_path, program):
    job_id = add_job(pg_url, steps=1000, sleep=0.05)
    worker = Worker(engine_for(pg_url), worker_settings(tmp_path), command_for=command_for(program))
    thread = run_in_thread(worker)
    wait_for(lambda: "step 2" in log_text(pg_url, job_id), 20, "the job to make progress")
    training_pid = load(pg_url, job_id).pid
    with session_scope(engine_for(pg_url)) as session:  # as a stale reaper would
        session.execute(
            Job.__table__.update().where(Job.id == job_id).values(status=JobStatus.FAILED, error="reaped")
        )
    thread.join(20)
    assert not thread.is_alive()
    assert load(pg_url, job_id).error == "reaped"  # the reaper's verdict stands
    wait_for(lambda: not process_alive(training_pid), 10, "the training process to be stopped")


def test_the_dataset_version_is_exported_for_the_run(db_url, tmp_path, program, settings_env):
    version_id, rows = add_dataset(db_url)
    job_id = add_job(db_url, dataset_version_id=version_id, steps=1)
    worker = Worker(engine_for(db_url), worker_settings(tmp_path), command_for=command_for(program))
    worker.run_once()

    assert load(db_url, job_id).status == JobStatus.SUCCEEDED
    data = tmp_path / "data" / "jobs" / str(job_id) / "data.jsonl"
    assert len(data.read_text().splitlines()) == rows
    assert f"data rows={rows} first prompt='What is the capital of France?'" in log_text(db_url, job_id)


@pytest.mark.slow
def test_a_real_token_rm_run_on_a_tiny_model(db_url, tmp_path, settings_env, tiny_model_path):
    version_id, _ = add_dataset(db_url)
    job_id = add_job(
        db_url, dataset_version_id=version_id, base_model=str(tiny_model_path), max_steps=6, logging_steps=1,
        batch_size=2, val_fraction=0.3,
    )
    worker = Worker(engine_for(db_url), worker_settings(tmp_path, worker_poll_s=0.2), command_for=job_command)
    worker.run_once()

    job = load(db_url, job_id)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert {"accuracy", "edit_span_accuracy"} <= set(job.eval)
    assert job.eval["eval_examples"] < 20 and "too few" in job.eval["warning"]  # a tiny validation split
    artifacts = {a["name"]: a for a in job.artifacts}
    assert "model" in artifacts and artifacts["checkpoint-6"]["resume_bytes"] > 0  # kept apart for resume
    with session_scope(engine_for(db_url)) as session:
        steps = session.scalars(select(JobMetric.step).where(JobMetric.job_id == job_id, JobMetric.name == "loss"))
        assert sorted(steps) == [1, 2, 3, 4, 5, 6]
    assert (Path(job.output_dir) / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize("score_below", [None, 2.0], ids=["all", "scored-below-2"])
def test_generate_feeds_the_project_with_its_responses(db_url, tmp_path, program, settings_env, score_below):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}?"}) + "\n" for i in range(4)))
    options: dict[str, object] = {}
    with session_scope(engine_for(db_url)) as session:
        project = make_project(session)
        options["import_into_project"] = project.id
        if score_below is not None:
            options.update(score_model="var/rm", score_below=score_below)
        spec = jobs.JobSpec(kind="generate", config={"data": str(prompts), "steps": 1}, base_model="policy",
                            worker_options=options)
        job_id = jobs.create_job(session, spec, None).id
    worker = Worker(engine_for(db_url), worker_settings(tmp_path), command_for=command_for(program))
    worker.run_once()

    job = load(db_url, job_id)
    assert job.status == JobStatus.SUCCEEDED, job.error
    with session_scope(engine_for(db_url)) as session:
        items = session.scalars(select(Item).where(Item.project_id == options["import_into_project"]).order_by(Item.id))
        imported = [(item.prompt, item.original, item.source.get("job_id")) for item in items]
    expected = range(4) if score_below is None else range(2)
    assert imported == [(f"Question {i}?", f"answer {i}", job_id) for i in expected]
    text = log_text(db_url, job_id)
    assert f"{len(expected)} of 4 responses" in text and f"{len(expected)} new items" in text
    assert ("start score model=var/rm" in text) == (score_below is not None)


def test_keep_the_lowest_scoring_fraction(db_url, tmp_path, program, settings_env):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}?"}) + "\n" for i in range(5)))
    with session_scope(engine_for(db_url)) as session:
        project_id = make_project(session).id
        spec = jobs.JobSpec(kind="generate", config={"data": str(prompts), "steps": 1}, base_model="policy",
                            worker_options={"import_into_project": project_id, "score_model": "var/rm",
                                            "keep_fraction": 0.5})
        job_id = jobs.create_job(session, spec, None).id
    Worker(engine_for(db_url), worker_settings(tmp_path), command_for=command_for(program)).run_once()

    job = load(db_url, job_id)
    assert job.status == JobStatus.SUCCEEDED, job.error
    with session_scope(engine_for(db_url)) as session:
        items = session.scalars(select(Item.original).where(Item.project_id == project_id).order_by(Item.id)).all()
    assert items == ["answer 0", "answer 1", "answer 2"]  # response i scores i: the lowest 50% of 5, rounded up
    assert [(stage["name"], stage["status"]) for stage in job.stages] == [
        ("generate", "done"), ("score", "done"), ("import", "done")]
    assert job.stages[2]["detail"].startswith("3 of 5 responses (the lowest-scoring 50%) sent to project")


def test_a_figa_pipeline_stage_that_fails_fails_the_chain_and_a_resume_keeps_what_was_done(
    db_url, tmp_path, program, settings_env,
):
    """Generate and score by the stand-in program, the import, and the real editor job process against an
    endpoint that refuses connections: the revise stage fails with the editor's reason; resumed, the chain
    starts at the revise stage (generate is not run again) and the editor finds the same items."""
    from app.editors import service as editor_service
    from app.editors.service import EditorSettings

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}?"}) + "\n" for i in range(4)))
    ledger = tmp_path / "ledger.txt"
    with session_scope(engine_for(db_url)) as session:
        project_id = make_project(session).id
        editor = editor_service.create_editor(session, EditorSettings(
            name="down", base_url="http://127.0.0.1:9/v1", model="m", timeout_s=2), None)
        spec = jobs.JobSpec(kind="figa-pipeline", config={"data": str(prompts), "steps": 1, "ledger": str(ledger)},
                            base_model="policy", worker_options={
                                "import_into_project": project_id, "score_model": "var/rm", "score_below": 2.0,
                                "editor_id": editor.id, "min_edit_rate": 0.0, "max_edit_rate": 1.0})
        job_id = jobs.create_job(session, spec, None).id
    stand_in = command_for(program)

    def build(kind: str, config: Path, output: Path) -> list[str]:
        return job_command(kind, config, output) if kind == "editor" else stand_in(kind, config, output)

    worker = Worker(engine_for(db_url), worker_settings(tmp_path), command_for=build)
    worker.run_once()
    job = load(db_url, job_id)
    assert job.status == JobStatus.FAILED
    assert [(stage["name"], stage["status"]) for stage in job.stages] == [
        ("generate", "done"), ("score", "done"), ("import", "done"), ("revise", "failed"), ("version", "pending")]
    assert job.error.startswith("stage revise failed: exited with code 1: stopped: item ")
    assert "the endpoint failed" in job.stages[3]["detail"] and "resumes here" in job.error
    assert job.stages[2]["detail"].startswith("2 of 4 responses (those scored below 2) sent to project")
    assert 0 < job.progress < 1

    with session_scope(engine_for(db_url)) as session:
        jobs.resume_job(session, session.get(Job, job_id), None)
    worker.run_once()
    job = load(db_url, job_id)
    assert job.status == JobStatus.FAILED and job.stages[3]["status"] == "failed"
    assert ledger.read_text().count("\n") == 1  # generate ran once: the resumed chain kept its responses
    text = log_text(db_url, job_id)
    assert text.count("start score model=var/rm") == 1 and "resumed; kept: generate, score, import" in text
    with session_scope(engine_for(db_url)) as session:
        assert session.scalars(select(Item.original).where(Item.project_id == project_id)).all() == [
            "answer 0", "answer 1"]


def test_a_rejected_import_fails_the_generate_job_and_imports_nothing(db_url, tmp_path, program, settings_env):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "   "}) + "\n")  # an empty prompt: the importer refuses it
    with session_scope(engine_for(db_url)) as session:
        project_id = make_project(session).id
        spec = jobs.JobSpec(kind="generate", config={"data": str(prompts), "steps": 1}, base_model="policy",
                            worker_options={"import_into_project": project_id})
        job_id = jobs.create_job(session, spec, None).id
    Worker(engine_for(db_url), worker_settings(tmp_path), command_for=command_for(program)).run_once()

    job = load(db_url, job_id)
    assert job.status == JobStatus.FAILED
    assert job.error.startswith(
        "stage import failed: could not import the responses: 1 bad row(s); nothing was imported: line 1")
    assert [(stage["name"], stage["status"]) for stage in job.stages] == [("generate", "done"), ("import", "failed")]
    with session_scope(engine_for(db_url)) as session:
        assert session.scalars(select(Item).where(Item.project_id == project_id)).all() == []


@pytest.mark.slow
def test_several_processes_run_through_accelerate_launch(db_url, tmp_path, settings_env, tiny_model_path):
    version_id, _ = add_dataset(db_url)
    job_id = add_job(db_url, dataset_version_id=version_id, base_model=str(tiny_model_path), max_steps=2,
                     logging_steps=1, batch_size=1, val_fraction=0.3)
    with session_scope(engine_for(db_url)) as session:
        session.get(Job, job_id).num_processes = 2
    worker = Worker(engine_for(db_url), worker_settings(tmp_path, worker_poll_s=0.2), command_for=job_command)
    worker.run_once()

    job = load(db_url, job_id)
    assert job.status == JobStatus.SUCCEEDED, job.error
    text = log_text(db_url, job_id)
    assert "-m accelerate.commands.launch --multi_gpu --num_processes 2 -m training token-rm" in text
    # Two ranks of one gloo process group, not two runs that each think they are alone.
    assert "[training] process 0 of 2" in text and "[training] process 1 of 2" in text
    assert "accuracy" in job.eval
