"""Policy log-probs on selected positions, and reward models that save and load back with one call."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from training.models import Policy, RewardModel, is_reward_model, last_index, sequence_scores


def test_policy_logprobs_match_full_log_softmax(tiny_model: Path):
    policy = Policy.load(str(tiny_model)).eval()
    reference = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    ids = torch.tensor([[5, 17, 300, 42, 9, 2], [7, 8, 9, 10, 2, 2]])
    attention = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0]], dtype=torch.bool)
    with torch.no_grad():
        logp, entropy = policy(ids, attention, mask, with_entropy=True)
        full = reference(input_ids=ids, attention_mask=attention).logits.log_softmax(-1)
    expected = full[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    assert torch.allclose(logp[:, 1:][mask[:, 1:]], expected[mask[:, 1:]], atol=1e-5)
    assert torch.all(logp[~mask] == 0)
    expected_entropy = -(full.exp() * full).sum(-1)[:, :-1]
    assert torch.allclose(entropy[:, 1:][mask[:, 1:]], expected_entropy[mask[:, 1:]], atol=1e-4)


def test_policy_gradient_flows_through_selected_positions(tiny_model: Path):
    policy = Policy.load(str(tiny_model))
    ids = torch.tensor([[5, 17, 300, 42]])
    logp, _ = policy(ids, torch.ones_like(ids, dtype=torch.bool), torch.tensor([[0, 0, 1, 1]], dtype=torch.bool))
    logp.sum().backward()
    assert policy.lm.get_output_embeddings().weight.grad.abs().sum() > 0


def test_reward_model_round_trip(tiny_model: Path, tmp_path: Path):
    ids = torch.tensor([[5, 17, 300, 42, 2]])
    attention = torch.ones_like(ids, dtype=torch.bool)
    for kind in ("token", "tlcr", "sequence"):
        torch.manual_seed(1)
        model = RewardModel.from_backbone(str(tiny_model), kind).eval()
        with torch.no_grad():
            before = model(ids, attention)
        folder = tmp_path / kind
        model.save(folder, base_model=str(tiny_model))
        assert is_reward_model(folder) and (folder / "model.safetensors").is_file()
        loaded = RewardModel.from_pretrained(folder).eval()
        assert loaded.head_kind == kind
        with torch.no_grad():
            assert torch.allclose(loaded(ids, attention), before, atol=1e-6)
    value = RewardModel.from_pretrained(tmp_path / "tlcr", head_kind="value")
    assert value.head.out_features == 1 and value(ids, attention).shape == (1, 5)


def test_sequence_scores_sum_or_last_token():
    rewards = torch.tensor([[9.0, 1.0, 2.0, 3.0, 9.0]])
    mask = torch.tensor([[False, True, True, True, False]])
    assert last_index(mask).tolist() == [3]
    assert sequence_scores(rewards, mask, "token").item() == 6.0
    assert sequence_scores(rewards, mask, "sequence").item() == 3.0
