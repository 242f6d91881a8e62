"""The command line the worker runs for a job."""

from __future__ import annotations

import sys
from pathlib import Path

from app.worker.command import job_command
from app.worker.tailer import as_terminal_shows


def test_one_process_runs_the_training_cli_directly():
    argv = job_command("figa", Path("/j/config.yaml"), Path("/j/out"), 1)
    assert argv == [
        sys.executable, "-m", "training", "figa", "--config", "/j/config.yaml", "--set", "output_dir=/j/out"
    ]


def test_several_processes_go_through_accelerate_launch():
    argv = job_command("ppo", Path("/j/config.yaml"), Path("/j/out"), 4)
    assert argv[:5] == [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "4"]
    assert argv[5:] == ["-m", "training", "ppo", "--config", "/j/config.yaml", "--set", "output_dir=/j/out"]


def test_logs_are_stored_as_a_terminal_shows_them():
    raw = "train:  10%|#\rtrain:  50%|#####\rtrain: 100%|##########\n\x1b[1mREPORT\x1b[0m ok\r\nplain\n"
    assert as_terminal_shows(raw) == "train: 100%|##########\nREPORT ok\nplain\n"
