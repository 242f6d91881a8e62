"""Configuration from the environment and `.env` (pydantic-settings). Every setting is in the README."""

from __future__ import annotations

import contextlib
import os
import secrets
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_prefix="REDLINE_", extra="ignore")

    # The one setting without the prefix: the convention every deployment tool knows.
    database_url: str = Field(default="", validation_alias="DATABASE_URL")
    data_dir: Path = Path("var")
    secret_key: str = ""
    default_model: str = "var/models/SmolLM2-135M-Instruct"
    host: str = "127.0.0.1"
    port: int = 8000
    web_workers: int = 1
    # Threads per web worker process that run request handlers; each holds at most one database
    # connection, so this is also the size of each process's connection pool. More threads than cores
    # mostly fight over Python's GIL; a few cover the time spent waiting on the database.
    web_threads: int = Field(default=8, ge=1, le=200)
    session_max_age_s: int = 14 * 24 * 3600
    # Checked login sessions each web process keeps in memory (Postgres only; 0: check every request
    # in the database). See app/session_cache.py for how changes reach it.
    session_cache_entries: int = Field(default=10_000, ge=0)
    secure_cookies: bool = False
    max_upload_mb: int = 200
    login_attempts_per_minute: int = 10
    # The lease time a new project starts with (each project can change its own): 30 s to 7 days.
    lease_seconds_default: int = Field(default=30 * 60, ge=30, le=7 * 24 * 3600)
    worker_heartbeat_s: float = 5.0
    worker_stale_after_s: float = 60.0
    worker_poll_s: float = 1.0
    # After SIGTERM to a cancelled job's process group, wait this long before SIGKILL.
    worker_cancel_grace_s: float = 20.0
    # The backends this worker runs jobs on, comma-separated: `local` (its own machine), `slurm`
    # (batch jobs through sbatch; see docs/jobs.md "Running on a Slurm cluster").
    worker_backends: str = "local"
    # How often a running Slurm job's state is asked of squeue (the log and metrics are read as often
    # as REDLINE_WORKER_POLL_S from the shared filesystem).
    slurm_poll_s: float = Field(default=10.0, gt=0)
    # Defaults for jobs that leave the field empty, and #SBATCH lines for every job (newline or `;`).
    slurm_partition: str = ""
    slurm_account: str = ""
    slurm_sbatch: str = ""
    # Shell lines the batch script runs before the training (e.g. `module load cuda/12.4`).
    slurm_setup: str = ""
    # A multi-node job's main process listens on this port plus (Slurm job id mod 10000).
    slurm_main_port: int = Field(default=20000, ge=1024, le=55535)
    webhook_timeout_s: float = 5.0
    # Deliveries that keep failing are retried with exponential backoff (30 s doubling, capped at 1 h)
    # and marked failed after this many attempts.
    webhook_max_attempts: int = 8
    # Freezing a dataset version (app/services/freeze.py): edit ids per range (one INSERT … SELECT each), and
    # how many database connections write ranges at once on Postgres (1: one transaction, one connection).
    freeze_span_ids: int = Field(default=20_000, ge=1)
    freeze_connections: int = Field(default=4, ge=1, le=64)
    pseudonym_salt: str = ""

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'redline.db'}"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "jobs"

    def resolved_secret_key(self) -> str:
        """The configured key, or one generated on first run and kept under the data directory."""
        if self.secret_key:
            return self.secret_key
        path = self.data_dir / "secret_key"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            # Unique per call: threads of one process must not share (and unlink) each other's file.
            tmp = path.with_name(f".secret_key.{os.getpid()}.{secrets.token_hex(4)}")
            tmp.write_text(secrets.token_urlsafe(48))
            tmp.chmod(0o600)
            # link() refuses to overwrite: of two processes starting at once, the first key wins.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
            tmp.unlink()
        return path.read_text().strip()


@lru_cache
def get_settings() -> Settings:
    return Settings()
