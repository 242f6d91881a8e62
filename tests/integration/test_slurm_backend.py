"""The worker's Slurm backend against a real Slurm cluster started by the test suite (tests/slurm_cluster.py):
sbatch, squeue, scontrol and scancel are Slurm's own. Most jobs run the small real program of
test_worker.py in place of a training run; the two-node job trains a real token RM."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

import pytest
from test_worker import add_dataset, command_for, load, log_text, program, stop_processes, wait_for, worker_settings

from app.db import engine_for, session_scope
from app.models import Job, JobStatus
from app.services import jobs
from app.services.cluster import LOCAL, SLURM, SlurmRequest
from app.worker.command import job_command
from app.worker.loop import Worker

pytestmark = [pytest.mark.slurm]
__all__ = ["program"]  # the fixture, imported for this module's tests


def add_slurm_job(url: str, request: SlurmRequest, *, num_processes: int = 1, base_model: str = "tiny-model",
                  dataset_version_id: int | None = None, **config: object) -> int:
    with session_scope(engine_for(url)) as session:
        spec = jobs.JobSpec(kind="token-rm", config=dict(config), base_model=base_model, backend=SLURM,
                            slurm=request, num_processes=num_processes, dataset_version_id=dataset_version_id)
        return jobs.create_job(session, spec, actor=None).id


def slurm_worker(url: str, tmp_path, builder) -> Worker:
    settings = worker_settings(tmp_path, slurm_poll_s=0.5, worker_cancel_grace_s=10.0)
    return Worker(engine_for(url), settings, command_for=builder, backends=[SLURM])


def start_slurm_worker_process(url: str, tmp_path, builder) -> multiprocessing.Process:
    """A Slurm worker in its own (forked) process, so it can be killed like a real one."""

    def target() -> None:
        engine = engine_for(url)
        engine.dispose(close=False)  # the parent's pooled connections stay the parent's
        settings = worker_settings(tmp_path, slurm_poll_s=0.5, worker_stale_after_s=3.0)
        Worker(engine, settings, command_for=builder, backends=[SLURM]).run_forever()

    proc = multiprocessing.get_context("fork").Process(target=target, daemon=True)
    proc.start()
    return proc


def assert_followed_to_success(url: str, job_id: int, slurm_id: str, steps: int) -> None:
    """The job ended succeeded under the Slurm job it started with, every step's line and metric stored once."""
    job = load(url, job_id)
    text = log_text(url, job_id)
    assert job.status == JobStatus.SUCCEEDED, f"{job.error}\n{text}"
    assert job.external_id == slurm_id
    assert all(text.count(f"step {n}\n") == 1 for n in range(1, steps + 1)), text
    assert "follows it now" in text and f"following Slurm job {slurm_id}" in text
    with session_scope(engine_for(url)) as session:
        assert [s for s, _ in jobs.metric_series(session, [job_id])[job_id]["loss"]] == list(range(1, steps + 1))
    assert job.eval == {"accuracy": 0.75, "pairs": 4} and job.progress == 1.0


def scontrol(cluster, job_id: str) -> dict[str, str]:
    done = cluster.run("scontrol", "show", "job", "-o", job_id)
    return dict(token.split("=", 1) for token in done.stdout.split() if "=" in token)


def test_a_job_runs_through_sbatch_and_its_metrics_and_files_arrive(slurm_cluster, sqlite_url, tmp_path, program):
    local_job = add_slurm_job(sqlite_url, SlurmRequest(), steps=1)
    with session_scope(engine_for(sqlite_url)) as session:
        session.get(Job, local_job).backend = "local"  # a local worker's job: the Slurm worker leaves it
    job_id = add_slurm_job(sqlite_url, SlurmRequest(partition="debug", time_limit="5",
                                                    sbatch=("--comment=redline-test",)), steps=3)
    worker = slurm_worker(sqlite_url, tmp_path, command_for(program))
    assert worker.run_once()

    job = load(sqlite_url, job_id)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.external_id and job.external_id.isdigit()
    info = scontrol(slurm_cluster, job.external_id)
    assert info["JobState"] == "COMPLETED"
    assert info["Partition"] == "debug" and info["TimeLimit"] == "00:05:00" and info["Comment"] == "redline-test"
    text = log_text(sqlite_url, job_id)
    assert f"submitted as Slurm job {job.external_id}" in text
    assert f"Slurm job {job.external_id} runs on n1" in text and "step 3" in text
    with session_scope(engine_for(sqlite_url)) as session:
        assert [s for s, _ in jobs.metric_series(session, [job_id])[job_id]["loss"]] == [1, 2, 3]
    assert job.eval == {"accuracy": 0.75, "pairs": 4}
    assert "final" in {a["name"] for a in job.artifacts}
    assert load(sqlite_url, local_job).status == JobStatus.QUEUED
    assert not worker.run_once()


def test_cancel_reaches_scancel(slurm_cluster, sqlite_url, tmp_path, program):
    job_id = add_slurm_job(sqlite_url, SlurmRequest(), steps=1000, sleep=0.2)
    worker = slurm_worker(sqlite_url, tmp_path, command_for(program))
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    wait_for(lambda: "step 2" in log_text(sqlite_url, job_id), 60, "the Slurm job to run")
    with session_scope(engine_for(sqlite_url)) as session:
        assert jobs.request_cancel(session, job_id) == "cancelling"
    thread.join(60)

    assert not thread.is_alive()
    job = load(sqlite_url, job_id)
    assert job.status == JobStatus.CANCELLED
    assert scontrol(slurm_cluster, job.external_id)["JobState"] == "CANCELLED"
    assert "cancel requested: scancel" in log_text(sqlite_url, job_id)


@pytest.mark.slow
def test_a_job_over_its_time_limit_fails_with_the_schedulers_reason(slurm_cluster, sqlite_url, tmp_path, program):
    job_id = add_slurm_job(sqlite_url, SlurmRequest(time_limit="1"), steps=1000, sleep=1.0)  # 1 minute, Slurm's least
    slurm_worker(sqlite_url, tmp_path, command_for(program)).run_once()

    job = load(sqlite_url, job_id)
    assert job.status == JobStatus.FAILED
    assert f"Slurm job {job.external_id} ended TIMEOUT (reason: TimeLimit" in job.error
    assert "DUE TO TIME LIMIT" in job.error  # slurmstepd's line, from the log tail
    assert "step 30" in log_text(sqlite_url, job_id)


@pytest.mark.slow
def test_two_nodes_train_one_two_process_job(slurm_cluster, sqlite_url, tmp_path, tiny_model_path):
    version_id, _ = add_dataset(sqlite_url)
    job_id = add_slurm_job(sqlite_url, SlurmRequest(nodes=2), num_processes=2, base_model=str(tiny_model_path),
                           dataset_version_id=version_id, max_steps=2, logging_steps=1, batch_size=1,
                           val_fraction=0.3)
    slurm_worker(sqlite_url, tmp_path, job_command).run_once()

    job = load(sqlite_url, job_id)
    text = log_text(sqlite_url, job_id)
    assert job.status == JobStatus.SUCCEEDED, f"{job.error}\n{text}"
    assert scontrol(slurm_cluster, job.external_id)["NumNodes"] == "2"
    assert f"Slurm job {job.external_id} runs on n[1-2]" in text
    assert "--num_machines 2" in (tmp_path / "data" / "jobs" / str(job_id) / "train.sbatch").read_text()
    # Each rank says where it runs: two machines, one process each, one process group of two.
    assert "[training] process 0 of 2 on machine 0" in text
    assert "[training] process 1 of 2 on machine 1" in text
    assert "accuracy" in job.eval


def test_a_stopped_worker_leaves_its_slurm_job_running_and_a_new_worker_follows_it(slurm_cluster, sqlite_url,
                                                                                     tmp_path, program):
    job_id = add_slurm_job(sqlite_url, SlurmRequest(), steps=12, sleep=0.5)
    first = slurm_worker(sqlite_url, tmp_path, command_for(program))
    thread = threading.Thread(target=first.run_once)
    thread.start()
    wait_for(lambda: "step 2\n" in log_text(sqlite_url, job_id), 60, "the Slurm job to run")
    first.stop()
    thread.join(30)
    assert not thread.is_alive()

    job = load(sqlite_url, job_id)
    assert job.status == JobStatus.RUNNING and job.worker_id is None  # released, not failed
    assert scontrol(slurm_cluster, job.external_id)["JobState"] in ("RUNNING", "COMPLETING", "COMPLETED")
    assert "goes on, and the next slurm worker follows it" in log_text(sqlite_url, job_id)

    second = slurm_worker(sqlite_url, tmp_path, command_for(program))
    assert second.run_once()
    assert_followed_to_success(sqlite_url, job_id, job.external_id, 12)
    assert not second.run_once()  # nothing left to follow or run


@pytest.mark.slow
def test_a_killed_slurm_worker_is_replaced_and_its_job_completes(slurm_cluster, sqlite_url, tmp_path, program):
    job_id = add_slurm_job(sqlite_url, SlurmRequest(), steps=16, sleep=0.5)
    victim = start_slurm_worker_process(sqlite_url, tmp_path, command_for(program))
    try:
        wait_for(lambda: "step 2\n" in log_text(sqlite_url, job_id), 60, "the Slurm job to run")
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(5)
    finally:
        stop_processes([victim])
    slurm_id = load(sqlite_url, job_id).external_id
    time.sleep(3.5)  # past worker_stale_after_s: the dead worker's heartbeat is stale
    # A local worker's reaper leaves the Slurm job alone: it is not failed, and its Slurm job is not cancelled.
    local = Worker(engine_for(sqlite_url), worker_settings(tmp_path, worker_stale_after_s=3.0),
                   command_for=command_for(program), backends=[LOCAL])
    assert not local.run_once()
    assert load(sqlite_url, job_id).status == JobStatus.RUNNING
    assert scontrol(slurm_cluster, slurm_id)["JobState"] != "CANCELLED"

    survivor = Worker(engine_for(sqlite_url), worker_settings(tmp_path, slurm_poll_s=0.5, worker_stale_after_s=3.0),
                      command_for=command_for(program), backends=[SLURM])
    assert survivor.run_once()
    assert_followed_to_success(sqlite_url, job_id, slurm_id, 16)
    assert "the job lost its worker" in log_text(sqlite_url, job_id)
