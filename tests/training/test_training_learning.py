"""Learning, not just running: the token RM overfits, FIGA moves the right tokens, PPO raises a toy score."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from training_fixtures import edit_rows, write_export

from training.config import load_config
from training.evaluate import pair_metrics
from training.models import RewardModel
from training.ppo import PPOTrainer
from training.trainers import FigaTrainer, TokenRMTrainer


def test_token_rm_overfits_eight_pairs(tiny_model: Path, tmp_path: Path):
    data = write_export(tmp_path / "e.jsonl", edit_rows(8))
    cfg = load_config("token-rm", None, {
        "model": str(tiny_model), "data": str(data), "output_dir": str(tmp_path / "rm"), "val_fraction": 0.0,
        "learning_rate": 3e-3, "max_steps": 40, "batch_size": 8, "logging_steps": 10,
    })
    trainer = TokenRMTrainer(cfg)
    assert len(trainer.train_items) == 8
    untrained = RewardModel.from_backbone(str(tiny_model), "token").eval()
    before = pair_metrics(untrained, trainer.train_items, trainer.fmt.pad_id, 8, torch.device("cpu"))
    trainer.train()
    model = RewardModel.from_pretrained(tmp_path / "rm" / "model").eval()
    after = pair_metrics(model, trainer.train_items, trainer.fmt.pad_id, 8, torch.device("cpu"))
    assert before["edit_span_accuracy"] < 1.0
    assert after["edit_span_accuracy"] == 1.0
    assert after["token_auroc"] > 0.9


def test_figa_raises_inserted_and_lowers_deleted_logprobs(tiny_model: Path, tmp_path: Path):
    # A random model has CE ≈ log(vocab) ≈ 10.8 on every token, above the default τ = 0.6, so the
    # negative term would be gated off entirely; τ = 100 lets it act.
    data = write_export(tmp_path / "e.jsonl", edit_rows(8))
    cfg = load_config("figa", None, {
        "model": str(tiny_model), "data": str(data), "output_dir": str(tmp_path / "figa"), "val_fraction": 0.0,
        "learning_rate": 3e-3, "max_steps": 15, "batch_size": 8, "tau": 100.0, "beta": 0.5,
    })
    trainer = FigaTrainer(cfg)
    start = trainer.edit_logps(trainer.build_model(None).eval(), trainer.train_items)
    trainer.train()
    trained = trainer.build_model(tmp_path / "figa" / "model").eval()
    end = trainer.edit_logps(trained, trainer.train_items)
    assert end["logp_inserted"] > start["logp_inserted"] + 1.0, (start, end)
    assert end["logp_deleted"] < start["logp_deleted"] - 0.1, (start, end)


class ToyTokenReward(nn.Module):
    """+1 for tokens of a fixed 'good' half of the vocabulary, −1 otherwise (a known per-token reward)."""

    head_kind = "token"

    def __init__(self, good: Tensor) -> None:
        super().__init__()
        self.register_buffer("good", good)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.good[input_ids].float() * 2 - 1


@pytest.mark.slow
def test_fine_grained_ppo_raises_toy_score(tiny_model: Path, tmp_path: Path, export_file: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # The default init (std 0.02) makes a 49k-way softmax almost uniform and nearly immovable in a few
    # steps; larger embeddings give the tiny policy logits it can actually shift.
    policy_dir = tmp_path / "policy"
    lm = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        lm.get_input_embeddings().weight.mul_(8.0)
    lm.save_pretrained(policy_dir)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(policy_dir)
    # Good tokens: those whose embedding points along one direction, so the policy can reach all of them
    # by moving its hidden state (a known per-token gold reward).
    embeddings = lm.get_input_embeddings().weight.detach()
    good = embeddings @ torch.randn(embeddings.shape[1], generator=torch.Generator().manual_seed(0)) > 0
    value_init = tmp_path / "value-init"
    RewardModel.from_backbone(str(policy_dir), "token").save(value_init, base_model=str(policy_dir))
    cfg = load_config("ppo", None, {
        "model": str(policy_dir), "data": str(export_file), "output_dir": str(tmp_path / "ppo"),
        "value_model": str(value_init), "reward": "token", "num_iterations": 12, "rollout_batch_size": 16,
        "max_new_tokens": 8, "learning_rate": 1e-2, "kl_coef": 0.01, "batch_size": 8,
    })
    PPOTrainer(cfg, reward_model=ToyTokenReward(good)).train()
    lines = [json.loads(line) for line in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    scores = [m["objective/scores"] for m in lines if "objective/scores" in m]
    assert len(scores) == 12
    first, last = sum(scores[:3]) / 3, sum(scores[-3:]) / 3
    # A response's score lies in [−8, 8]; the mean of 48 responses moves by well over its noise (≈0.5).
    assert last > first + 1.5, scores
