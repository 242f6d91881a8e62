"""Running one claimed job: prepare its folder, start the training process, watch it, record the end."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml
from sqlalchemy.orm import Session

from app.models import Job, JobStatus
from app.services import jobs, pipeline
from app.services.export import stream_export
from app.services.job_artifacts import is_resume_state
from app.settings import Settings
from app.worker.backends import Backend, BackendError, Execution, FollowingBackend, Launch
from app.worker.command import CommandBuilder
from app.worker.stages import Chain, StepOutcome
from app.worker.tailer import LogTailer, MetricsTailer

log = logging.getLogger(__name__)

SessionFactory = Callable[[], AbstractContextManager[Session]]
ERROR_TAIL_LINES = 30


@dataclass(frozen=True)
class JobPaths:
    root: Path

    @classmethod
    def for_job(cls, artifacts_dir: Path, job_id: int) -> JobPaths:
        return cls(artifacts_dir / str(job_id))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def data(self) -> Path:
        return self.root / "data.jsonl"

    @property
    def log(self) -> Path:
        return self.root / "train.log"

    @property
    def output(self) -> Path:
        return self.root / "out"


SHUTTING_DOWN = "worker shutting down"


class JobLost(Exception):
    """The job is no longer ours: reaped as stale, ended by someone else, or adopted by another worker."""


class JobReleased(Exception):
    """This worker is stopping and left a job that outlives it to the next worker of its backend."""


class JobRunner:
    """Runs one claimed job to its end. `tick` is called on every heartbeat (other worker duties)."""

    def __init__(
        self,
        session_factory: SessionFactory,
        settings: Settings,
        worker_id: str,
        command_for: CommandBuilder,
        backends: Mapping[str, Backend],
        *,
        should_stop: Callable[[], bool] = lambda: False,
        tick: Callable[[], None] = lambda: None,
    ) -> None:
        self.session_factory = session_factory
        self.settings = settings
        self.worker_id = worker_id
        self.command_for = command_for
        self.backends = backends
        self.should_stop = should_stop
        self.tick = tick

    # --- preparation ----------------------------------------------------------------------------

    def _write_data(self, job: Job, paths: JobPaths) -> None:
        """Export the dataset version, heartbeating: a large export must not look like a dead worker."""
        tmp = paths.data.with_suffix(".jsonl.part")
        next_beat = time.monotonic() + self.settings.worker_heartbeat_s
        with tmp.open("wb") as fh:
            for chunk in stream_export(self.session_factory, job.dataset_version_id, "pairs-jsonl"):
                fh.write(chunk)
                if time.monotonic() >= next_beat:
                    self._heartbeat(job.id, None)
                    next_beat = time.monotonic() + self.settings.worker_heartbeat_s
        tmp.replace(paths.data)

    def _write_config(self, job: Job, paths: JobPaths) -> None:
        config: dict[str, Any] = {**jobs.training_config(job), "model": job.base_model}
        if job.dataset_version_id is not None:
            config["data"] = str(paths.data)
        paths.config.write_text(yaml.safe_dump(config, sort_keys=True))

    def prepare(self, job: Job, paths: JobPaths) -> None:
        paths.output.mkdir(parents=True, exist_ok=True)
        if job.dataset_version_id is not None:
            self._write_data(job, paths)
        self._write_config(job, paths)

    # --- the run --------------------------------------------------------------------------------

    def run(self, job: Job) -> JobStatus | None:
        """Run the job; returns its final status, or None when it was taken from us or left running."""
        paths = JobPaths.for_job(self.settings.artifacts_dir, job.id)
        try:
            self.prepare(job, paths)
        except Exception as exc:
            log.exception("job %s: preparation failed", job.id)
            self._append_log(job.id, f"[redline] could not prepare the job: {exc}\n")
            return self._finish(job.id, JobStatus.FAILED, error=f"could not prepare the job: {exc}")
        with self.session_factory() as session:
            jobs.set_run_paths(session, job.id, output_dir=str(paths.output), log_path=str(paths.log), pid=None)
        log_tail = LogTailer(paths.log, paths.log.stat().st_size if paths.log.exists() else 0)
        launch = self._launch(job, paths)
        if job.stages:
            return self._carry_out(job, paths, lambda: self._run_chain(job, launch, paths, log_tail))
        release = jobs.outlives_worker(job)
        return self._carry_out(job, paths, lambda: self._run_step(job.backend, launch, paths.output, log_tail,
                                                                  release=release))

    def adopt(self, job: Job) -> JobStatus | None:
        """Follow a running job whose worker is gone (jobs.adopt_orphaned_job) to its end: its step goes on
        on the engine under its stored handle, its log is read on from where the last worker stored it."""
        paths = JobPaths.for_job(self.settings.artifacts_dir, job.id)
        log_tail = LogTailer(paths.log, job.log_offset)
        launch = self._launch(job, paths)
        # Adopted jobs are of backends that outlive their worker, with a stored handle (adopt_orphaned_job).
        execution = cast(FollowingBackend, self.backends[job.backend]).follow(str(job.external_id))
        return self._carry_out(job, paths, lambda: self._watch_step(launch, execution, paths.output, log_tail,
                                                                    release=True))

    def _launch(self, job: Job, paths: JobPaths) -> Launch:
        return Launch(
            job_id=job.id,
            program=self.command_for(pipeline.training_kind(job.kind), paths.config, paths.output),
            processes=job.num_processes,
            folder=paths.root,
            log=paths.log,
            slurm=jobs.slurm_request(job),
            sharding=jobs.worker_options(job).get("sharding", ""),
            backend=job.backend,
        )

    def _carry_out(self, job: Job, paths: JobPaths, step_of: Callable[[], StepResult]) -> JobStatus | None:
        """Run (or follow) the job's step, or its chain of stages, and record the end."""
        try:
            step = step_of()
        except JobLost:
            log.warning("job %s is no longer worker %s's", job.id, self.worker_id)
            return None
        except JobReleased:
            log.info("job %s left running for the next %s worker", job.id, job.backend)
            return None
        return self._conclude(job.id, step, paths)

    def _run_step(self, backend_name: str, launch: Launch, output: Path, log_tail: LogTailer,
                  span: tuple[float, float] = (0.0, 1.0), *, release: bool = False) -> StepResult:
        """Run one process of the job to its end (or until stopped); raises JobLost. Its progress fills
        `span` (start, width) of the job's progress bar; `release`: see `_watch_step`."""
        backend = self.backends.get(backend_name)
        if backend is None:  # claimed by backend, so only a job changed under us gets here
            return StepResult(None, "", f"this worker does not run {backend_name!r} jobs")
        launch.log.touch()
        try:
            execution = backend.start(launch)
        except (OSError, BackendError) as exc:
            return StepResult(None, "", f"could not start the {launch.step_name} step: {exc}")
        with self.session_factory() as session:
            jobs.set_handle(session, launch.job_id, backend_name, execution.handle)
        return self._watch_step(launch, execution, output, log_tail, span, release=release)

    def _watch_step(self, launch: Launch, execution: Execution, output: Path, log_tail: LogTailer,
                    span: tuple[float, float] = (0.0, 1.0), *, release: bool) -> StepResult:
        """Watch a started process to its end; raises JobLost. With `release` (a process that outlives its
        worker, jobs.outlives_worker), a worker that stops leaves it running and raises JobReleased, and
        one that finds the job adopted by another worker leaves it alone."""
        watch = _Watch(log_tail, MetricsTailer(output / "metrics.jsonl"), span=span)
        try:
            stop_reason = self._monitor(launch.job_id, execution, output, watch, release=release)
        except JobLost:
            if not (release and self._followed_elsewhere(launch.job_id)):
                execution.kill()
            raise
        except JobReleased:
            self._note(launch.job_id, execution)
            self._ingest(launch.job_id, output, watch)
            self._release(launch, execution)
            raise
        self._note(launch.job_id, execution)
        self._ingest(launch.job_id, output, watch, final=True)
        return StepResult(execution.poll(), stop_reason, execution.failure())

    def _run_chain(self, job: Job, launch: Launch, paths: JobPaths, log_tail: LogTailer) -> StepResult:
        """A job of stages (app/worker/stages.py), each process of it run by `_run_step`."""
        def run_step(step_launch: Launch, output: Path, span: tuple[float, float]) -> StepOutcome:
            step = self._run_step(job.backend, step_launch, output, log_tail, span)
            if step.ok or step.stop_reason:
                return StepOutcome(stop_reason=step.stop_reason)
            return StepOutcome(error=step.error or f"exited with code {step.returncode}: {_last_line(paths.log)}")

        def stop_reason(progress: float) -> str:
            return self._stop_reason(self._heartbeat(job.id, progress))

        outcome = Chain(job, launch, paths.root, paths.output, self.session_factory, self.command_for, run_step,
                        lambda text: self._append_log(job.id, text), stop_reason).run()
        return StepResult(0 if outcome.ok else 1, outcome.stop_reason, outcome.error)

    def _monitor(self, job_id: int, execution: Execution, output: Path, watch: _Watch, *, release: bool) -> str:
        """Watch until the step ends; returns why we stopped it ("" when it ended by itself). With
        `release`, a worker shutting down leaves the step running (raises JobReleased) instead."""
        stop_reason, kill_at = "", None
        next_beat = 0.0
        while execution.poll() is None:
            self._note(job_id, execution)
            self._ingest(job_id, output, watch)
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + self.settings.worker_heartbeat_s
                job = self._heartbeat(job_id, watch.overall)
                self.tick()
                if not stop_reason:
                    stop_reason = self._stop_reason(job)
                    if stop_reason == SHUTTING_DOWN and release:
                        raise JobReleased(job_id)
                    if stop_reason:
                        self._append_log(job_id, f"\n[redline] {stop_reason}: {execution.terminate_note}\n")
                        execution.terminate()
                        kill_at = now + self.settings.worker_cancel_grace_s
            if kill_at is not None and now >= kill_at:
                self._append_log(job_id, f"[redline] still running after the grace period: {execution.kill_note}\n")
                execution.kill()
                kill_at = None
            execution.wait(self.settings.worker_poll_s)
        return stop_reason

    def _stop_reason(self, job: Job) -> str:
        if job.cancel_requested:
            return "cancel requested"
        if self.should_stop():
            return SHUTTING_DOWN
        return ""

    def _conclude(self, job_id: int, step: StepResult, paths: JobPaths) -> JobStatus | None:
        artifacts = list_artifacts(paths.output)
        eval_result = read_eval(paths.output)
        if step.stop_reason == "cancel requested":
            self._append_log(job_id, f"[redline] cancelled (exit code {step.returncode})\n")
            return self._finish(job_id, JobStatus.CANCELLED, artifacts=artifacts, eval_result=eval_result)
        if step.ok:
            self._append_log(job_id, "[redline] finished\n")
            return self._finish(
                job_id, JobStatus.SUCCEEDED, artifacts=artifacts, eval_result=eval_result, progress=1.0
            )
        error = step.error or step.stop_reason or f"the job's process exited with code {step.returncode}"
        tail = "\n".join(paths.log.read_text(errors="replace").splitlines()[-ERROR_TAIL_LINES:])
        self._append_log(job_id, f"[redline] failed: {error}\n")
        return self._finish(
            job_id, JobStatus.FAILED, error=f"{error}\n{tail}".strip(), artifacts=artifacts, eval_result=eval_result
        )

    # --- database -------------------------------------------------------------------------------

    def _heartbeat(self, job_id: int, progress: float | None) -> Job:
        with self.session_factory() as session:
            job = jobs.heartbeat(session, job_id, self.worker_id, progress)
            if job is None:
                raise JobLost(job_id)
            return job

    def _ingest(self, job_id: int, output: Path, watch: _Watch, *, final: bool = False) -> None:
        text = watch.log.read_text(final=final)
        rows, problems = watch.metrics.read_rows(final=final)
        text += "".join(f"[redline] {problem}\n" for problem in problems)
        watch.progress = read_progress(output, watch.progress)
        if not text and not rows:
            return
        with self.session_factory() as session:
            # The offset and the text it covers commit together, so a worker that adopts the job stores no
            # line twice. The UPDATE comes first: on SQLite it opens the transaction, which append_log's
            # savepoint would otherwise open and, released, commit on its own.
            jobs.set_log_offset(session, job_id, watch.log.offset)
            jobs.append_log(session, job_id, text)
            jobs.record_metrics(session, job_id, rows)

    def _release(self, launch: Launch, execution: Execution) -> None:
        note = (f"worker {self.worker_id} stopped; {launch.backend} job {execution.handle} goes on, and the next "
                f"{launch.backend} worker follows it")
        with self.session_factory() as session:
            jobs.release_job(session, launch.job_id, self.worker_id, note)

    def _followed_elsewhere(self, job_id: int) -> bool:
        """Whether another worker has adopted the job (it is still running, under another worker)."""
        with self.session_factory() as session:
            job = session.get(Job, job_id)
            return job is not None and job.status == JobStatus.RUNNING and job.worker_id != self.worker_id

    def _note(self, job_id: int, execution: Execution) -> None:
        notes = execution.notes()
        if notes:
            self._append_log(job_id, "".join(f"[redline] {note}\n" for note in notes))

    def _append_log(self, job_id: int, text: str) -> None:
        with self.session_factory() as session:
            jobs.append_log(session, job_id, text)

    def _finish(self, job_id: int, status: JobStatus, **fields: Any) -> JobStatus | None:
        with self.session_factory() as session:
            if jobs.finish_job(session, job_id, self.worker_id, status, **fields):
                log.info("job %s %s", job_id, status)
                return status
        return None


@dataclass(frozen=True)
class StepResult:
    """How one process of a job ended: exit code (None: never started), why we stopped it, what failed."""

    returncode: int | None
    stop_reason: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.stop_reason and not self.error


@dataclass
class _Watch:
    log: LogTailer
    metrics: MetricsTailer
    progress: float | None = None  # of this process
    span: tuple[float, float] = (0.0, 1.0)  # the part of the job's progress this process fills

    @property
    def overall(self) -> float | None:
        return None if self.progress is None else self.span[0] + self.span[1] * self.progress


def _last_line(log: Path) -> str:
    """The last line a failed process wrote (its error, as a rule), for the reason a stage failed."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()] if log.exists() else []
    return lines[-1].strip()[:500] if lines else "no output"


def read_progress(output_dir: Path, previous: float | None) -> float | None:
    """step / total_steps from progress.json; the previous value while the file is absent or mid-write."""
    try:
        data = json.loads((output_dir / "progress.json").read_text())
        total = float(data["total_steps"])
        return min(1.0, max(0.0, float(data["step"]) / total)) if total > 0 else previous
    except (OSError, ValueError, KeyError, TypeError):
        return previous


def read_eval(output_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((output_dir / "eval.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else {"value": data}


def _artifact(entry: Path) -> dict[str, Any]:
    if entry.is_file():
        return {"name": entry.name, "type": "file", "bytes": entry.stat().st_size}
    sizes = [(is_resume_state(p), p.stat().st_size) for p in entry.rglob("*") if p.is_file()]
    return {"name": entry.name, "type": "dir", "bytes": sum(size for state, size in sizes if not state),
            "resume_bytes": sum(size for state, size in sizes if state)}


def list_artifacts(output_dir: Path) -> list[dict[str, Any]]:
    """The top-level entries of the output folder: checkpoints (folders) and files, with their download
    sizes (a checkpoint's resume state counted apart)."""
    if not output_dir.is_dir():
        return []
    return [_artifact(entry) for entry in sorted(output_dir.iterdir()) if not entry.is_symlink()]
