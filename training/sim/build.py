"""`python -m training.sim build --out DIR`: the simulation's starting point, written to one folder.

    DIR/policy/              tiny pretrained policy + word-level tokenizer (a Hugging Face folder)
    DIR/prompts_train.jsonl  questions whose answers were in the pretraining corpus
    DIR/prompts_eval.jsonl   held-out questions (never in the corpus) for evaluation
    DIR/build.json           world seed, flaw rates, model and pretraining configs, final loss, timings
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from training.sim.policy import (
    PolicyConfig,
    PretrainConfig,
    build_tokenizer,
    config_dicts,
    init_policy,
    pretrain,
    save_policy,
)
from training.sim.task import DEFAULT_TASK, load_task


def write_prompts(path: Path, prompts: list[str]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for i, prompt in enumerate(prompts):
            fh.write(json.dumps({"id": f"q{i}", "prompt": prompt}) + "\n")


def build(out: Path, pretrain_cfg: PretrainConfig, policy_cfg: PolicyConfig = PolicyConfig(),
          task: str = DEFAULT_TASK, samples_per_question: int = 4, held_out: float = 0.2, threads: int = 1) -> dict:
    torch.set_num_threads(threads)
    started = time.monotonic()
    gold = load_task(task)
    tokenizer = build_tokenizer(gold.vocabulary)
    train_q, eval_q = gold.split_prompts(pretrain_cfg.seed, held_out)
    corpus = gold.answers(train_q, samples_per_question, pretrain_cfg.seed, "pretrain")
    model = init_policy(tokenizer, policy_cfg, pretrain_cfg.seed)
    losses = pretrain(model, tokenizer, corpus, pretrain_cfg)
    meta = {"task": task, **gold.meta,
            "samples_per_question": samples_per_question, "held_out": held_out, "corpus_size": len(corpus),
            **config_dicts(policy_cfg, pretrain_cfg),
            "final_loss": sum(losses[-50:]) / len(losses[-50:]), "seconds": round(time.monotonic() - started, 1)}
    out.mkdir(parents=True, exist_ok=True)
    save_policy(model, tokenizer, out / "policy", meta)
    write_prompts(out / "prompts_train.jsonl", train_q)
    write_prompts(out / "prompts_eval.jsonl", eval_q)
    (out / "build.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.sim", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["build"])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=PretrainConfig.steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--task", default=DEFAULT_TASK, help="gold world, module:function (see training/sim/task.py)")
    args = parser.parse_args(argv)
    meta = build(args.out, PretrainConfig(steps=args.steps, seed=args.seed), task=args.task, threads=args.threads)
    print(json.dumps(meta, indent=2))
    return 0
