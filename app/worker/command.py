"""The command line that runs one job: the training CLI, through `accelerate launch` for several processes."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.commands.training_subprocess import training_command
from app.editors.service import JOB_KIND
from app.services import freeze

# (kind, config file, output dir) -> argv of ONE process (`python -m training ...`). The worker takes
# another builder only in tests, which run a small real program in place of a training run.
CommandBuilder = Callable[[str, Path, Path], list[str]]


def job_command(kind: str, config_path: Path, output_dir: Path) -> list[str]:
    if kind == JOB_KIND:  # a model editor working a project (app/editors/bulk.py): no training
        return [sys.executable, "-m", "app.editors.bulk", "--config", str(config_path), "--output", str(output_dir)]
    if kind == freeze.JOB_KIND:  # a dataset version frozen inside the database (app/services/freeze.py)
        return [sys.executable, "-m", "app.services.freeze", "--config", str(config_path), "--output", str(output_dir)]
    return training_command([kind, "--config", str(config_path), "--set", f"output_dir={output_dir}"])


@dataclass(frozen=True)
class Placement:
    """Where a job's processes run. On several machines the rank and main address are shell words
    (`$SLURM_NODEID`) that the batch script expands on each node."""

    processes: int = 1
    machines: int = 1
    machine_rank: str = "0"
    main_address: str = ""
    main_port: str = ""
    config_file: Path | None = None  # an Accelerate config (FSDP, DeepSpeed ZeRO): training/accelerate/


def launch_command(program: list[str], placement: Placement) -> list[str]:
    """`program` (an interpreter, then `-m module` or a script, then its arguments) as it runs under
    `placement`: itself for one process, else `accelerate launch` of the same module or script."""
    if placement.processes <= 1 and placement.machines <= 1:
        return program
    # `python -m accelerate.commands.launch` is `accelerate launch` with this very interpreter.
    launcher = [sys.executable, "-m", "accelerate.commands.launch"]
    if placement.config_file is not None:
        launcher += ["--config_file", str(placement.config_file)]
    else:
        # `--multi_gpu` selects accelerate's torchrun launcher, the one that starts several processes (on
        # CPU nodes too: the training then joins them with gloo).
        launcher.append("--multi_gpu")
    launcher += ["--num_processes", str(placement.processes)]
    if placement.machines > 1:
        launcher += [
            "--num_machines", str(placement.machines),
            "--machine_rank", placement.machine_rank,
            "--main_process_ip", placement.main_address,
            "--main_process_port", placement.main_port,
        ]  # fmt: skip
    return [*launcher, *program[1:]]
