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
from dataclasses import asdict
from pathlib import Path

import torch

from training.sim.corpus import FlawRates, build_corpus, split_questions
from training.sim.policy import (
    PolicyConfig,
    PretrainConfig,
    build_tokenizer,
    config_dicts,
    init_policy,
    pretrain,
    save_policy,
)
from training.sim.world import Question, default_world


def write_prompts(path: Path, questions: list[Question]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for i, q in enumerate(questions):
            fh.write(json.dumps({"id": f"q{i}", "prompt": q.text}) + "\n")


def build(out: Path, pretrain_cfg: PretrainConfig, policy_cfg: PolicyConfig = PolicyConfig(),
          rates: FlawRates = FlawRates(), samples_per_question: int = 4, held_out: float = 0.2,
          threads: int = 1) -> dict:
    torch.set_num_threads(threads)
    started = time.monotonic()
    world = default_world()
    tokenizer = build_tokenizer(world.vocabulary())
    train_q, eval_q = split_questions(world, pretrain_cfg.seed, held_out)
    corpus = build_corpus(world, train_q, samples_per_question, rates, pretrain_cfg.seed)
    model = init_policy(tokenizer, policy_cfg, pretrain_cfg.seed)
    losses = pretrain(model, tokenizer, corpus, pretrain_cfg)
    meta = {"world_seed": world.seed, "num_entities": len(world.entities), "flaw_rates": asdict(rates),
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
    args = parser.parse_args(argv)
    meta = build(args.out, PretrainConfig(steps=args.steps, seed=args.seed), threads=args.threads)
    print(json.dumps(meta, indent=2))
    return 0
