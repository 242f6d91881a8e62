"""The local backend: a job step is a process group on the worker's own machine."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import signal
import subprocess
from collections.abc import Sequence
from typing import IO

from app.worker.backends import Launch
from app.worker.command import Placement, launch_command

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Runs in the child before exec: SIGTERM it when the worker dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the worker died before prctl took effect
        os._exit(1)


def start_process(argv: Sequence[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session (so signals reach the whole group), output into `log`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    parent = os.getpid()
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        preexec_fn=lambda: die_with_parent(parent),
    )


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Send `sig` to the process group (accelerate's workers, data loaders); gone already is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class LocalExecution:
    terminate_note = "sending SIGTERM"
    kill_note = "sending SIGKILL"

    def __init__(self, proc: subprocess.Popen[bytes], argv: list[str]) -> None:
        self.proc = proc
        self.handle = str(proc.pid)
        self._notes = [f"runs: {shlex.join(argv)}"]

    def poll(self) -> int | None:
        code = self.proc.poll()
        if code is not None:
            signal_group(self.proc.pid, signal.SIGKILL)  # leftovers of the group (data loaders, ranks)
        return code

    def wait(self, timeout: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)

    def terminate(self) -> None:
        signal_group(self.proc.pid, signal.SIGTERM)

    def kill(self) -> None:
        signal_group(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def failure(self) -> str:
        return ""

    def notes(self) -> list[str]:
        notes, self._notes = self._notes, []
        return notes


class LocalBackend:
    name = "local"

    def start(self, launch: Launch) -> LocalExecution:
        placement = Placement(processes=launch.processes, config_file=launch.accelerate_config)
        argv = launch_command(launch.program, placement)
        with launch.log.open("ab") as log_file:
            return LocalExecution(start_process(argv, log_file), argv)

    def abandon(self, handle: str) -> None:
        """Nothing to do: the process died with its worker (PR_SET_PDEATHSIG)."""
