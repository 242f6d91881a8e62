"""Training jobs: their lifecycle in the database, shared by the dashboard and the worker.

A job moves queued → running → succeeded | failed | cancelled. Every transition is a conditional
UPDATE (`WHERE status = ... AND worker_id = ...`), so a worker whose job was reaped as stale, or a
cancel racing a claim, can never overwrite a later state.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.errors import Conflict
from app.models import Job, JobLogChunk, JobMetric, JobStatus, User, as_utc, utcnow
from app.services import audit, pipeline
from app.services.cluster import LOCAL, OUTLIVE_WORKER, SlurmRequest

FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
# Options for the worker itself (e.g. how a `generate` job feeds a project) live beside the training
# keys in Job.config under this key and are never passed to the training CLI.
WORKER_OPTIONS_KEY = "_redline"
# Where the training CLI saves a run's final model inside its output folder.
FINAL_MODEL_DIR = "model"
# Log text kept per chunk row; the worker splits larger reads.
LOG_CHUNK_CHARS = 32_000
APPEND_ATTEMPTS = 5


class JobError(Conflict):
    """A request about a job that cannot be honoured in its state (e.g. cancelling a finished job)."""


@dataclass(frozen=True)
class JobSpec:
    """What a researcher asks for; validated by app.services.job_config before it gets here."""

    kind: str
    config: dict[str, Any]
    base_model: str
    dataset_version_id: int | None = None
    project_id: int | None = None
    num_processes: int = 1
    name: str = ""
    worker_options: dict[str, Any] | None = None
    backend: str = LOCAL
    slurm: SlurmRequest | None = None  # the resources asked of Slurm (backend "slurm")


def create_job(session: Session, spec: JobSpec, actor: User | None) -> Job:
    config = dict(spec.config)
    options = dict(spec.worker_options or {})
    if spec.slurm is not None:
        options["slurm"] = spec.slurm.as_dict()
    if options:
        config[WORKER_OPTIONS_KEY] = options
    job = Job(
        kind=spec.kind,
        name=spec.name or spec.kind,
        config=config,
        base_model=spec.base_model,
        dataset_version_id=spec.dataset_version_id,
        project_id=spec.project_id,
        num_processes=spec.num_processes,
        backend=spec.backend,
        status=JobStatus.QUEUED,
        created_by_id=actor.id if actor else None,
        stages=pipeline.initial_stages(spec.kind, options),
    )
    session.add(job)
    session.flush()
    return job


def training_config(job: Job) -> dict[str, Any]:
    return {key: value for key, value in job.config.items() if key != WORKER_OPTIONS_KEY}


def worker_options(job: Job) -> dict[str, Any]:
    return dict(job.config.get(WORKER_OPTIONS_KEY) or {})


def slurm_request(job: Job) -> SlurmRequest:
    return SlurmRequest.from_dict(worker_options(job).get("slurm") or {})


def request_cancel(session: Session, job_id: int) -> str:
    """Cancel a queued job at once; ask the worker of a running job to stop it. Returns the new state."""
    now = utcnow()
    cancelled = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.CANCELLED, cancel_requested=True, finished_at=now)
    ).rowcount
    if cancelled:
        append_log(session, job_id, "cancelled before it started\n")
        return JobStatus.CANCELLED
    flagged = session.execute(
        update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING).values(cancel_requested=True)
    ).rowcount
    if flagged:
        return "cancelling"
    job = session.get(Job, job_id)
    if job is None:
        raise JobError(f"job {job_id} does not exist")
    raise JobError(f"job {job_id} is already {job.status}")


def resume_job(session: Session, job: Job, actor: User | None) -> None:
    """Queue a failed or cancelled chain again (app/services/pipeline.py); its finished stages are kept and
    the worker skips them."""
    if not job.stages:
        raise JobError(f"job {job.id} is a single run: start it again instead")
    if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
        raise JobError(f"job {job.id} is {job.status}: only a failed or cancelled chain can be resumed")
    stages = [entry if entry["status"] == pipeline.DONE else {**entry, "status": pipeline.PENDING}
              for entry in job.stages]
    queued = session.execute(
        update(Job).where(Job.id == job.id, Job.status.in_([JobStatus.FAILED, JobStatus.CANCELLED]))
        .values(status=JobStatus.QUEUED, stages=stages, cancel_requested=False, error="", finished_at=None,
                worker_id=None, pid=None, external_id=None, heartbeat_at=None)
    ).rowcount
    if not queued:
        raise JobError(f"job {job.id} changed meanwhile; reload the page")
    kept = [entry["name"] for entry in stages if entry["status"] == pipeline.DONE]
    audit.record(session, actor, "job.resume", "job", job.id, after={"kept": kept})
    append_log(session, job.id, f"\n[redline] resumed; kept: {', '.join(kept) or 'nothing'}\n")


def claim_next_job(session: Session, worker_id: str, backends: Iterable[str] = (LOCAL,)) -> Job | None:
    """Atomically take the oldest queued job of `backends` for `worker_id`; None when there is none.

    Postgres: `FOR UPDATE SKIP LOCKED`, so concurrent workers take different rows without waiting.
    SQLite has no row locks, but it serialises writers: the conditional UPDATE below succeeds for
    exactly one of two workers that picked the same row, and the loser looks again.
    """
    is_postgres = session.get_bind().dialect.name == "postgresql"
    while True:
        query = (
            select(Job.id)
            .where(Job.status == JobStatus.QUEUED, Job.backend.in_(list(backends)))
            .order_by(Job.id)
            .limit(1)
        )
        if is_postgres:
            query = query.with_for_update(skip_locked=True)
        job_id = session.scalar(query)
        if job_id is None:
            return None
        now = utcnow()
        claimed = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
            .values(status=JobStatus.RUNNING, worker_id=worker_id, started_at=now, heartbeat_at=now)
        ).rowcount
        if claimed:
            session.flush()
            job = session.get(Job, job_id)
            session.refresh(job)
            return job


def adopt_orphaned_job(
    session: Session, worker_id: str, backends: Iterable[str], stale_after_s: float
) -> Job | None:
    """Take over the oldest running job of `backends` that outlives its worker (`outlives_worker`, with its
    engine's handle stored) and has lost that worker: released by a worker that stopped, or silent for
    `stale_after_s`. None when there is none.

    Like a claim, a conditional UPDATE on the worker seen, so two workers never adopt the same job, and
    the old worker, should it wake, finds the job no longer its own at its next heartbeat.
    """
    followed = [name for name in backends if name in OUTLIVE_WORKER]
    if not followed:
        return None
    cutoff = utcnow() - timedelta(seconds=stale_after_s)
    orphaned = (Job.worker_id.is_(None)) | (Job.heartbeat_at < cutoff)
    candidates = session.execute(
        select(Job.id, Job.worker_id, Job.stages)
        .where(Job.status == JobStatus.RUNNING, Job.backend.in_(followed), Job.external_id.is_not(None), orphaned)
        .order_by(Job.id)
    ).all()
    for job_id, previous, stages in candidates:
        if stages:
            continue  # a job of stages ends with its worker (outlives_worker)
        same_worker = Job.worker_id.is_(None) if previous is None else Job.worker_id == previous
        adopted = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING, same_worker, orphaned)
            .values(worker_id=worker_id, heartbeat_at=utcnow())
        ).rowcount
        if adopted:
            how = "was released by" if previous is None else "lost"
            append_log(session, job_id, f"\n[redline] the job {how} its worker; worker {worker_id} follows it now\n")
            session.flush()
            job = session.get(Job, job_id)
            session.refresh(job)
            return job
    return None


def release_job(session: Session, job_id: int, worker_id: str, note: str) -> bool:
    """A stopping worker lets go of a running job that outlives it, for another worker to adopt."""
    released = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.worker_id == worker_id)
        .values(worker_id=None)
    ).rowcount
    if released:
        append_log(session, job_id, f"\n[redline] {note}\n")
    return bool(released)


def set_run_paths(session: Session, job_id: int, *, output_dir: str, log_path: str, pid: int | None) -> None:
    session.execute(
        update(Job).where(Job.id == job_id).values(output_dir=output_dir, log_path=log_path, pid=pid)
    )


def set_handle(session: Session, job_id: int, backend: str, handle: str) -> None:
    """Record what identifies the running step to its engine: a local pid, a Slurm job id."""
    values = {"pid": int(handle)} if backend == LOCAL else {"external_id": handle}
    session.execute(update(Job).where(Job.id == job_id).values(**values))


def heartbeat(session: Session, job_id: int, worker_id: str, progress: float | None) -> Job | None:
    """Record that `worker_id` still runs the job. None when the job is no longer ours (reaped)."""
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if progress is not None:
        values["progress"] = progress
    updated = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.worker_id == worker_id)
        .values(**values)
    ).rowcount
    if not updated:
        return None
    return session.get(Job, job_id, populate_existing=True)


def finish_job(
    session: Session,
    job_id: int,
    worker_id: str,
    status: JobStatus,
    *,
    error: str = "",
    eval_result: dict[str, Any] | None = None,
    artifacts: list[dict[str, Any]] | None = None,
    progress: float | None = None,
) -> bool:
    """The final transition of a running job; False when another party already ended it."""
    values: dict[str, Any] = {
        "status": status,
        "finished_at": utcnow(),
        "error": error,
        "eval": eval_result,
        "artifacts": artifacts or [],
        "pid": None,
    }
    if progress is not None:
        values["progress"] = progress
    return bool(
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.worker_id == worker_id)
            .values(**values)
        ).rowcount
    )


def outlives_worker(job: Job) -> bool:
    """Whether the job's process runs on without its worker, for another worker to follow: a job of one
    step on a backend of cluster.OUTLIVE_WORKER (a Slurm job). A job of stages is driven stage by stage
    by its worker, so it ends with it."""
    return job.backend in OUTLIVE_WORKER and not job.stages


def fail_stale_jobs(session: Session, stale_after_s: float) -> list[Job]:
    """Mark failed every running job whose worker stopped heartbeating; returns them. A submitted job that
    outlives its worker (`outlives_worker`) is left for a worker of its backend to adopt instead."""
    cutoff = utcnow() - timedelta(seconds=stale_after_s)
    stale = session.execute(
        select(Job).where(Job.status == JobStatus.RUNNING, Job.heartbeat_at < cutoff).order_by(Job.id)
    ).scalars().all()
    reaped = []
    for job_id, worker_id, beat in [(j.id, j.worker_id, j.heartbeat_at) for j in stale
                                    if not (outlives_worker(j) and j.external_id)]:
        message = (
            f"worker {worker_id} stopped heartbeating (last heartbeat {beat:%Y-%m-%d %H:%M:%S} UTC, "
            f"more than {stale_after_s:g} s ago); the job's process was lost"
        )
        updated = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.heartbeat_at < cutoff)
            .values(status=JobStatus.FAILED, finished_at=utcnow(), error=message, pid=None)
        ).rowcount
        if updated:
            append_log(session, job_id, f"\n[redline] {message}\n")
            reaped.append(session.get(Job, job_id, populate_existing=True))
    return reaped


# --- log and metrics ---------------------------------------------------------------------------


def set_log_offset(session: Session, job_id: int, offset: int) -> None:
    """How far the job's log file has been stored (in the transaction that stored it)."""
    session.execute(update(Job).where(Job.id == job_id).values(log_offset=offset))


def append_log(session: Session, job_id: int, text: str) -> None:
    """Append text to the job's stored log, split into bounded chunks.

    The worker, a reaper and a cancel request may append to one log at once. On Postgres the job's row
    lock (held to the end of the caller's transaction) orders them; SQLite serialises writers, and one
    that still loses the race for the next sequence number retries in a savepoint.
    """
    if not text:
        return
    pieces = [text[start : start + LOG_CHUNK_CHARS] for start in range(0, len(text), LOG_CHUNK_CHARS)]
    session.execute(select(Job.id).where(Job.id == job_id).with_for_update())
    for attempt in range(APPEND_ATTEMPTS):
        last = session.scalar(select(func.max(JobLogChunk.seq)).where(JobLogChunk.job_id == job_id))
        first = 0 if last is None else last + 1
        try:
            with session.begin_nested():
                session.add_all(
                    JobLogChunk(job_id=job_id, seq=first + i, text=piece) for i, piece in enumerate(pieces)
                )
            return
        except IntegrityError:
            if attempt == APPEND_ATTEMPTS - 1:
                raise


def log_tail(session: Session, job_id: int, max_chars: int = 20_000) -> str:
    """The last `max_chars` characters of the job's log (chunks vary in size: one per ingest round)."""
    newest_first = session.scalars(
        select(JobLogChunk.text).where(JobLogChunk.job_id == job_id).order_by(JobLogChunk.seq.desc())
    ).yield_per(100)
    texts, total = [], 0
    for text in newest_first:
        texts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    newest_first.close()
    return "".join(reversed(texts))[-max_chars:]


def record_metrics(session: Session, job_id: int, rows: Iterable[Mapping[str, Any]]) -> int:
    """Store numeric values of metrics.jsonl rows (each with "step"); a repeated (name, step) wins last."""
    # One row per (name, step), the last: Postgres refuses an upsert that names a row twice, and a job may
    # write a step twice in one ingest round (an editor job's last progress row and its final one).
    latest = {
        (name, int(row["step"])): float(value)
        for row in rows
        for name, value in row.items()
        if name != "step" and isinstance(value, int | float) and not isinstance(value, bool)
    }
    values = [{"job_id": job_id, "step": step, "name": name, "value": value} for (name, step), value in latest.items()]
    if not values:
        return 0
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(JobMetric).values(values)
    statement = statement.on_conflict_do_update(
        index_elements=["job_id", "name", "step"], set_={"value": statement.excluded.value}
    )
    session.execute(statement)
    return len(values)


def metric_names(session: Session, job_ids: Iterable[int]) -> list[str]:
    return list(
        session.scalars(
            select(JobMetric.name).where(JobMetric.job_id.in_(list(job_ids))).distinct().order_by(JobMetric.name)
        )
    )


def metric_series(
    session: Session, job_ids: Iterable[int], names: Iterable[str] | None = None
) -> dict[int, dict[str, list[tuple[int, float]]]]:
    """{job_id: {name: [(step, value), ...]}} in step order."""
    query = select(JobMetric.job_id, JobMetric.name, JobMetric.step, JobMetric.value).where(
        JobMetric.job_id.in_(list(job_ids))
    )
    if names is not None:
        query = query.where(JobMetric.name.in_(list(names)))
    series: dict[int, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for job_id, name, step, value in session.execute(query.order_by(JobMetric.step)):
        series[job_id][name].append((step, value))
    return {job_id: dict(by_name) for job_id, by_name in series.items()}


def metric_points_since(session: Session, job_id: int, cursor: int) -> tuple[list[tuple[str, int, float]], int]:
    """Metric points stored after `cursor` (a row id), and the new cursor: what a live chart lacks."""
    rows = session.execute(
        select(JobMetric.id, JobMetric.name, JobMetric.step, JobMetric.value)
        .where(JobMetric.job_id == job_id, JobMetric.id > cursor)
        .order_by(JobMetric.id)
    ).all()
    return [(name, step, value) for _, name, step, value in rows], (rows[-1][0] if rows else cursor)


def latest_metrics(session: Session, job_id: int) -> dict[str, tuple[int, float]]:
    """{name: (step, value)} of each metric's last logged step."""
    last_step = (
        select(JobMetric.name, func.max(JobMetric.step).label("step"))
        .where(JobMetric.job_id == job_id)
        .group_by(JobMetric.name)
        .subquery()
    )
    rows = session.execute(
        select(JobMetric.name, JobMetric.step, JobMetric.value)
        .join(last_step, (JobMetric.name == last_step.c.name) & (JobMetric.step == last_step.c.step))
        .where(JobMetric.job_id == job_id)
        .order_by(JobMetric.name)
    )
    return {name: (step, value) for name, step, value in rows}


def full_log(session: Session, job_id: int) -> str:
    return "".join(
        session.scalars(select(JobLogChunk.text).where(JobLogChunk.job_id == job_id).order_by(JobLogChunk.seq))
    )


def default_compare_metric(names: list[str]) -> str:
    """The metric a comparison shows first: "loss" if logged, else the first loss-like one, else any."""
    if "loss" in names:
        return "loss"
    return next((name for name in names if "loss" in name), names[0] if names else "")


def trained_model_folders(session: Session, limit: int = 50) -> list[str]:
    """Final model folders of succeeded jobs (newest first): suggestions for base and reward models."""
    finished = session.scalars(
        select(Job).where(Job.status == JobStatus.SUCCEEDED).order_by(Job.id.desc()).limit(limit)
    )
    return [
        f"{job.output_dir}/{artifact['name']}"
        for job in finished
        for artifact in job.artifacts
        if artifact.get("type") == "dir" and artifact.get("name") == FINAL_MODEL_DIR
    ]


def list_jobs(session: Session, limit: int = 200) -> list[Job]:
    return list(session.scalars(select(Job).order_by(Job.id.desc()).limit(limit)))


def heartbeat_age_s(job: Job) -> float | None:
    if job.heartbeat_at is None:
        return None
    return (utcnow() - as_utc(job.heartbeat_at)).total_seconds()
