"""Policies and reward/value models around any local Hugging Face causal LM folder.

Both wrappers are plain `nn.Module`s whose `forward` does all the work, so Accelerate (autocast, DDP)
wraps one module. The policy only runs the LM head on the positions that carry a loss: on a 135M
model with a 49k vocabulary the head is about a fifth of the compute, and most positions (prompt,
FIGA's zero-weight tokens) need no logits at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from training.losses import tlcr_reward

REWARD_CONFIG = "reward_model.json"
REWARD_HEAD = "reward_head.safetensors"
HEAD_KINDS = ("token", "tlcr", "sequence", "value")


def lora_config(r: int, alpha: int, dropout: float):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear", bias="none")


def _maybe_lora(model, lora: dict | None, adapter: str | None):
    """Wrap in peft: a fresh adapter from `lora` settings, or a saved one from `adapter` (resume)."""
    if adapter:
        from peft import PeftModel

        return PeftModel.from_pretrained(model, adapter, is_trainable=True)
    if lora:
        from peft import get_peft_model

        return get_peft_model(model, lora_config(**lora))
    return model


def _enable_checkpointing(model) -> None:
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers ≥ 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # LoRA: frozen embeddings would cut the graph


def save_hf(model, folder: Path, merge: bool, state_dict: dict[str, Tensor] | None = None) -> None:
    """save_pretrained in safetensors; a LoRA model is merged into full weights when `merge`. `state_dict`:
    the whole weights of a sharded model (its own parameters are shards), as Hugging Face's Trainer saves
    under FSDP."""
    if merge and hasattr(model, "merge_and_unload"):
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)


def sub_state(state_dict: dict[str, Tensor] | None, prefix: str) -> dict[str, Tensor] | None:
    """The entries of one submodule (`prefix` = its attribute name), renamed as its own state dict."""
    if state_dict is None:
        return None
    return {key[len(prefix) + 1 :]: value for key, value in state_dict.items() if key.startswith(prefix + ".")}


def is_adapter(folder: str | Path) -> bool:
    return (Path(folder) / "adapter_config.json").is_file()


class Policy(nn.Module):
    """A causal LM whose forward returns the log-prob of each chosen next token (and optionally entropy)."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    @classmethod
    def load(
        cls, path: str, *, lora: dict | None = None, adapter: str | None = None,
        gradient_checkpointing: bool = False, dtype: torch.dtype = torch.float32,
    ) -> Policy:
        from transformers import AutoModelForCausalLM

        lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        lm.config.use_cache = False
        lm = _maybe_lora(lm, lora, adapter)
        if gradient_checkpointing:
            _enable_checkpointing(lm)
        return cls(lm)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor, with_entropy: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """log π(x_t | x_<t) at positions where loss_mask [B, T] is set (0 elsewhere), float32.

        Hidden state t−1 predicts token t, so the head runs only on the hidden states just before the
        masked positions.
        """
        hidden = self.lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        targets_mask = loss_mask[:, 1:]
        logits = self.lm.get_output_embeddings()(hidden[:, :-1][targets_mask]).float()
        targets = input_ids[:, 1:][targets_mask]
        logp_sel = -F.cross_entropy(logits, targets, reduction="none")
        logp = torch.zeros(loss_mask.shape, dtype=torch.float32, device=input_ids.device)
        logp[:, 1:][targets_mask] = logp_sel
        entropy = None
        if with_entropy:
            with torch.no_grad():
                probs = logits.softmax(-1)
                ent_sel = torch.logsumexp(logits, -1) - (probs * logits).sum(-1)
                entropy = torch.zeros_like(logp)
                entropy[:, 1:][targets_mask] = ent_sel
        return logp, entropy

    def generate(self, **kwargs) -> Tensor:
        """The LM's `generate`, called on this module so that a sharded policy (FSDP2) can gather its
        weights for it (`run.fsdp_forward_method`)."""
        return self.lm.generate(**kwargs)

    def save(self, folder: Path, merge: bool = True, state_dict: dict[str, Tensor] | None = None) -> None:
        """`state_dict`: this module's whole weights when it is sharded (see save_hf)."""
        save_hf(self.lm, folder, merge, sub_state(state_dict, "lm"))


class RewardModel(nn.Module):
    """Backbone + linear head on every position: r_t = wᵀh_t + b (token), 2 logits (tlcr), last-token
    score (sequence), or a value V_t (value; read at the position before each token)."""

    def __init__(self, backbone: nn.Module, head_kind: str, head: nn.Linear | None = None) -> None:
        super().__init__()
        if head_kind not in HEAD_KINDS:
            raise ValueError(f"head kind {head_kind!r} not in {HEAD_KINDS}")
        self.backbone = backbone
        self.head_kind = head_kind
        hidden = backbone.config.hidden_size
        self.head = head or nn.Linear(hidden, 2 if head_kind == "tlcr" else 1)
        if head is None:
            nn.init.normal_(self.head.weight, std=1 / (hidden + 1) ** 0.5)
            nn.init.zeros_(self.head.bias)

    @classmethod
    def from_backbone(
        cls, path: str, head_kind: str, *, lora: dict | None = None, adapter: str | None = None,
        gradient_checkpointing: bool = False,
    ) -> RewardModel:
        """A new head on the base model of a causal LM folder (or of a reward model folder)."""
        from transformers import AutoModel

        backbone = AutoModel.from_pretrained(path, dtype=torch.float32)
        backbone = _maybe_lora(backbone, lora, adapter)
        if gradient_checkpointing:
            _enable_checkpointing(backbone)
        return cls(backbone, head_kind)

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, *, head_kind: str | None = None, lora: dict | None = None,
        base: str | None = None, gradient_checkpointing: bool = False,
    ) -> RewardModel:
        """Load a saved reward model with one call. `head_kind` re-purposes it (a value model keeps a
        scalar head); `base` is the backbone folder when `folder` holds a LoRA adapter (resume)."""
        folder = Path(folder)
        meta = read_reward_config(folder)
        if is_adapter(folder):
            model = cls.from_backbone(base or meta["base_model"], meta["head_kind"], adapter=str(folder),
                                      gradient_checkpointing=gradient_checkpointing)
        else:
            model = cls.from_backbone(str(folder), meta["head_kind"], lora=lora,
                                      gradient_checkpointing=gradient_checkpointing)
        state = load_file(str(folder / REWARD_HEAD))
        model.head.load_state_dict(state)
        if head_kind and head_kind != model.head_kind:
            model.head_kind = head_kind
            if model.head.out_features != 1:  # a tlcr head cannot be a scalar value head: start fresh
                model.head = nn.Linear(model.head.in_features, 1)
                nn.init.zeros_(model.head.weight)
                nn.init.zeros_(model.head.bias)
        return model

    def forward(self, input_ids: Tensor, attention_mask: Tensor, shared_prefix: int = 0) -> Tensor:
        """Head output on every position: [B, T] (scalar heads) or [B, T, 2] (tlcr), float32.

        `shared_prefix` = L > 0 declares the batch to be pairs, row i and row B/2 + i, whose first L tokens
        are the same real tokens (`data.shared_prefix_length`): the backbone then runs those L tokens once
        per pair and the rest of both rows on top of their keys and values. The outputs are the plain
        forward's (up to float rounding; gradients flow through the shared part), with L·B/2 fewer token
        positions through the backbone.
        """
        cache = self._prefix_cache() if shared_prefix > 0 else None
        if cache is None:
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            hidden = out.last_hidden_state
        else:
            n, length = input_ids.shape[0] // 2, shared_prefix
            prefix = self.backbone(input_ids=input_ids[:n, :length], attention_mask=attention_mask[:n, :length],
                                   past_key_values=cache, use_cache=True).last_hidden_state
            cache.reorder_cache(torch.arange(n, device=input_ids.device).repeat(2))  # pair i's keys for rows i, n+i
            rest = self.backbone(input_ids=input_ids[:, length:], attention_mask=attention_mask,
                                 past_key_values=cache, use_cache=True).last_hidden_state
            hidden = torch.cat([prefix.repeat(2, 1, 1), rest], dim=1)
        out = self.head(hidden).float()
        return out if self.head_kind == "tlcr" else out.squeeze(-1)

    def _prefix_cache(self):
        """An empty KV cache for the shared-prefix forward, or None where it would not be exact: under
        activation checkpointing (the layers drop the cache) or with layers that are not plain full
        attention (sliding windows, recurrent states)."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        if any(getattr(m, "gradient_checkpointing", False) for m in self.backbone.modules()):
            return None
        cache = DynamicCache(config=self.backbone.config)
        return cache if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers) else None

    def save(self, folder: Path, base_model: str, merge: bool = True,
             state_dict: dict[str, Tensor] | None = None) -> None:
        """`state_dict`: this module's whole weights when it is sharded (see save_hf); the head is written
        from it too, never from a shard."""
        folder.mkdir(parents=True, exist_ok=True)
        save_hf(self.backbone, folder, merge, sub_state(state_dict, "backbone"))
        head = sub_state(state_dict, "head") or self.head.state_dict()
        save_file({k: v.detach().contiguous().cpu() for k, v in head.items()}, str(folder / REWARD_HEAD))
        meta = {"head_kind": self.head_kind, "base_model": base_model}
        (folder / REWARD_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")


def read_reward_config(folder: str | Path) -> dict:
    path = Path(folder) / REWARD_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a reward model folder (no {REWARD_CONFIG})")
    return json.loads(path.read_text())


def is_reward_model(folder: str | Path) -> bool:
    return (Path(folder) / REWARD_CONFIG).is_file()


def token_rewards(model_out: Tensor, head_kind: str) -> Tensor:
    """Per-position rewards r_t from the head output (tlcr: 2·p_good − 1)."""
    return tlcr_reward(model_out) if head_kind == "tlcr" else model_out


def sequence_scores(rewards: Tensor, response_mask: Tensor, head_kind: str) -> Tensor:
    """R(x, y): the sum of token rewards over the response, or the last response token's score for a
    sequence RM."""
    if head_kind == "sequence":
        last = last_index(response_mask)
        return rewards.gather(1, last[:, None]).squeeze(1)
    return (rewards * response_mask).sum(-1)


def last_index(mask: Tensor) -> Tensor:
    """Index of the last set position of each row (0 for an empty row)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.zeros_like(positions)).max(-1).values
