"""Gold evaluation of a policy folder: sample answers to world prompts, score them with the gold preference.

Sampling uses the training module's own generator and prompt formatting, at temperature 1 (the policy's
distribution, which is what PPO optimises; greedy decoding would hide the error rates the corpus taught).
Win rates pair the k-th sample of two policies for the same prompt; ties count half.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from training.data import Formatter
from training.generate import HFGenerator, strip_eos
from training.sim.world import default_world, gold_score


@dataclass(frozen=True)
class GoldEval:
    prompts: list[str]  # one entry per sample (each prompt repeated `samples` times)
    responses: list[str]
    scores: list[float]

    @property
    def mean(self) -> float:
        return sum(self.scores) / max(1, len(self.scores))


@torch.no_grad()
def sample_answers(model_dir: str, prompts: Sequence[str], samples: int = 1, seed: int = 0,
                   max_new_tokens: int = 32, batch_size: int = 64) -> tuple[list[str], list[str]]:
    """(prompts repeated per sample, decoded answers), sampled at temperature 1."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    fmt = Formatter(tokenizer, max_length=128, max_prompt_length=64)
    generator = HFGenerator(model, fmt.pad_id, fmt.eos_id, max_new_tokens, do_sample=True, temperature=1.0,
                            batch_size=batch_size)
    repeated = [p for p in prompts for _ in range(samples)]
    torch.manual_seed(seed)
    ids = generator([fmt.prompt_ids(p) for p in repeated])
    texts = [tokenizer.decode(strip_eos(r, fmt.eos_id), skip_special_tokens=True) for r in ids]
    return repeated, texts


def gold_eval(model_dir: str, prompts: Sequence[str], samples: int = 1, seed: int = 0,
              max_new_tokens: int = 32) -> GoldEval:
    repeated, texts = sample_answers(model_dir, prompts, samples, seed, max_new_tokens)
    world = default_world()
    return GoldEval(repeated, texts, [gold_score(world, p, r) for p, r in zip(repeated, texts, strict=True)])


def win_rate(scores: Sequence[float], reference: Sequence[float]) -> float:
    """Share of paired samples where `scores` beats `reference`; ties count half."""
    if len(scores) != len(reference) or not scores:
        raise ValueError("win_rate needs two non-empty lists of equal length")
    return sum(1.0 if s > r else 0.5 if s == r else 0.0 for s, r in zip(scores, reference, strict=True)) / len(scores)
