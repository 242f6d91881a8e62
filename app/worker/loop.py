"""The worker loop: reap jobs of dead workers, deliver webhooks, claim and run the next job."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterable
from contextlib import AbstractContextManager
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from app.db import session_scope
from app.services import freeze, jobs, tallies, webhooks
from app.settings import Settings
from app.worker.backends.registry import backend_names, make_backend
from app.worker.command import CommandBuilder, job_command
from app.worker.runner import JobRunner

log = logging.getLogger(__name__)


def alive_file(settings: Settings) -> Path:
    """Touched on every turn of the loop (and every heartbeat during a job); one per host."""
    return settings.data_dir / "workers" / f"{socket.gethostname()}.alive"


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        worker_id: str | None = None,
        command_for: CommandBuilder = job_command,
        backends: Iterable[str] | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.worker_id = worker_id or new_worker_id()
        self.stopping = threading.Event()
        names = backend_names(settings.worker_backends) if backends is None else list(backends)
        self.backends = {name: make_backend(name, settings) for name in names}
        self.runner = JobRunner(
            self.session,
            settings,
            self.worker_id,
            command_for,
            self.backends,
            should_stop=self.stopping.is_set,
            tick=self.chores,
        )

    def session(self) -> AbstractContextManager[Session]:
        return session_scope(self.engine)

    def stop(self) -> None:
        """Finish soon: a running job is stopped (and marked failed), no new job is claimed."""
        self.stopping.set()

    @property
    def alive_file(self) -> Path:
        return alive_file(self.settings)

    def chores(self) -> None:
        """Duties that must not wait for the current job to end."""
        self.alive_file.parent.mkdir(parents=True, exist_ok=True)
        self.alive_file.touch()  # for container health checks: this worker's loop still turns
        with self.session() as session:
            for job in jobs.fail_stale_jobs(session, self.settings.worker_stale_after_s):
                log.warning("job %s failed: its worker stopped heartbeating", job.id)
                backend = self.backends.get(job.backend)
                if job.external_id and backend is not None:
                    # A stage of a chain on Slurm outlives its worker but nobody follows it: stop it.
                    backend.abandon(job.external_id)
                    jobs.append_log(session, job.id, f"[redline] cancelled {job.backend} job {job.external_id}\n")
            for version_id in freeze.discard_abandoned(session):
                log.warning("dataset version %s failed: its freeze job ended before it was complete", version_id)
            tallies.fold(session, at=tallies.WORKER_FOLDS_AT)
        webhooks.deliver_due(self.session)

    def run_once(self) -> bool:
        """Do the chores, then follow a job whose worker is gone (a Slurm job outlives its worker) or run the
        next queued job; returns whether a job ran."""
        self.chores()
        if self.stopping.is_set():
            return False
        with self.session() as session:
            orphan = jobs.adopt_orphaned_job(session, self.worker_id, self.backends,
                                             self.settings.worker_stale_after_s)
        if orphan is not None:
            log.info("worker %s follows job %s (%s job %s)", self.worker_id, orphan.id, orphan.backend,
                     orphan.external_id)
            self.runner.adopt(orphan)
            return True
        with self.session() as session:
            job = jobs.claim_next_job(session, self.worker_id, self.backends)
        if job is None:
            return False
        log.info("worker %s runs job %s (%s)", self.worker_id, job.id, job.kind)
        self.runner.run(job)
        return True

    def run_forever(self) -> None:
        log.info("worker %s started", self.worker_id)
        while not self.stopping.is_set():
            try:
                ran = self.run_once()
            except Exception:
                # A database outage must not kill the worker: log it and try again after a pause.
                log.exception("worker %s: error in the loop", self.worker_id)
                ran = False
            if not ran:
                self.stopping.wait(self.settings.worker_poll_s)
        log.info("worker %s stopped", self.worker_id)
