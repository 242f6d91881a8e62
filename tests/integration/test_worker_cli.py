"""`redline worker` as deployed (docker-compose.yml runs exactly these commands), on the real Postgres."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from factories import make_corpus

from app.db import session_scope
from app.models import Job, JobStatus
from app.services import jobs
from app.services.datasets import DatasetFilter
from app.services.freeze import create_version

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

REDLINE = str(Path(sys.executable).with_name("redline"))


def redline(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([REDLINE, *args], env=env, capture_output=True, text=True, timeout=60)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def job_status(job_id: int) -> str:
    with session_scope() as session:
        return session.get(Job, job_id).status


def test_sigterm_stops_the_running_job_marks_it_failed_and_exits(worker_process_env, tiny_model_path, tmp_path):
    with session_scope() as session:
        corpus = make_corpus(session)
        flt = DatasetFilter(project_id=corpus["project"].id, review_statuses=["accepted", "pending"])
        version = create_version(session, flt, "pairs", corpus["admin"])
        spec = jobs.JobSpec(kind="token-rm", config={"max_steps": 100000, "logging_steps": 1, "batch_size": 2},
                            base_model=str(tiny_model_path), dataset_version_id=version.id)
        job_id = jobs.create_job(session, spec, None).id
    assert redline("worker", "--check-alive", "30", env=worker_process_env).returncode == 1  # no worker yet

    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen([REDLINE, "worker"], env=worker_process_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: job_status(job_id) == JobStatus.RUNNING, 60, "the job to start")
        with session_scope() as session:
            wait_for(lambda: jobs.latest_metrics(session, job_id), 90, "the first metrics")
        assert redline("worker", "--check-alive", "30", env=worker_process_env).returncode == 0

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job.status == JobStatus.FAILED
        assert job.error.startswith("worker shutting down")
        assert "worker shutting down: sending SIGTERM" in jobs.full_log(session, job_id)
