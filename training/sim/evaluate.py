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
from training.sim.task import DEFAULT_TASK, DIAGNOSTIC_CLASSES, load_task


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
              max_new_tokens: int = 32, task: str = DEFAULT_TASK) -> GoldEval:
    repeated, texts = sample_answers(model_dir, prompts, samples, seed, max_new_tokens)
    gold = load_task(task)
    return GoldEval(repeated, texts, [gold.gold_score(p, r) for p, r in zip(repeated, texts, strict=True)])


def win_rate(scores: Sequence[float], reference: Sequence[float]) -> float:
    """Share of paired samples where `scores` beats `reference`; ties count half."""
    if len(scores) != len(reference) or not scores:
        raise ValueError("win_rate needs two non-empty lists of equal length")
    return sum(1.0 if s > r else 0.5 if s == r else 0.0 for s, r in zip(scores, reference, strict=True)) / len(scores)


@torch.no_grad()
def gold_token_agreement(rm_dir: str, prompts: Sequence[str], responses: Sequence[str],
                         batch_size: int = 64, task: str = DEFAULT_TASK) -> dict[str, float]:
    """How well a token reward model's r_t agrees with the gold word rewards on (prompt, response) rows:
    AUROC of r_t separating gold-positive from gold-negative words; AUROC on the value words alone
    (correct vs wrong), which isolates factual knowledge from filler detection; and the mean r_t of each
    gold class (`DIAGNOSTIC_CLASSES`, the EOS split by whether the answer was complete) — the diagnostic
    to read before trusting a PPO run on this reward."""
    from transformers import AutoTokenizer

    from training.data import collate_rows
    from training.evaluate import auroc
    from training.models import RewardModel, token_rewards

    gold = load_task(task)
    tokenizer = AutoTokenizer.from_pretrained(rm_dir)
    model = RewardModel.from_pretrained(rm_dir).eval()
    fmt = Formatter(tokenizer, max_length=128, max_prompt_length=64)
    pos, neg = [], []
    by_class: dict[str, list[float]] = {c: [] for c in DIAGNOSTIC_CLASSES}
    for start in range(0, len(prompts), batch_size):
        chunk = list(zip(prompts[start : start + batch_size], responses[start : start + batch_size], strict=True))
        rows = [fmt.row(fmt.prompt_ids(p), fmt.response_ids(r)) for p, r in chunk]
        batch = collate_rows(rows, fmt.pad_id)
        r = token_rewards(model(batch["input_ids"], batch["attention_mask"]), model.head_kind)
        for i, (prompt, response) in enumerate(chunk):
            words = response.split()
            rewards = r[i][batch["response_mask"][i]].tolist()  # one token per word, then EOS
            for reward, g in zip(rewards, gold.word_rewards(prompt, words), strict=False):
                (pos if g > 0 else neg if g < 0 else []).append(reward)
            for reward, cls in zip(rewards, gold.word_classes(prompt, words), strict=False):
                if cls:
                    by_class[cls].append(reward)
            if rows[i].has_eos:
                by_class[gold.eos_class(prompt, words)].append(rewards[len(words)])
    out = {"gold_token_auroc": auroc(pos, neg),
           "gold_value_auroc": auroc(by_class[DIAGNOSTIC_CLASSES[0]], by_class[DIAGNOSTIC_CLASSES[1]]),
           "gold_positive_tokens": float(len(pos)), "gold_negative_tokens": float(len(neg))}
    for cls, values in by_class.items():
        out[f"class_mean/{cls}"] = sum(values) / len(values) if values else float("nan")
        out[f"class_count/{cls}"] = float(len(values))
    return out
