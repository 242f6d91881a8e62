"""Policy kinds trained on edit pairs: `figa`, `sft`, `dpo`, `dense-dpo`."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from training import losses
from training.config import DenseDPOConfig, DPOConfig, FigaConfig, SFTConfig
from training.data import OUTCOMES_WITH_GOOD_RESPONSE, EditPair, EncodedPair, collate_pairs, collate_rows
from training.models import Policy
from training.trainers.base import Trainer


class PolicyTrainer(Trainer):
    def build_model(self, resume_from: Path | None) -> nn.Module:
        return self.load_policy(resume_from)

    def save_model(self, model: nn.Module, folder: Path, final: bool, weights: dict | None = None) -> None:
        model.save(folder, merge=final, state_dict=weights)
        self.tokenizer.save_pretrained(folder)

    def _batches(self, items: list[EncodedPair]):
        for start in range(0, len(items), self.cfg.batch_size):
            batch = self.collate(items[start : start + self.cfg.batch_size])
            yield {k: v.to(self.accelerator.device) for k, v in batch.items()}

    @torch.no_grad()
    def edit_logps(self, model: Policy, items: list[EncodedPair]) -> dict[str, float]:
        """Mean log-prob of y1's inserted/replaced tokens and of y0's deleted/replaced tokens, and the
        mean NLL of all y1 response tokens: what FIGA should move up, down, and what SFT fits."""
        sums = {"inserted": 0.0, "deleted": 0.0, "nll": 0.0}
        counts = dict.fromkeys(sums, 0)
        for start in range(0, len(items), self.cfg.batch_size):
            chunk = items[start : start + self.cfg.batch_size]
            batch = {k: v.to(self.accelerator.device) for k, v in collate_pairs(chunk, self.fmt.pad_id).items()}
            logp, _ = model(batch["input_ids"], batch["attention_mask"], batch["response_mask"])
            n, codes, resp = len(chunk), batch["codes"], batch["response_mask"]
            masks = {
                "inserted": resp[:n] & ((codes[:n] == losses.INSERT) | (codes[:n] == losses.REPLACE)),
                "deleted": resp[n:] & ((codes[n:] == losses.DELETE) | (codes[n:] == losses.REPLACE)),
                "nll": resp[:n],
            }
            halves = {"inserted": logp[:n], "deleted": logp[n:], "nll": -logp[:n]}
            for key, mask in masks.items():
                sums[key] += float(halves[key][mask].sum())
                counts[key] += int(mask.sum())
        return {"logp_inserted": sums["inserted"] / max(1, counts["inserted"]),
                "logp_deleted": sums["deleted"] / max(1, counts["deleted"]),
                "nll_edited_response": sums["nll"] / max(1, counts["nll"])}


class FigaTrainer(PolicyTrainer):
    kind = "figa"
    cfg: FigaConfig

    @property
    def outcomes(self) -> tuple[str, ...]:
        return OUTCOMES_WITH_GOOD_RESPONSE if self.cfg.include_unchanged else ("edited",)

    def keep_pair(self, pair: EditPair) -> bool:
        return self.cfg.include_unchanged or pair.original != pair.edited

    def collate(self, items: list[EncodedPair]) -> dict[str, Tensor]:
        return collate_pairs(items, self.fmt.pad_id)  # revised rows R, then initial rows I

    def loss_positions(self, batch: dict[str, Tensor]) -> Tensor:
        """Tokens whose weight can be non-zero; only these need logits."""
        codes, revised = batch["codes"], batch["is_revised"].expand_as(batch["codes"])
        good = (codes == losses.INSERT) | (codes == losses.REPLACE) | batch["is_eos"]
        if self.cfg.gamma:
            good = good | (codes == losses.KEEP)
        bad = (codes == losses.DELETE) | (codes == losses.REPLACE)  # y0's EOS too, when labelled replace
        return batch["response_mask"] & torch.where(revised, good, bad)

    def figa(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.cfg
        positions = self.loss_positions(batch)
        logp, _ = model(batch["input_ids"], batch["attention_mask"], positions)
        ce = -logp
        weights = losses.figa_weights(batch["codes"], batch["is_eos"], batch["is_revised"], ce,
                                      cfg.alpha, cfg.beta, cfg.gamma, cfg.tau, cfg.tau_upper) * positions
        loss = losses.figa_loss(ce, weights, positions, cfg.normalize)
        negative = positions & ~batch["is_revised"]
        return loss, {
            "figa/logp_positive": losses.masked_mean(logp, weights > 0),
            "figa/logp_negative": losses.masked_mean(logp, negative),
            "figa/negative_active": losses.masked_mean((weights < 0).float(), negative),
        }

    def compute_loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        return self.figa(model, batch)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, items: list[EncodedPair]) -> dict[str, float]:
        total, n = 0.0, 0
        for batch in self._batches(items):
            total += float(self.figa(model, batch)[0])
            n += 1
        return {"loss": total / max(1, n), **self.edit_logps(model, items)}


class SFTTrainer(PolicyTrainer):
    kind = "sft"
    cfg: SFTConfig

    @property
    def outcomes(self) -> tuple[str, ...]:
        return OUTCOMES_WITH_GOOD_RESPONSE if self.cfg.include_unchanged else ("edited",)

    def keep_pair(self, pair: EditPair) -> bool:
        return True  # SFT only needs the good response; unchanged rows are fine

    def collate(self, items: list[EncodedPair]) -> dict[str, Tensor]:
        return collate_rows([p.chosen for p in items], self.fmt.pad_id)

    def compute_loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        logp, _ = model(batch["input_ids"], batch["attention_mask"], batch["response_mask"])
        loss = -losses.masked_mean(logp, batch["response_mask"])
        return loss, {}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, items: list[EncodedPair]) -> dict[str, float]:
        edited = [p for p in items if p.chosen.response_ids != p.rejected.response_ids]
        total, count = 0.0, 0
        for batch in self._batches(items):
            logp, _ = model(batch["input_ids"], batch["attention_mask"], batch["response_mask"])
            total += float(-logp[batch["response_mask"]].sum())
            count += int(batch["response_mask"].sum())
        return {"loss": total / max(1, count), **(self.edit_logps(model, edited) if edited else {})}


class DPOTrainer(PolicyTrainer):
    kind = "dpo"
    cfg: DPOConfig

    def build_model(self, resume_from: Path | None) -> nn.Module:
        self.ref = self.frozen(Policy.load(self.cfg.ref_model or self.cfg.model))
        return super().build_model(resume_from)

    def collate(self, items: list[EncodedPair]) -> dict[str, Tensor]:
        return collate_pairs(items, self.fmt.pad_id)

    def sequence_logps(self, logp: Tensor, batch: dict[str, Tensor]) -> Tensor:
        return losses.weighted_logp(logp, batch["response_mask"])

    def dpo(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        args = (batch["input_ids"], batch["attention_mask"], batch["response_mask"])
        logp, _ = model(*args)
        with torch.no_grad(), self.accelerator.autocast():
            ref_logp, _ = self.ref(*args)
        policy_seq, ref_seq = self.sequence_logps(logp, batch), self.sequence_logps(ref_logp, batch)
        n = policy_seq.shape[0] // 2
        per_pair, chosen, rejected = losses.dpo_loss(policy_seq[:n], policy_seq[n:], ref_seq[:n], ref_seq[n:],
                                                     self.cfg.beta)
        return per_pair.mean(), {
            "rewards/chosen": chosen.mean(),
            "rewards/rejected": rejected.mean(),
            "rewards/accuracies": (chosen > rejected).float().mean(),
            "rewards/margins": (chosen - rejected).mean(),
            "logps/chosen": policy_seq[:n].detach().mean(),
            "logps/rejected": policy_seq[n:].detach().mean(),
        }

    def compute_loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        return self.dpo(model, batch)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, items: list[EncodedPair]) -> dict[str, float]:
        sums: dict[str, float] = {}
        batches = 0
        for batch in self._batches(items):
            loss, metrics = self.dpo(model, batch)
            for key, value in {"loss": loss, **metrics}.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            batches += 1
        return {k: v / max(1, batches) for k, v in sums.items()}


class DenseDPOTrainer(DPOTrainer):
    kind = "dense-dpo"
    cfg: DenseDPOConfig

    def sequence_logps(self, logp: Tensor, batch: dict[str, Tensor]) -> Tensor:
        weights = losses.dense_weights(batch["codes"], self.cfg.gamma_d)
        return losses.weighted_logp(logp, batch["response_mask"], weights, self.cfg.reduce)
