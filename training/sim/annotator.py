"""The simulated annotator: the minimal edit the gold preference asks for, with configurable noise.

For each response it deletes filler phrases, unwanted facts and junk sentences, replaces a wrong value
word by the true one, and appends a fact sentence for each asked attribute that was not answered.
Noise: each needed fix is skipped with `miss_prob`; each fact sentence that needs nothing gets an
unnecessary (gold-neutral) edit with `spurious_prob` — its subject "it" <-> "this animal".
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from training.sim.world import SUBJECTS, Question, World, parse_response


@dataclass(frozen=True)
class AnnotatorNoise:
    miss_prob: float = 0.0
    spurious_prob: float = 0.0


@dataclass(frozen=True)
class Edit:
    edited: str
    outcome: str  # "edited" | "no_change_needed" (the importer's outcomes)
    fixes: int  # fixes the gold preference asked for and the annotator made
    missed: int  # fixes it skipped (noise)
    spurious: int  # gold-neutral edits it made (noise)


def _other_subject(subject: tuple[str, ...]) -> tuple[str, ...]:
    return SUBJECTS[(SUBJECTS.index(subject) + 1) % len(SUBJECTS)]


def edit_words(world: World, question: Question, words: list[str], noise: AnnotatorNoise,
               rng: random.Random) -> tuple[list[str], int, int, int]:
    """(edited words, fixes, missed, spurious) for one response."""
    out: list[str] = []
    fixes = missed = spurious = 0
    answered: set[str] = set()

    def fix() -> bool:
        nonlocal fixes, missed
        if rng.random() < noise.miss_prob:
            missed += 1
            return False
        fixes += 1
        return True

    for span in parse_response(question, words):
        piece = words[span.start : span.end]
        if span.kind in ("filler", "extra", "junk"):
            if not fix():
                out += piece
            continue
        answered.add(span.attribute)
        truth = world.facts[question.entity][span.attribute]
        offset = span.value_index - span.start
        if piece[offset] != truth:
            if fix():
                piece = [*piece[:offset], truth, *piece[offset + 1 :]]
        elif rng.random() < noise.spurious_prob:
            spurious += 1
            n = len(span.subject)
            piece = [*_other_subject(span.subject), *piece[n:]]
        out += piece
    for attribute in question.attributes:
        if attribute not in answered and fix():
            out += world.fact_words(question.entity, attribute)
    return out, fixes, missed, spurious


class SimulatedAnnotator:
    """Deterministic given its seed; one `edit` call per (prompt, response)."""

    def __init__(self, world: World, noise: AnnotatorNoise = AnnotatorNoise(), seed: int = 0) -> None:
        self.world = world
        self.noise = noise
        self.rng = random.Random(seed)

    def edit(self, prompt: str, response: str) -> Edit:
        question = self.world.parse_prompt(prompt)
        words = response.split()
        edited, fixes, missed, spurious = edit_words(self.world, question, words, self.noise, self.rng)
        outcome = "edited" if edited != words else "no_change_needed"
        return Edit(" ".join(edited), outcome, fixes, missed, spurious)
