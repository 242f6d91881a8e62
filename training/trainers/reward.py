"""Reward-model kinds: `token-rm` (edited-span BT, or tlcr) and the `seq-rm` baseline."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from training import losses
from training.config import SeqRMConfig, TokenRMConfig
from training.data import EncodedPair, collate_pairs, edit_masks, keep_mask, shared_prefix_length
from training.evaluate import pair_metrics
from training.models import RewardModel, last_index, token_rewards
from training.trainers.base import Trainer


class RewardTrainer(Trainer):
    head_kind = "token"

    def build_model(self, resume_from: Path | None) -> nn.Module:
        ckpt = self.cfg.gradient_checkpointing
        if resume_from is not None:
            return RewardModel.from_pretrained(resume_from, base=self.cfg.model, gradient_checkpointing=ckpt)
        return RewardModel.from_backbone(self.cfg.model, self.head_kind, lora=self.lora_settings(),
                                         gradient_checkpointing=ckpt)

    def collate(self, items: list[EncodedPair]) -> dict[str, Tensor]:
        return collate_pairs(items, self.fmt.pad_id)

    def save_model(self, model: nn.Module, folder: Path, final: bool, weights: dict | None = None) -> None:
        model.save(folder, base_model=self.cfg.model, merge=final, state_dict=weights)
        self.tokenizer.save_pretrained(folder)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, items: list[EncodedPair]) -> dict[str, float]:
        return pair_metrics(model, items, self.fmt.pad_id, self.cfg.batch_size, self.accelerator.device)


class TokenRMTrainer(RewardTrainer):
    kind = "token-rm"
    cfg: TokenRMConfig

    def __init__(self, cfg: TokenRMConfig) -> None:
        self.head_kind = "tlcr" if cfg.loss == "tlcr" else "token"
        super().__init__(cfg)

    def build_model(self, resume_from: Path | None) -> nn.Module:
        model = super().build_model(resume_from)
        if resume_from is None and self.cfg.head_init == "zero":
            # Every r_t starts at 0: a random head on a large hidden state starts the span sums far from
            # 0 (on SmolLM2 about −17 to −58), deep in the saturated part of the BT loss.
            nn.init.zeros_(model.head.weight)
            nn.init.zeros_(model.head.bias)
        return model

    def compute_loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.cfg
        out = model(batch["input_ids"], batch["attention_mask"], shared_prefix=shared_prefix_length(batch))
        r = token_rewards(out, self.head_kind)
        n = r.shape[0] // 2
        response = batch["response_mask"]
        u1, u0 = edit_masks(batch)
        if self.head_kind == "tlcr":
            targets = losses.tlcr_targets(batch["codes"], batch["is_revised"])
            loss = losses.tlcr_loss(out, targets, response)
        else:
            loss = cfg.edit_span_weight * losses.edit_span_bt(r[:n], r[n:], u1, u0, cfg.span_reduce)
        if cfg.full_seq_weight:
            loss = loss + cfg.full_seq_weight * losses.full_seq_bt(r[:n], r[n:], response[:n], response[n:],
                                                                   cfg.span_reduce)
        if cfg.keep_l2_weight:
            loss = loss + cfg.keep_l2_weight * losses.keep_l2(r, keep_mask(batch))
        span_margin = losses.masked_sum(r[:n], u1, -1) - losses.masked_sum(r[n:], u0, -1)
        chosen = losses.masked_sum(r[:n], response[:n], -1)
        rejected = losses.masked_sum(r[n:], response[n:], -1)
        return loss, {
            "accuracy": (span_margin > 0).float().mean(),
            "margin": span_margin.mean(),
            "rewards/chosen": chosen.mean(),
            "rewards/rejected": rejected.mean(),
        }


class SeqRMTrainer(RewardTrainer):
    kind = "seq-rm"
    head_kind = "sequence"
    cfg: SeqRMConfig

    def compute_loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        out = model(batch["input_ids"], batch["attention_mask"], shared_prefix=shared_prefix_length(batch))
        scores = out.gather(1, last_index(batch["response_mask"])[:, None]).squeeze(1)
        n = scores.shape[0] // 2
        loss = losses.sequence_bt(scores[:n], scores[n:])
        return loss, {
            "accuracy": (scores[:n] > scores[n:]).float().mean(),
            "margin": (scores[:n] - scores[n:]).mean(),
            "rewards/chosen": scores[:n].mean(),
            "rewards/rejected": scores[n:].mean(),
        }
