"""Run by test_training_sharded.py under `accelerate launch --num_processes 2` (one gloo process group on
CPU): a token RM and a PPO update on models sharded with torch's FSDP2 (`fully_shard`, as Accelerate's
FSDP config shards them on GPUs: each decoder layer, then the whole model), saved through the runs'
own checkpoint and final-save code. Accelerate itself shards only on accelerators, so this script
shards the prepared models the way it would; everything after that is the training code's.

    fsdp_cpu_run.py MODEL DATA OUT

Writes OUT/reference-*.pt on rank 0: every parameter gathered by DTensor's own all-gather
(`full_tensor`), an independent copy of what the saved folders must hold.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn
from torch.distributed.fsdp import fully_shard

from training.config import build_config
from training.ppo import Models, PPOTrainer
from training.run import adamw
from training.trainers.reward import TokenRMTrainer


def shard(model: nn.Module, inner: nn.Module) -> nn.Module:
    layers = set(inner._no_split_modules)  # the transformer block class, as Accelerate's auto-wrap reads it
    for module in model.modules():
        if type(module).__name__ in layers:
            fully_shard(module)
    fully_shard(model)
    return model


def reference(model: nn.Module, path: Path, is_main: bool) -> None:
    """Every parameter whole, gathered by every rank (a collective), written by rank 0."""
    whole = {name: p.full_tensor().detach().clone() for name, p in model.named_parameters()}
    if is_main:
        torch.save(whole, path)


def token_rm(model_dir: str, data: str, out: Path) -> None:
    cfg = build_config("token-rm", {"model": model_dir, "data": data, "output_dir": str(out / "token-rm"),
                                    "batch_size": 2, "max_steps": 2, "learning_rate": 1e-2, "val_fraction": 0.2})
    trainer = TokenRMTrainer(cfg)
    base = trainer.build_model(None)
    model = shard(base, base.backbone)
    sharded = sum(type(p).__name__ == "DTensor" for p in model.parameters())
    print(f"[fsdp] token-rm: {sharded} of {len(list(model.parameters()))} parameters are DTensor shards", flush=True)
    optimizer = adamw([p for p in model.parameters() if p.requires_grad], cfg.learning_rate, 0.0)
    scheduler = trainer._schedule(optimizer, cfg.max_steps)
    loader, _ = trainer._dataloader()
    for _, batch in zip(range(cfg.max_steps), loader, strict=False):
        loss, _ = trainer.compute_loss(model, batch)
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    trainer._checkpoint(model, optimizer, scheduler, cfg.max_steps)
    trainer.save_final(model)
    reference(model, out / "reference-token-rm.pt", trainer.accelerator.is_main_process)


def ppo(model_dir: str, data: str, out: Path) -> None:
    cfg = build_config("ppo", {"model": model_dir, "data": data, "output_dir": str(out / "ppo"),
                               "reward_model": str(out / "token-rm" / "model"), "rollout_batch_size": 2,
                               "max_new_tokens": 4, "ppo_epochs": 1, "learning_rate": 1e-2, "batch_size": 2})
    trainer = PPOTrainer(cfg)
    built = trainer._build(None)
    models = Models(shard(built.policy, built.policy.lm), shard(built.value, built.value.backbone))
    params = [p for m in models for p in m.parameters() if p.requires_grad]
    optimizer = adamw(params, cfg.learning_rate, 0.0)
    # Each rank samples its own prompts, so responses end at different lengths: generation must keep
    # every rank stepping (a sharded forward is a collective).
    prompt_ids = trainer.sample_prompts(0)
    responses = trainer.generator(models.policy)(prompt_ids)
    rollout = trainer.bookkeeping(models.policy, models.value, prompt_ids, responses)
    stats = trainer.update(models.policy, models.value, optimizer, params, rollout)
    print(f"[fsdp] ppo update: loss/value_avg {stats['loss/value_avg']:.4f}", flush=True)
    trainer._checkpoint(models, optimizer, 1)
    reference(models.value, out / "reference-value.pt", trainer.accelerator.is_main_process)
    reference(models.policy, out / "reference-policy.pt", trainer.accelerator.is_main_process)


if __name__ == "__main__":
    model_dir, data, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    token_rm(model_dir, data, out)
    ppo(model_dir, data, out)
