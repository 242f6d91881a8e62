"""The synthetic pretraining corpus: answers to world questions, a controlled share of them flawed.

Each asked attribute is answered in order; independently, the answer is left out (`p_missing`), its
value is wrong (`p_wrong`, a uniformly drawn other value), it is opened by a filler phrase
(`p_filler`), and an extra fact about an unasked attribute follows it (`p_extra`). A policy trained on
this corpus reproduces these error rates, which is what the edits and the preference training then fix.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from training.sim.world import ATTRIBUTES, FILLERS, SUBJECTS, Question, World


@dataclass(frozen=True)
class FlawRates:
    p_wrong: float = 0.25
    p_filler: float = 0.15
    p_missing: float = 0.15
    p_extra: float = 0.05


def sample_response(world: World, question: Question, rates: FlawRates, rng: random.Random) -> str:
    words: list[str] = []
    for attribute in question.attributes:
        if rng.random() < rates.p_missing:
            continue
        if rng.random() < rates.p_filler:
            words += rng.choice(FILLERS)
        value = world.facts[question.entity][attribute]
        if rng.random() < rates.p_wrong:
            value = rng.choice([v for v in ATTRIBUTES[attribute][2] if v != value])
        words += world.fact_words(question.entity, attribute, value, rng.choice(SUBJECTS))
        if rng.random() < rates.p_extra:
            unasked = [a for a in ATTRIBUTES if a not in question.attributes]
            if unasked:
                words += world.fact_words(question.entity, rng.choice(unasked), subject=rng.choice(SUBJECTS))
    return " ".join(words)


def split_questions(world: World, seed: int = 0, held_out: float = 0.2,
                    max_attributes: int = 3) -> tuple[list[Question], list[Question]]:
    """(train, held-out) questions; every animal appears in both (its facts are in the corpus)."""
    questions = world.questions(max_attributes)
    random.Random(seed).shuffle(questions)
    n_out = int(len(questions) * held_out)
    return questions[n_out:], questions[:n_out]


def build_corpus(world: World, questions: list[Question], samples_per_question: int, rates: FlawRates,
                 seed: int = 0) -> list[tuple[str, str]]:
    """(prompt, response) pairs."""
    rng = random.Random(seed)
    return [(q.text, sample_response(world, q, rates, rng)) for q in questions for _ in range(samples_per_question)]
