"""The gold world of the reproduction, as one pluggable object.

The pipeline (`reproduce/`) and the gold evaluation (`training.sim.evaluate`) only talk to a `GoldTask`;
which one is a `module:function` setting (`--task`, preset key `task`), the function taking no
arguments and returning the task. Another task plugs into the same pipeline by writing one such
function; nothing else changes. The current facts world is the example: `training.sim.task:facts_task`.

A task is word-level (its tokenizer maps one whitespace-separated word to one token), and says:

- `vocabulary`: every word its prompts and answers use;
- `split_prompts(seed, held_out)`: (training, held-out evaluation) prompts;
- `answers(prompts, samples, seed, level)`: flawed answers, `samples` per prompt, at a flaw level:
  "pretrain" (the pretraining corpus), "light" or "heavy" (edit pairs for the reward-model check);
- `word_rewards(prompt, words)`: the gold reward of every answer word (sum ÷ `norm(prompt)` = gold score);
- `word_classes(prompt, words)`: a gold class name per word ("" = none) for the reward diagnostic;
- `annotator(miss_prob, spurious_prob, seed)`: a callable (prompt, response) → (edited, outcome,
  {"fixes", "missed", "spurious"} counts), the simulated minimal editor.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

Annotate = Callable[[str, str], tuple[str, str, dict[str, int]]]
DEFAULT_TASK = "training.sim.task:facts_task"
# The gold classes of the token-RM diagnostic (algorithms.md §6; issue #17): what a biased reward hides.
DIAGNOSTIC_CLASSES = ("correct value", "wrong value", "filler", "EOS after a complete answer",
                      "EOS after an incomplete answer")


@dataclass(frozen=True)
class GoldTask:
    name: str
    vocabulary: list[str]
    split_prompts: Callable[[int, float], tuple[list[str], list[str]]]
    answers: Callable[[list[str], int, int, str], list[tuple[str, str]]]
    word_rewards: Callable[[str, list[str]], list[float]]
    norm: Callable[[str], float]
    word_classes: Callable[[str, list[str]], list[str]]
    complete: Callable[[str, list[str]], bool]
    annotator: Callable[[float, float, int], Annotate]
    meta: dict[str, Any] = field(default_factory=dict)

    def gold_score(self, prompt: str, response: str) -> float:
        return sum(self.word_rewards(prompt, response.split())) / self.norm(prompt)

    def eos_class(self, prompt: str, words: list[str]) -> str:
        complete = self.complete(prompt, words)
        return DIAGNOSTIC_CLASSES[3] if complete else DIAGNOSTIC_CLASSES[4]


@lru_cache(maxsize=8)
def load_task(spec: str = DEFAULT_TASK) -> GoldTask:
    """The task a `module:function` setting names."""
    module_name, sep, func_name = spec.partition(":")
    if not sep or not module_name or not func_name:
        raise ValueError(f"task {spec!r}: expected module:function")
    try:
        factory = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"task {spec!r}: {exc}") from None
    task = factory()
    if not isinstance(task, GoldTask):
        raise ValueError(f"task {spec!r}: {func_name}() returned {type(task).__name__}, not a GoldTask")
    return task


# -- the facts world as a task --

LEVELS = {"light": {"p_wrong": 0.1, "p_filler": 0.05, "p_missing": 0.05, "p_extra": 0.02},
          "heavy": {"p_wrong": 0.6, "p_filler": 0.6, "p_missing": 0.35, "p_extra": 0.5}}


def facts_task() -> GoldTask:
    from dataclasses import asdict

    from training.sim.annotator import AnnotatorNoise, SimulatedAnnotator
    from training.sim.corpus import FlawRates, build_corpus, split_questions
    from training.sim.world import ATTRIBUTES, NUM_ENTITIES, default_world, gold_word_rewards, parse_response

    world = default_world()
    rates = {"pretrain": FlawRates(), **{k: FlawRates(**v) for k, v in LEVELS.items()}}

    def split_prompts(seed: int, held_out: float) -> tuple[list[str], list[str]]:
        train, held = split_questions(world, seed, held_out)
        return [q.text for q in train], [q.text for q in held]

    def answers(prompts: list[str], samples: int, seed: int, level: str) -> list[tuple[str, str]]:
        return build_corpus(world, [world.parse_prompt(p) for p in prompts], samples, rates[level], seed)

    def word_classes(prompt: str, words: list[str]) -> list[str]:
        question = world.parse_prompt(prompt)
        classes = [""] * len(words)
        for span in parse_response(question, words):
            if span.kind == "fact":
                right = words[span.value_index] == world.facts[question.entity][span.attribute]
                classes[span.value_index] = DIAGNOSTIC_CLASSES[0] if right else DIAGNOSTIC_CLASSES[1]
            elif span.kind == "filler":
                classes[span.start : span.end] = [DIAGNOSTIC_CLASSES[2]] * (span.end - span.start)
        return classes

    def complete(prompt: str, words: list[str]) -> bool:
        """Every asked attribute answered (right or wrong): stopping here is not premature."""
        question = world.parse_prompt(prompt)
        answered = {s.attribute for s in parse_response(question, words) if s.kind == "fact"}
        return answered >= set(question.attributes)

    def annotator(miss_prob: float, spurious_prob: float, seed: int) -> Annotate:
        sim = SimulatedAnnotator(world, AnnotatorNoise(miss_prob, spurious_prob), seed)

        def annotate(prompt: str, response: str) -> tuple[str, str, dict[str, int]]:
            e = sim.edit(prompt, response)
            return e.edited, e.outcome, {"fixes": e.fixes, "missed": e.missed, "spurious": e.spurious}

        return annotate

    return GoldTask(
        name="facts", vocabulary=world.vocabulary(), split_prompts=split_prompts, answers=answers,
        word_rewards=lambda p, w: gold_word_rewards(world, world.parse_prompt(p), w),
        norm=lambda p: float(len(world.parse_prompt(p).attributes)), word_classes=word_classes,
        complete=complete, annotator=annotator,
        meta={"world_seed": world.seed, "num_entities": NUM_ENTITIES, "attributes": list(ATTRIBUTES),
              "flaw_rates": asdict(rates["pretrain"])},
    )
