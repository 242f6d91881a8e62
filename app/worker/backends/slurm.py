"""The Slurm backend: a job step is a batch job, submitted with `sbatch`, followed with `squeue`/`sacct`.

The worker runs on the login node (or any host with Slurm's client commands and the shared
filesystem). It writes a batch script into the job's folder; the script's output is the job's log
(`--output`, appended), and the training CLI writes `out/` there too, so the runner tails the very
files it tails for a local run. On several nodes the script starts one `accelerate launch` per node
with `srun`, each with its node's rank and the first node's address.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from collections.abc import Sequence

from app.services.cluster import parse_sbatch_lines
from app.settings import Settings
from app.worker.backends import BackendError, Launch
from app.worker.command import Placement, launch_command

# States after which Slurm will not run the job again (squeue's %T, sacct's State without "by UID").
ENDED_STATES = frozenset(
    {"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
     "PREEMPTED", "SPECIAL_EXIT"}
)  # fmt: skip
UNKNOWN_JOB = "Invalid job id"
COMMAND_TIMEOUT_S = 60.0
SHELL_VARIABLE = re.compile(r"^\$[A-Z_][A-Z0-9_]*$")


def _shell_word(arg: str) -> str:
    """One word of the batch script: a variable the script expands (`$SLURM_NODEID`), else quoted."""
    return f'"{arg}"' if SHELL_VARIABLE.match(arg) else shlex.quote(arg)


def _shell_line(argv: Sequence[str]) -> str:
    return " ".join(_shell_word(arg) for arg in argv)


def settings_lines(settings: Settings) -> tuple[str, ...]:
    """The deployment's extra `#SBATCH` lines (REDLINE_SLURM_SBATCH, lines or `;`-separated)."""
    return parse_sbatch_lines(settings.slurm_sbatch.replace(";", "\n"), "REDLINE_SLURM_SBATCH line")


def batch_script(launch: Launch, settings: Settings) -> str:
    """The batch script of one job step: `#SBATCH` lines from the request, then the launch."""
    request = launch.slurm
    options = [
        f"--job-name=redline-{launch.job_id}-{launch.step_name}",
        f"--output={launch.log}",
        "--open-mode=append",
        f"--nodes={request.nodes}",
        "--ntasks-per-node=1",
    ]
    if request.gpus_per_node:
        options.append(f"--gpus-per-node={request.gpus_per_node}")
    for flag, value, default in (
        ("--partition", request.partition, settings.slurm_partition),
        ("--account", request.account, settings.slurm_account),
        ("--time", request.time_limit, ""),
    ):
        if value or default:
            options.append(f"{flag}={value or default}")
    # The deployment's lines first, the job's after: for a repeated option sbatch takes the last.
    options += [*settings_lines(settings), *request.sbatch]
    lines = ["#!/bin/bash", *(f"#SBATCH {option}" for option in options)]
    lines += [
        f"# Written by the Redline worker for job {launch.job_id}; runs in the directory it was submitted from.",
        "set -eo pipefail",
        "export PYTHONUNBUFFERED=1",
        *([settings.slurm_setup] if settings.slurm_setup else []),
        'echo "[redline] Slurm job $SLURM_JOB_ID runs on $SLURM_JOB_NODELIST"',
    ]
    processes = request.processes_per_node(launch.processes) * request.nodes
    if request.nodes == 1:
        single = Placement(processes=processes, config_file=launch.accelerate_config)
        lines.append("exec " + _shell_line(launch_command(launch.program, single)))
        return "\n".join(lines) + "\n"
    placement = Placement(
        processes=processes,
        machines=request.nodes,
        machine_rank="$SLURM_NODEID",
        main_address="$REDLINE_MAIN_ADDR",
        main_port="$REDLINE_MAIN_PORT",
        config_file=launch.accelerate_config,
    )
    lines += [
        # The first node of the allocation is the main process's machine; its NodeAddr is how the
        # others reach it (the node name need not resolve).
        'first_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "REDLINE_MAIN_ADDR=$(scontrol show node \"$first_node\" | sed -n 's/.* NodeAddr=\\([^ ]*\\).*/\\1/p')",
        f"REDLINE_MAIN_PORT=$(( {settings.slurm_main_port} + SLURM_JOB_ID % 10000 ))",
        "export REDLINE_MAIN_ADDR REDLINE_MAIN_PORT",
        "launch_on_node() {",
        "    exec " + _shell_line(launch_command(launch.program, placement)),
        "}",
        "export -f launch_on_node",
        # One launcher per node; any that fails ends the others (no rank waits forever for a dead peer).
        "srun --kill-on-bad-exit=1 --nodes=\"$SLURM_NNODES\" --ntasks-per-node=1 bash -c launch_on_node",
    ]
    return "\n".join(lines) + "\n"


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
    except FileNotFoundError as exc:
        raise BackendError(f"{argv[0]} is not installed on the worker's machine (Slurm's client commands)") from exc
    except subprocess.TimeoutExpired as exc:
        raise BackendError(f"{argv[0]} did not answer within {COMMAND_TIMEOUT_S:g} s") from exc


def _fields(text: str) -> dict[str, str]:
    """`scontrol show job -o` output as {key: value}."""
    return dict(token.split("=", 1) for token in text.split() if "=" in token)


def exit_code(slurm_code: str) -> int:
    """Slurm's "CODE:SIGNAL" as a shell would report it."""
    code, _, sig = slurm_code.partition(":")
    if code.isdigit() and int(code):
        return int(code)
    return 128 + int(sig) if sig.isdigit() and int(sig) else 0


class SlurmExecution:
    terminate_note = "scancel (Slurm sends SIGTERM, then SIGKILL after its KillWait)"
    kill_note = "scancel --signal=KILL"

    def __init__(self, job_id: str, poll_s: float, note: str) -> None:
        self.handle = job_id
        self.poll_s = poll_s
        self._next_query = 0.0
        self._state = ""
        self._reason = ""
        self._nodes = ""
        self._end: tuple[int, str] | None = None  # (exit code, failure)
        self._notes = [note]

    # --- querying Slurm -------------------------------------------------------------------------

    def _query(self) -> None:
        """Ask squeue for the job's state; once it has ended, scontrol (or sacct) for how."""
        done = _run(["squeue", "-h", "--states=all", "-j", self.handle, "-o", "%T|%r|%N"])
        if done.returncode != 0 and UNKNOWN_JOB not in done.stderr:
            self._note_once(f"squeue failed ({done.stderr.strip()}); retrying")
            return
        line = done.stdout.strip().splitlines()[0] if done.stdout.strip() else ""
        if line:
            state, reason, nodes = [*line.split("|"), "", ""][:3]
            self._observe(state, reason, nodes)
            if state not in ENDED_STATES:
                return
        self._end = self._final()

    def _observe(self, state: str, reason: str, nodes: str) -> None:
        if state == "PENDING" and reason != self._reason:
            waiting = f" ({reason})" if reason and reason != "None" else ""
            self._notes.append(f"Slurm job {self.handle} is pending{waiting}")
        elif state != self._state and state not in ENDED_STATES:
            self._notes.append(f"Slurm job {self.handle} is {state.lower()}" + (f" on {nodes}" if nodes else ""))
        self._state, self._reason, self._nodes = state, reason, nodes

    def _final(self) -> tuple[int, str]:
        """(exit code, failure) of the ended job, from slurmctld's memory or from accounting."""
        done = _run(["scontrol", "show", "job", "-o", self.handle])
        if done.returncode == 0 and done.stdout.strip():
            info = _fields(done.stdout)
            state, reason, code = info.get("JobState", ""), info.get("Reason", ""), info.get("ExitCode", "")
        else:
            done = _run(["sacct", "-n", "-X", "-P", "-j", self.handle, "-o", "State,Reason,ExitCode"])
            rows = [line.split("|") for line in done.stdout.splitlines() if line.count("|") == 2]
            if done.returncode != 0 or not rows:
                detail = (done.stderr or done.stdout).strip()
                return 1, f"Slurm no longer knows job {self.handle}, and accounting has no record of it ({detail})"
            state, reason, code = rows[0]
            state = state.split()[0]  # "CANCELLED by 0"
        if state == "COMPLETED":
            return 0, ""
        returncode = exit_code(code) or 1
        because = f"reason: {reason}, " if reason and reason != "None" else ""
        return returncode, f"Slurm job {self.handle} ended {state} ({because}exit code {code})"

    def _note_once(self, text: str) -> None:
        if text not in self._notes:
            self._notes.append(text)

    # --- the Execution interface ----------------------------------------------------------------

    def poll(self) -> int | None:
        if self._end is None and time.monotonic() >= self._next_query:
            self._next_query = time.monotonic() + self.poll_s
            self._query()
        return None if self._end is None else self._end[0]

    def wait(self, timeout: float) -> None:
        time.sleep(max(0.0, min(timeout, self._next_query - time.monotonic())))

    def terminate(self) -> None:
        # Slurm signals every step (SIGCONT, SIGTERM), then SIGKILL after the cluster's KillWait.
        self._scancel([])
        self._next_query = 0.0

    def kill(self) -> None:
        self._scancel(["--signal=KILL", "--full"])
        self._scancel([])
        self._next_query = 0.0

    def _scancel(self, options: list[str]) -> None:
        done = _run(["scancel", *options, self.handle])
        if done.returncode != 0:
            self._note_once(f"scancel {' '.join(options)} failed: {done.stderr.strip()}")

    def failure(self) -> str:
        return "" if self._end is None else self._end[1]

    def notes(self) -> list[str]:
        notes, self._notes = self._notes, []
        return notes


class SlurmBackend:
    name = "slurm"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def start(self, launch: Launch) -> SlurmExecution:
        script = launch.folder / f"{launch.step_name}.sbatch"
        script.write_text(batch_script(launch, self.settings))
        done = _run(["sbatch", "--parsable", str(script)])
        if done.returncode != 0:
            raise BackendError(f"sbatch refused {script.name}: {done.stderr.strip()}")
        job_id = done.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise BackendError(f"sbatch answered {done.stdout.strip()!r}, not a job id")
        return SlurmExecution(job_id, self.settings.slurm_poll_s, f"submitted as Slurm job {job_id}")

    def follow(self, handle: str) -> SlurmExecution:
        return SlurmExecution(handle, self.settings.slurm_poll_s, f"following Slurm job {handle}")

    def abandon(self, handle: str) -> None:
        _run(["scancel", handle])

