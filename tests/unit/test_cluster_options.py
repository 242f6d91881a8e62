"""A Slurm job's resource request, its batch script, and the sharding configs (no cluster needed)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from app.services.cluster import (
    SHARDING,
    ClusterOptionError,
    SlurmRequest,
    check_sharding,
    parse_sbatch_lines,
    parse_slurm_request,
    sharding_config,
)
from app.settings import Settings
from app.worker.backends import Launch
from app.worker.backends.slurm import batch_script, exit_code


def launch(tmp_path: Path, request: SlurmRequest, processes: int = 1, sharding: str = "") -> Launch:
    return Launch(job_id=7, program=[sys.executable, "-m", "training", "token-rm", "--config", "c y.yaml"],
                  processes=processes, folder=tmp_path, log=tmp_path / "train.log", slurm=request, sharding=sharding)


def test_a_request_is_read_from_the_form():
    form = {"slurm_nodes": "2", "slurm_gpus_per_node": "8", "slurm_partition": "gpu", "slurm_time_limit": "1-12:00:00",
            "slurm_account": "alignment", "slurm_sbatch": "#SBATCH --qos=high\n\n--mem=200G\n"}
    assert parse_slurm_request(form, 16) == SlurmRequest(
        nodes=2, gpus_per_node=8, partition="gpu", time_limit="1-12:00:00", account="alignment",
        sbatch=("--qos=high", "--mem=200G"),
    )
    assert parse_slurm_request({}, 1) == SlurmRequest()


def test_bad_requests_name_the_field_and_line():
    form = {"slurm_nodes": "0", "slurm_partition": "gpu;rm -rf", "slurm_time_limit": "soon",
            "slurm_sbatch": "--qos=high\n--output=/tmp/x"}
    with pytest.raises(ClusterOptionError) as caught:
        parse_slurm_request(form, 1)
    assert caught.value.errors == {
        "slurm_nodes": "a whole number from 1 to 64",
        "slurm_partition": "letters, digits and . , _ + - only",
        "slurm_time_limit": "minutes, or Slurm's [D-]HH:MM:SS (e.g. 90, 4:00:00, 2-00:00:00)",
        "slurm_sbatch": "line 2: --output is set by Redline (the job's log is written to its folder)",
    }
    with pytest.raises(ClusterOptionError, match="3 processes must divide evenly"):
        parse_slurm_request({"slurm_nodes": "2"}, 3)
    with pytest.raises(ValueError, match="line 1: 'echo hi' is not an sbatch option"):
        parse_sbatch_lines("echo hi")
    with pytest.raises(ValueError, match="line 1: control characters"):
        parse_sbatch_lines(["--comment=a\x1b[2J"])


def test_one_node_script_runs_the_step_itself(tmp_path):
    request = SlurmRequest(gpus_per_node=1, time_limit="90", sbatch=("--qos=high",))
    script = batch_script(launch(tmp_path, request), Settings(slurm_partition="gpu", slurm_sbatch="--mem=32G"))
    assert script.startswith("#!/bin/bash\n#SBATCH --job-name=redline-7-train\n")
    for line in (f"#SBATCH --output={tmp_path}/train.log", "#SBATCH --open-mode=append", "#SBATCH --nodes=1",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --partition=gpu", "#SBATCH --time=90",
                 "#SBATCH --mem=32G\n#SBATCH --qos=high"):
        assert line in script
    assert "--account" not in script and "srun" not in script
    assert f"exec {sys.executable} -m training token-rm --config 'c y.yaml'\n" in script
    check = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True, check=False)
    assert check.returncode == 0, check.stderr


def test_several_nodes_start_one_launcher_each_with_its_rank(tmp_path):
    script = batch_script(launch(tmp_path, SlurmRequest(nodes=2, gpus_per_node=4), 8, "zero3"), Settings())
    assert "#SBATCH --nodes=2\n#SBATCH --ntasks-per-node=1\n#SBATCH --gpus-per-node=4" in script
    assert f"--config_file {sharding_config('zero3')} --num_processes 8 --num_machines 2" in script
    assert '--machine_rank "$SLURM_NODEID" --main_process_ip "$REDLINE_MAIN_ADDR"' in script
    assert "srun --kill-on-bad-exit=1" in script and "bash -c launch_on_node" in script
    check = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True, check=False)
    assert check.returncode == 0, check.stderr


def test_slurm_exit_codes_read_as_a_shell_would():
    assert [exit_code(code) for code in ("0:0", "3:0", "0:15", "0:9", "")] == [0, 3, 143, 137, 0]


@pytest.mark.parametrize("name", list(SHARDING))
def test_sharding_configs_are_accelerate_configs(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(sharding_config(name)))
    expected = {"fsdp": "FSDP", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED"}[name]
    assert str(config.distributed_type).endswith(expected)
    if name.startswith("zero"):
        assert config.deepspeed_config["zero_stage"] == int(name[-1])
    else:
        assert config.fsdp_config["fsdp_version"] == 2


def test_sharding_is_checked_for_the_job_form():
    assert check_sharding("", 1) == ""
    assert check_sharding("fsdp", 4) == ""
    assert check_sharding("fsdp", 1) == "sharding needs at least 2 processes"
    assert check_sharding("tp", 4).startswith("choose one of")
    has_deepspeed = importlib.util.find_spec("deepspeed") is not None
    assert (check_sharding("zero2", 4) == "") == has_deepspeed
    if not has_deepspeed:
        assert "install the gpu extra" in check_sharding("zero3", 4)


@pytest.mark.parametrize("variable", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_sharding_on_a_machine_without_cuda_is_refused_not_ignored(monkeypatch, variable):
    import torch

    from training.config import BaseConfig
    from training.run import make_accelerator

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: sharding runs")
    monkeypatch.setenv(variable, "true")
    with pytest.raises(RuntimeError, match="sharding needs GPUs"):
        make_accelerator(BaseConfig(output_dir="unused"))
