"""The command line the worker runs for a job."""

from __future__ import annotations

import sys
from pathlib import Path

from app.worker.command import Placement, job_command, launch_command
from app.worker.tailer import as_terminal_shows


def test_one_process_runs_the_training_cli_directly():
    argv = job_command("figa", Path("/j/config.yaml"), Path("/j/out"))
    assert argv == [
        sys.executable, "-m", "training", "figa", "--config", "/j/config.yaml", "--set", "output_dir=/j/out"
    ]
    assert launch_command(argv, Placement()) == argv


def test_several_processes_go_through_accelerate_launch():
    argv = launch_command(job_command("ppo", Path("/j/config.yaml"), Path("/j/out")), Placement(processes=4))
    assert argv[:6] == [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "4"]
    assert argv[6:] == ["-m", "training", "ppo", "--config", "/j/config.yaml", "--set", "output_dir=/j/out"]


def test_several_machines_get_their_rank_and_the_main_address():
    placement = Placement(4, machines=2, machine_rank="$SLURM_NODEID", main_address="10.0.0.1", main_port="29500")
    argv = launch_command([sys.executable, "train.py", "--x"], placement)
    assert argv[6:] == [
        "--num_machines", "2", "--machine_rank", "$SLURM_NODEID",
        "--main_process_ip", "10.0.0.1", "--main_process_port", "29500", "train.py", "--x",
    ]  # fmt: skip


def test_logs_are_stored_as_a_terminal_shows_them():
    raw = "train:  10%|#\rtrain:  50%|#####\rtrain: 100%|##########\n\x1b[1mREPORT\x1b[0m ok\r\nplain\n"
    assert as_terminal_shows(raw) == "train: 100%|##########\nREPORT ok\nplain\n"
