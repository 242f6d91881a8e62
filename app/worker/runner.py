"""Running one claimed job: prepare its folder, start the training process, watch it, record the end."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.orm import Session

from app.models import Job, JobStatus
from app.services import jobs
from app.services.export import stream_export
from app.settings import Settings
from app.worker import process
from app.worker.command import CommandBuilder
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


class JobLost(Exception):
    """The job is no longer ours: reaped as stale, or ended by someone else."""


class JobRunner:
    """Runs one claimed job to its end. `tick` is called on every heartbeat (other worker duties)."""

    def __init__(
        self,
        session_factory: SessionFactory,
        settings: Settings,
        worker_id: str,
        command_for: CommandBuilder,
        *,
        should_stop: Callable[[], bool] = lambda: False,
        tick: Callable[[], None] = lambda: None,
    ) -> None:
        self.session_factory = session_factory
        self.settings = settings
        self.worker_id = worker_id
        self.command_for = command_for
        self.should_stop = should_stop
        self.tick = tick

    # --- preparation ----------------------------------------------------------------------------

    def _write_data(self, job: Job, paths: JobPaths) -> None:
        tmp = paths.data.with_suffix(".jsonl.part")
        with tmp.open("wb") as fh:
            for chunk in stream_export(self.session_factory, job.dataset_version_id, "pairs-jsonl"):
                fh.write(chunk)
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
        """Run the job; returns its final status, or None when it was taken from us."""
        paths = JobPaths.for_job(self.settings.artifacts_dir, job.id)
        try:
            self.prepare(job, paths)
        except Exception as exc:
            log.exception("job %s: preparation failed", job.id)
            self._append_log(job.id, f"[redline] could not prepare the job: {exc}\n")
            return self._finish(job.id, JobStatus.FAILED, error=f"could not prepare the job: {exc}")
        argv = self.command_for(job.kind, paths.config, paths.output, job.num_processes)
        self._append_log(job.id, f"[redline] worker {self.worker_id} runs: {' '.join(argv)}\n")
        log_offset = paths.log.stat().st_size if paths.log.exists() else 0
        try:
            with paths.log.open("ab") as log_file:
                proc = process.start(argv, log_file)
        except OSError as exc:
            self._append_log(job.id, f"[redline] could not start the training process: {exc}\n")
            return self._finish(job.id, JobStatus.FAILED, error=f"could not start {argv[0]}: {exc}")
        with self.session_factory() as session:
            jobs.set_run_paths(session, job.id, output_dir=str(paths.output), log_path=str(paths.log), pid=proc.pid)
        watch = _Watch(LogTailer(paths.log, log_offset), MetricsTailer(paths.output / "metrics.jsonl"))
        try:
            stop_reason = self._monitor(job.id, proc, paths, watch)
        except JobLost:
            log.warning("job %s was taken from worker %s; stopping its process", job.id, self.worker_id)
            process.signal_group(proc, signal.SIGKILL)
            proc.wait()
            return None
        finally:
            process.signal_group(proc, signal.SIGKILL)  # leftovers of the group (data loaders, ranks)
        self._ingest(job.id, paths, watch, final=True)
        return self._conclude(job.id, proc.returncode, stop_reason, paths)

    def _monitor(self, job_id: int, proc: subprocess.Popen[bytes], paths: JobPaths, watch: _Watch) -> str:
        """Watch until the process exits; returns why we stopped it ("" when it ended by itself)."""
        stop_reason, kill_at = "", None
        next_beat = 0.0
        while proc.poll() is None:
            self._ingest(job_id, paths, watch)
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + self.settings.worker_heartbeat_s
                job = self._heartbeat(job_id, watch.progress)
                self.tick()
                if not stop_reason:
                    stop_reason = self._stop_reason(job)
                    if stop_reason:
                        self._append_log(job_id, f"\n[redline] {stop_reason}: sending SIGTERM\n")
                        process.signal_group(proc, signal.SIGTERM)
                        kill_at = now + self.settings.worker_cancel_grace_s
            if kill_at is not None and now >= kill_at:
                self._append_log(job_id, "[redline] still running after the grace period: sending SIGKILL\n")
                process.signal_group(proc, signal.SIGKILL)
                kill_at = None
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=self.settings.worker_poll_s)
        return stop_reason

    def _stop_reason(self, job: Job) -> str:
        if job.cancel_requested:
            return "cancel requested"
        if self.should_stop():
            return "worker shutting down"
        return ""

    def _conclude(self, job_id: int, returncode: int, stop_reason: str, paths: JobPaths) -> JobStatus | None:
        artifacts = list_artifacts(paths.output)
        eval_result = read_eval(paths.output)
        if stop_reason == "cancel requested":
            self._append_log(job_id, f"[redline] cancelled (exit code {returncode})\n")
            return self._finish(job_id, JobStatus.CANCELLED, artifacts=artifacts, eval_result=eval_result)
        if returncode == 0 and not stop_reason:
            self._append_log(job_id, "[redline] finished\n")
            return self._finish(
                job_id, JobStatus.SUCCEEDED, artifacts=artifacts, eval_result=eval_result, progress=1.0
            )
        error = stop_reason or f"training exited with code {returncode}"
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

    def _ingest(self, job_id: int, paths: JobPaths, watch: _Watch, *, final: bool = False) -> None:
        text = watch.log.read_text(final=final)
        rows, problems = watch.metrics.read_rows(final=final)
        text += "".join(f"[redline] {problem}\n" for problem in problems)
        watch.progress = read_progress(paths.output, watch.progress)
        if not text and not rows:
            return
        with self.session_factory() as session:
            jobs.append_log(session, job_id, text)
            jobs.record_metrics(session, job_id, rows)

    def _append_log(self, job_id: int, text: str) -> None:
        with self.session_factory() as session:
            jobs.append_log(session, job_id, text)

    def _finish(self, job_id: int, status: JobStatus, **fields: Any) -> JobStatus | None:
        with self.session_factory() as session:
            if jobs.finish_job(session, job_id, self.worker_id, status, **fields):
                log.info("job %s %s", job_id, status)
                return status
        return None


@dataclass
class _Watch:
    log: LogTailer
    metrics: MetricsTailer
    progress: float | None = None


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


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def list_artifacts(output_dir: Path) -> list[dict[str, Any]]:
    """The top-level entries of the output folder: checkpoints (folders) and files, with sizes."""
    if not output_dir.is_dir():
        return []
    return [
        {"name": entry.name, "type": "dir" if entry.is_dir() else "file", "bytes": _size(entry)}
        for entry in sorted(output_dir.iterdir())
        if not entry.is_symlink()
    ]
