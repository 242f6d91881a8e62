"""Sharded training on CPU: torch's FSDP2 runs on 2 gloo processes (Accelerate shards only on
accelerators, so fsdp_cpu_run.py shards the models itself, as Accelerate's FSDP config does), and the
runs' checkpoint and final-save code must write whole weights, the token RM's head and the PPO value
model included, with an optimizer state that a one-process, unsharded run resumes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_fixtures import ROOT, edit_rows, write_export

from app.worker.command import Placement, launch_command
from training.cli import main
from training.models import REWARD_HEAD, RewardModel

pytestmark = [pytest.mark.slow]


def assert_same(saved: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], prefix: str) -> None:
    expected = {name.removeprefix(prefix): value for name, value in reference.items() if name.startswith(prefix)}
    assert expected, f"no reference parameters under {prefix!r}"
    for name, value in expected.items():
        assert torch.equal(saved[name], value), name


def test_fsdp_on_two_cpu_processes_saves_whole_weights_and_resumes_unsharded(tiny_model: Path, tmp_path: Path):
    data = write_export(tmp_path / "export.jsonl", edit_rows(16))
    out = tmp_path / "fsdp"
    program = [sys.executable, str(ROOT / "tests" / "training" / "fsdp_cpu_run.py"), str(tiny_model), str(data),
               str(out)]
    done = subprocess.run(launch_command(program, Placement(processes=2)), cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert log.count("[fsdp] token-rm: 22 of 22 parameters are DTensor shards") == 2  # both ranks hold shards
    assert log.count("[fsdp] ppo update") == 2

    # The token RM: backbone and head whole, in the checkpoint and the final folder, equal to the weights
    # gathered by DTensor's own all-gather.
    reference = torch.load(out / "reference-token-rm.pt")
    assert reference["head.weight"].abs().sum() > 0  # trained away from its zero init
    for folder in (out / "token-rm" / "checkpoint-2", out / "token-rm" / "model"):
        assert_same(load_file(str(folder / "model.safetensors")), reference, "backbone.")
        assert_same(load_file(str(folder / REWARD_HEAD)), reference, "head.")
    loaded = RewardModel.from_pretrained(out / "token-rm" / "model")
    assert torch.equal(loaded.head.weight, reference["head.weight"])

    # The optimizer state: whole tensors under parameter names, not one rank's shard.
    state = torch.load(out / "token-rm" / "checkpoint-2" / "trainer_state.pt", weights_only=False)
    moments = state["optimizer"]["state"]["backbone.layers.0.mlp.up_proj.weight"]["exp_avg"]
    assert moments.shape == reference["backbone.layers.0.mlp.up_proj.weight"].shape

    # PPO: the policy and the value model (backbone and value head) of the checkpoint.
    checkpoint = out / "ppo" / "checkpoint-1"
    assert_same(load_file(str(checkpoint / "model.safetensors")), torch.load(out / "reference-policy.pt"), "lm.")
    value_reference = torch.load(out / "reference-value.pt")
    assert_same(load_file(str(checkpoint / "value_model" / "model.safetensors")), value_reference, "backbone.")
    assert_same(load_file(str(checkpoint / "value_model" / REWARD_HEAD)), value_reference, "head.")

    # One process, no sharding, resumes the two-process sharded checkpoint: weights, optimizer, schedule.
    resumed = out / "token-rm"
    assert main(["token-rm", "--set", f"model={tiny_model}", "--set", f"data={data}", "--set", f"output_dir={resumed}",
                 "--batch_size", "2", "--max_steps", "3", "--learning_rate", "1e-2", "--val_fraction", "0.2",
                 "--resume", "true"]) == 0
    steps = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps[0] == 3 and json.loads((resumed / "eval.json").read_text())["step"] == 3
