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


def _pair_batch(tiny_model: Path) -> dict[str, torch.Tensor]:
    """Three pairs with prompts of different lengths, edits at different places, and right padding
    (pair 1's rows have different lengths; pair 2's rejected row is the longest of the batch)."""
    from transformers import AutoTokenizer

    from training.data import EditPair, Formatter, collate_pairs, encode_pairs

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    fmt = Formatter(tokenizer, max_length=96, max_prompt_length=64)
    pairs = [EditPair("a", "Name a fruit.", " Apples are red and sweet.", " Apples are green and sweet.", "edited"),
             EditPair("b", "Tell me about the sea, briefly please.", " The sea is big.",
                      " The sea is big and blue, very blue.", "edited"),
             EditPair("c", "Hi?", " Hello there, friend, how are you, well?", " Hello, friend.", "edited")]
    return collate_pairs(encode_pairs(pairs, fmt), fmt.pad_id)


def _loss_and_grads(model: RewardModel, batch: dict[str, torch.Tensor], shared: int):
    from training.data import edit_masks
    from training.losses import edit_span_bt, masked_sum
    from training.models import token_rewards

    model.zero_grad(set_to_none=True)
    r = token_rewards(model(batch["input_ids"], batch["attention_mask"], shared_prefix=shared), model.head_kind)
    n = r.shape[0] // 2
    u1, u0 = edit_masks(batch)
    response = batch["response_mask"]
    # the edited-span loss plus a term on every response token, so every position's gradient is checked
    loss = edit_span_bt(r[:n], r[n:], u1, u0) + 0.1 * masked_sum(r, response).pow(2) / response.sum()
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return r.detach(), loss.detach(), grads


def test_shared_prefix_forward_matches_plain_forward(tiny_model: Path):
    from training.data import shared_prefix_length

    batch = _pair_batch(tiny_model)
    shared = shared_prefix_length(batch)
    n = batch["input_ids"].shape[0] // 2
    ids, attention = batch["input_ids"], batch["attention_mask"]
    # the longest run of real tokens every pair starts with: the shortest prompt plus that pair's common words
    assert 0 < shared < ids.shape[1]
    assert torch.equal(ids[:n, :shared], ids[n:, :shared]) and attention[:, :shared].all()
    assert not all(torch.equal(ids[i, : shared + 1], ids[n + i, : shared + 1]) and attention[[i, n + i], shared].all()
                   for i in range(n))
    torch.manual_seed(0)
    model = RewardModel.from_backbone(str(tiny_model), "token")
    r_plain, loss_plain, grads_plain = _loss_and_grads(model, batch, 0)
    r_shared, loss_shared, grads_shared = _loss_and_grads(model, batch, shared)
    real = attention.bool()
    assert torch.allclose(r_shared[real], r_plain[real], atol=1e-5)
    assert torch.allclose(loss_shared, loss_plain, atol=1e-6)
    assert grads_plain.keys() == grads_shared.keys() and len(grads_plain) == len(list(model.parameters()))
    for name, grad in grads_plain.items():
        assert torch.allclose(grads_shared[name], grad, atol=1e-6, rtol=1e-4), name


def test_shared_prefix_with_lora_and_checkpointing(tiny_model: Path):
    from training.data import shared_prefix_length

    batch = _pair_batch(tiny_model)
    shared = shared_prefix_length(batch)
    lora = {"r": 4, "alpha": 8, "dropout": 0.0}
    for settings in ({"lora": lora}, {"gradient_checkpointing": True}, {"lora": lora, "gradient_checkpointing": True}):
        torch.manual_seed(0)
        model = RewardModel.from_backbone(str(tiny_model), "tlcr", **settings)
        assert (model._prefix_cache() is None) == bool(settings.get("gradient_checkpointing"))
        _, loss_plain, grads_plain = _loss_and_grads(model, batch, 0)
        _, loss_shared, grads_shared = _loss_and_grads(model, batch, shared)
        assert torch.allclose(loss_shared, loss_plain, atol=1e-6)
        for name, grad in grads_plain.items():
            assert torch.allclose(grads_shared[name], grad, atol=1e-6, rtol=1e-4), (settings, name)
