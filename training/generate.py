"""Sampling responses: the pluggable generator used by PPO rollouts, evaluation and the `generate` kind.

A generator is any callable `prompt_ids -> response_ids` (each response cut after its first EOS,
which it keeps); `HFGenerator` uses Hugging Face `generate`. A vLLM generator can replace it later
without touching the algorithms.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from training.config import GenerateConfig
from training.data import Formatter, read_prompts
from training.run import RunDir, make_accelerator


class Generator(Protocol):
    def __call__(self, prompt_ids: Sequence[list[int]]) -> list[list[int]]: ...


@dataclass
class HFGenerator:
    model: nn.Module
    pad_id: int
    eos_id: int
    max_new_tokens: int = 64
    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    batch_size: int = 16
    min_new_tokens: int = 0

    @torch.no_grad()
    def __call__(self, prompt_ids: Sequence[list[int]]) -> list[list[int]]:
        out: list[list[int]] = []
        for start in range(0, len(prompt_ids), self.batch_size):
            out.extend(self._batch(prompt_ids[start : start + self.batch_size]))
        return out

    def _batch(self, prompts: Sequence[list[int]]) -> list[list[int]]:
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        # Left padding: every prompt ends where generation starts.
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        sampling = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k or None}
        was_training = self.model.training
        self.model.eval()
        generated = self.model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=self.max_new_tokens,
            min_new_tokens=self.min_new_tokens, do_sample=self.do_sample, pad_token_id=self.pad_id,
            eos_token_id=self.eos_id, use_cache=True,
            **(sampling if self.do_sample else {}),
        )
        self.model.train(was_training)
        return [cut_at_eos(row.tolist(), self.eos_id) for row in generated[:, width:]]


def cut_at_eos(ids: list[int], eos_id: int) -> list[int]:
    """Tokens up to and including the first EOS (everything after it is padding)."""
    return ids[: ids.index(eos_id) + 1] if eos_id in ids else ids


def strip_eos(ids: list[int], eos_id: int) -> list[int]:
    return ids[:-1] if ids and ids[-1] == eos_id else ids


def run_generate(cfg: GenerateConfig) -> dict[str, float]:
    """Responses for every prompt of `data`, written to responses.jsonl as {id, prompt, response, model}."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    accelerator = make_accelerator(cfg)
    run = RunDir(cfg, "generate", accelerator.is_main_process)
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    fmt = Formatter(tokenizer, cfg.max_length, cfg.max_prompt_length)
    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32).to(accelerator.device)
    generator = HFGenerator(model, fmt.pad_id, fmt.eos_id, cfg.max_new_tokens, cfg.do_sample, cfg.temperature,
                            cfg.top_p, cfg.top_k, cfg.batch_size)
    prompts = read_prompts(cfg.data)
    jobs = [(pid, prompt, k) for pid, prompt in prompts for k in range(cfg.num_return_sequences)]
    total = len(jobs)
    lengths, eos = [], 0
    with (run.path / "responses.jsonl").open("w", encoding="utf-8") as fh:
        for start in tqdm(range(0, total, cfg.batch_size), desc="generate"):
            chunk = jobs[start : start + cfg.batch_size]
            responses = generator([fmt.prompt_ids(prompt) for _, prompt, _ in chunk])
            for (pid, prompt, k), ids in zip(chunk, responses, strict=True):
                eos += int(bool(ids) and ids[-1] == fmt.eos_id)
                text = tokenizer.decode(strip_eos(ids, fmt.eos_id), skip_special_tokens=True)
                lengths.append(len(ids))
                row_id = pid if cfg.num_return_sequences == 1 else f"{pid}-{k}"
                fh.write(json.dumps({"id": row_id, "prompt": prompt, "response": text, "model": cfg.model}) + "\n")
            done = min(total, start + cfg.batch_size)
            run.log(done, total, {"generated": done})
    result = {"num_prompts": len(prompts), "num_responses": total,
              "mean_length": sum(lengths) / max(1, len(lengths)), "eos_rate": eos / max(1, total)}
    run.write_eval(result)
    run.close()
    return result
