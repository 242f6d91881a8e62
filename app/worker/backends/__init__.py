"""Job backends: where a job's processes run. One interface, two engines.

* `local`: a process group on the worker's own machine (app/worker/backends/local.py);
* `slurm`: a batch job submitted with `sbatch` and followed with `squeue`/`sacct`
  (app/worker/backends/slurm.py); its files land on the shared filesystem the worker reads.

The runner (app/worker/runner.py) starts a `Launch` through a backend and watches the `Execution`
it returns exactly the same way for both: it tails the log and metrics files, heartbeats, and
asks the execution to stop on cancel. A Slurm job outlives its worker (cluster.OUTLIVE_WORKER): a
worker that stops leaves it running, and the next Slurm worker `follow`s it by its job id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from app.services.cluster import LOCAL, SlurmRequest, sharding_config


@dataclass(frozen=True)
class Launch:
    """One step of a job: a training CLI process (`program`, argv of one process) and its resources."""

    job_id: int
    program: list[str]
    processes: int
    folder: Path  # the job's folder (config, data, log, out/)
    log: Path
    slurm: SlurmRequest = field(default_factory=SlurmRequest)
    sharding: str = ""  # an Accelerate config of training/accelerate/ ("fsdp", "zero2", "zero3"), or none
    step_name: str = "train"
    backend: str = LOCAL  # the backend's name (cluster.BACKENDS)

    @property
    def accelerate_config(self) -> Path | None:
        return sharding_config(self.sharding) if self.sharding else None


class Execution(Protocol):
    """A started step, as the runner sees it."""

    handle: str  # what identifies it to its engine: a pid, a Slurm job id
    terminate_note: str  # what terminate() does, for the job's log
    kill_note: str

    def poll(self) -> int | None:
        """The exit code once it has ended, else None."""

    def wait(self, timeout: float) -> None:
        """Return when it ends or after `timeout` seconds."""

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM to the process group; `scancel`)."""

    def kill(self) -> None:
        """Stop it now, with whatever is left of it."""

    def failure(self) -> str:
        """Why it ended badly, in the engine's words ("" when the exit code says it all)."""

    def notes(self) -> list[str]:
        """New lines for the job's log about the engine's view (queued, started on nodes ...)."""


class Backend(Protocol):
    name: str

    def start(self, launch: Launch) -> Execution:
        """Start the step; raises OSError (or BackendError) when it cannot be started."""

    def abandon(self, handle: str) -> None:
        """Stop a step whose worker was lost (its job was reaped as stale)."""


class FollowingBackend(Backend, Protocol):
    """A backend whose steps outlive their worker (cluster.OUTLIVE_WORKER)."""

    def follow(self, handle: str) -> Execution:
        """The execution of a step started earlier, by this or another worker, known by its handle."""


class BackendError(RuntimeError):
    """The engine refused the step (e.g. `sbatch` rejected the script); the message says why."""
