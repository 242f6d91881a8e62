"""The command line that runs one job: the training CLI, through `accelerate launch` for several processes."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from app.commands.training_subprocess import training_command
from app.editors.service import JOB_KIND

# (kind, config file, output dir, number of processes) -> argv. The worker takes another builder only
# in tests, which run a small real program in place of a training run.
CommandBuilder = Callable[[str, Path, Path, int], list[str]]


def job_command(kind: str, config_path: Path, output_dir: Path, num_processes: int) -> list[str]:
    if kind == JOB_KIND:  # a model editor working a project: no training, one process
        return [sys.executable, "-m", "app.editors.bulk", "--config", str(config_path), "--output", str(output_dir)]
    args = [kind, "--config", str(config_path), "--set", f"output_dir={output_dir}"]
    if num_processes <= 1:
        return training_command(args)
    # `python -m accelerate.commands.launch` is `accelerate launch` with this very interpreter.
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes)]
    return [*launcher, "-m", "training", *args]
