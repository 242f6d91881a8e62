"""Rollouts: what PPO computes of sampled responses does not depend on the engine that sampled them, and
the weights a colocated vLLM engine receives are the policy's own (LoRA merged, names as in the
checkpoint). vLLM itself runs only on GPUs: scripts/gpu-check.sh runs PPO with it."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from test_training_learning import ToyTokenReward

from training.config import load_config
from training.generate import HFGenerator, vllm_weights
from training.models import Policy, RewardModel
from training.ppo import PPOTrainer


def test_rollout_bookkeeping_is_the_training_policys_own(tiny_model: Path, tmp_path: Path, export_file: Path):
    value_init = tmp_path / "value-init"
    RewardModel.from_backbone(str(tiny_model), "token").save(value_init, base_model=str(tiny_model))
    vocab = Policy.load(str(tiny_model)).lm.get_input_embeddings().weight.shape[0]
    good = torch.arange(vocab) % 2 == 0
    cfg = load_config("ppo", None, {"model": str(tiny_model), "data": str(export_file), "value_model": str(value_init),
                                    "output_dir": str(tmp_path / "ppo"), "max_new_tokens": 6})
    trainer = PPOTrainer(cfg, reward_model=ToyTokenReward(good))
    policy, value = trainer._build(None)
    prompts = [trainer.fmt.prompt_ids(p) for p in ("Tell me about tea.", "Say something kind about owls, please.")]
    eos = trainer.fmt.eos_id
    # Responses as any engine returns them: token ids, the first ended by EOS, the second cut at the limit.
    sampled = HFGenerator(policy.lm, trainer.fmt.pad_id, eos, max_new_tokens=6, min_new_tokens=6)(prompts)
    responses = [[*sampled[0][:3], eos], sampled[1]]
    data = trainer.bookkeeping(policy, value, prompts, responses)

    # log π(y_t | x, y_<t) from a plain forward of the causal LM, row by row, without padding.
    lm = Policy.load(str(tiny_model)).lm.eval()
    for row, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        with torch.no_grad():
            logits = lm(torch.tensor([prompt + response])).logits[0]
        logp = F.log_softmax(logits[len(prompt) - 1 : -1].float(), -1).gather(1, torch.tensor(response)[:, None])[:, 0]
        n = len(response)
        assert torch.allclose(data["old_logp"][row, :n], logp, atol=1e-5)
        assert data["mask"][row].sum() == n and not data["old_logp"][row, n:].any()
        # The reference starts as the same model: no KL yet.
        assert torch.allclose(data["kl"][row, :n], torch.zeros(n), atol=1e-5)
        expected = good[torch.tensor(response)].float() * 2 - 1  # the toy reward of each response token
        assert torch.equal(data["scores"][row, :n], expected)
    assert data["has_eos"].tolist() == [True, False]  # min_new_tokens kept EOS out of the second


def test_vllm_receives_the_merged_policy_weights_under_checkpoint_names(tiny_model: Path):
    policy = Policy.load(str(tiny_model), lora={"r": 4, "alpha": 8, "dropout": 0.0})
    with torch.no_grad():
        for name, param in policy.lm.named_parameters():
            if "lora_B" in name:
                param.normal_()  # a trained adapter (B starts at zero, which would merge to nothing)
    merged = copy.deepcopy(policy.lm).merge_and_unload().state_dict()
    probe = torch.tensor([[1, 2, 3, 4]])
    before = policy.lm(probe).logits

    sent = {name: tensor.clone() for name, tensor in vllm_weights(policy.lm)}  # copied as load_weights does
    plain = Policy.load(str(tiny_model)).lm.state_dict()
    assert sent.keys() == plain.keys()  # the names of the checkpoint vLLM loaded, no adapter tensors
    for name, tensor in sent.items():
        assert torch.equal(tensor, merged[name]), name
    assert any(not torch.equal(sent[name], plain[name]) for name in sent)  # the adapter is in them
    # and out of the training model again (up to the rounding of adding and subtracting B·A)
    assert torch.allclose(policy.lm(probe).logits, before, atol=1e-5)
