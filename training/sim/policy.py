"""The simulation's tiny tokenizer and tiny policy.

Tokenizer: word level over the world's vocabulary (one word = one token, split on whitespace), saved as
a Hugging Face folder (tokenizer.json + tokenizer_config.json) so both `labels.load_tokenizer` and
`transformers.AutoTokenizer` load it. `add_special_tokens=True` prepends <bos> (prompts); responses are
encoded without special tokens, as the training module does. No chat template: the prompt text ends
with "?" and the response follows it.

Policy: a tiny Llama, pretrained (SFT, loss on response tokens and EOS) on the synthetic corpus, so its
answers carry the corpus' controlled error rates.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")


def build_tokenizer(words: list[str]):
    """A PreTrainedTokenizerFast: WordLevel over SPECIALS + words, whitespace split."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate([*SPECIALS, *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=512)


@dataclass(frozen=True)
class PolicyConfig:
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    max_positions: int = 128


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 1500
    batch_size: int = 64
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    seed: int = 0


def init_policy(tokenizer, cfg: PolicyConfig, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_positions, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def encode_example(tokenizer, prompt: str, response: str) -> tuple[list[int], int]:
    """(ids of <bos> prompt response <eos>, number of prompt ids) — the training module's row layout."""
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    return [*prompt_ids, *response_ids, tokenizer.eos_token_id], len(prompt_ids)


def _batch(examples: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    targets = torch.full((len(examples), width), -100)
    for i, (row, n_prompt) in enumerate(examples):
        ids[i, : len(row)] = torch.tensor(row)
        attention[i, : len(row)] = 1
        targets[i, n_prompt : len(row)] = torch.tensor(row[n_prompt:])
    return ids, attention, targets


def pretrain(model, tokenizer, corpus: list[tuple[str, str]], cfg: PretrainConfig, log=print) -> list[float]:
    """SFT on (prompt, response) pairs with AdamW and cosine decay; returns the loss of every step."""
    examples = [encode_example(tokenizer, p, r) for p, r in corpus]
    rng = random.Random(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    model.train()
    losses, started = [], time.monotonic()
    for step in range(cfg.steps):
        lr = cfg.learning_rate * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
        lr *= 0.5 * (1 + math.cos(math.pi * step / cfg.steps)) * 0.9 + 0.1
        for group in optimizer.param_groups:
            group["lr"] = lr
        ids, attention, targets = _batch(rng.sample(examples, min(cfg.batch_size, len(examples))),
                                         tokenizer.pad_token_id)
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets[:, 1:].reshape(-1), ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % 250 == 0 or step == cfg.steps - 1:
            log(f"pretrain step {step} loss {loss.item():.4f} ({time.monotonic() - started:.0f}s)")
    model.eval()
    return losses


def save_policy(model, tokenizer, folder: Path, meta: dict) -> None:
    from transformers import GenerationConfig

    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id).save_pretrained(folder)
    (folder / "sim_policy.json").write_text(json.dumps(meta, indent=2) + "\n")


def config_dicts(policy: PolicyConfig, train: PretrainConfig) -> dict:
    return {"policy": asdict(policy), "pretrain": asdict(train)}
