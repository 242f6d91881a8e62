"""Several processes under `accelerate launch` (one gloo process group on CPU), and a checkpoint written
by two processes resumed by one: the optimizer and scheduler state are whole on every data-parallel rank,
and steps count optimizer updates, not per-rank batches. (Sharded runs: test_training_sharded.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from training_fixtures import ROOT, edit_rows, write_export

from app.worker.command import Placement, launch_command
from training.models import RewardModel

pytestmark = [pytest.mark.slow]


def token_rm(out: Path, data: Path, model: Path, processes: int, *settings: str) -> str:
    return launch("token-rm", out, data, model, processes, "--set", "batch_size=2", "--set", "logging_steps=1",
                  "--set", "val_fraction=0.2", *settings)


def launch(kind: str, out: Path, data: Path, model: Path, processes: int, *settings: str) -> str:
    program = [sys.executable, "-m", "training", kind, "--set", f"model={model}", "--set", f"data={data}",
               "--set", f"output_dir={out}", *settings]
    done = subprocess.run(launch_command(program, Placement(processes=processes)), cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def test_a_two_process_checkpoint_resumes_in_one_process(tiny_model: Path, tmp_path: Path):
    data = write_export(tmp_path / "export.jsonl", edit_rows(16))
    out = tmp_path / "run"
    log = token_rm(out, data, tiny_model, 2, "--set", "max_steps=2", "--set", "save_steps=1")
    assert "[training] process 0 of 2" in log and "[training] process 1 of 2" in log
    assert (out / "checkpoint-2" / "trainer_state.pt").is_file()

    token_rm(out, data, tiny_model, 1, "--set", "max_steps=4", "--set", "resume=true")
    steps = [row["step"] for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in row]
    assert steps == [1, 2, 3, 4]  # the one-process run went on from step 3
    assert json.loads((out / "eval.json").read_text())["step"] == 4
    model = RewardModel.from_pretrained(out / "model")
    assert model.head_kind == "token" and model.head.weight.shape == (1, model.backbone.config.hidden_size)


def test_two_process_ppo_saves_the_value_model_and_resumes_in_one(tiny_model: Path, tmp_path: Path):
    data = write_export(tmp_path / "export.jsonl", edit_rows(16))
    rm = tmp_path / "rm"
    token_rm(rm, data, tiny_model, 1, "--set", "max_steps=1")
    out = tmp_path / "ppo"
    settings = ["--set", f"reward_model={rm / 'model'}", "--set", "rollout_batch_size=2", "--set",
                "max_new_tokens=4", "--set", "ppo_epochs=1", "--set", "learning_rate=1e-2", "--set", "batch_size=2"]
    log = launch("ppo", out, data, tiny_model, 2, *settings, "--set", "num_iterations=1")
    assert "[training] process 1 of 2" in log
    checkpoint = out / "checkpoint-1"
    value = RewardModel.from_pretrained(checkpoint / "value_model")
    start = RewardModel.from_pretrained(rm / "model")
    assert value.head_kind == "value" and value.head.weight.shape == start.head.weight.shape
    assert not torch.equal(value.head.weight, start.head.weight)  # the value head trained from the RM's
    assert (out / "model" / "value_model" / "reward_head.safetensors").is_file()

    launch("ppo", out, data, tiny_model, 1, *settings, "--set", "num_iterations=2", "--set", "resume=true")
    steps = [row["step"] for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if "objective/kl" in row]
    assert steps == [1, 2]  # the one-process run went on from the two-process checkpoint
