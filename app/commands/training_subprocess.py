"""Running the training module as a child process: the web app itself never imports torch."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence


def training_command(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "training", *args]


def run_training(args: Sequence[str]) -> int:
    return subprocess.call(training_command(args))
