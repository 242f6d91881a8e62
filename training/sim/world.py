"""The synthetic "facts" world and its gold token-level preference.

A world is a set of made-up animals, each with one true value per attribute (colour, food, home, sound,
size). A prompt asks for some attributes of one animal; a response is a list of fact sentences:

    prompt:   "what is the color and food of the zorb ?"
    response: "it is red . well , it eats fish ."

Gold preference, one number per response word (our definition; the whole module is word-level, and
the simulation tokenizer maps one word to one token):

- the value word of the first fact about an asked attribute: +1 if it is the animal's true value, -1
  otherwise;
- an unwanted span costs 1 in total, spread evenly over its words: a filler phrase ("to be honest ,"),
  a fact about an attribute that was not asked or was already answered, and any sentence that does not
  parse (junk);
- every other word: 0.

The gold score of a response is the sum of its word rewards divided by the number of asked attributes,
so a perfect answer scores 1 and missing, wrong or unwanted content lowers it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache

WORLD_SEED = 0
NUM_ENTITIES = 24

# attribute -> (words between the subject and the value, words after the value, possible values)
ATTRIBUTES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "color": (("is",), (), ("red", "blue", "green", "yellow", "black", "white")),
    "food": (("eats",), (), ("fish", "seeds", "grass", "insects", "fruit", "meat")),
    "home": (("lives", "in"), (), ("caves", "trees", "rivers", "deserts", "hills", "lakes")),
    "sound": (("says",), (), ("moo", "hiss", "purr", "chirp", "roar")),
    "size": (("has", "a"), ("body",), ("tiny", "small", "big", "huge")),
}
SUBJECTS: tuple[tuple[str, ...], ...] = (("it",), ("this", "animal"))
FILLERS: tuple[tuple[str, ...], ...] = (
    ("well", ","), ("to", "be", "honest", ","), ("basically", ","), ("as", "you", "know", ","), ("i", "think"),
)
PROMPT_WORDS = ("what", "is", "the", "of", "and", ",", "?")
END = "."
_SYLLABLES = ("ba", "ko", "zu", "mi", "ra", "te", "lo", "fi", "du", "ne", "sa", "vo", "gi", "pe", "ju", "wa")


@dataclass(frozen=True)
class Question:
    """One prompt: an animal and the attributes asked about, in order."""

    entity: str
    attributes: tuple[str, ...]

    @property
    def text(self) -> str:
        attrs = list(self.attributes)
        listed = attrs[0] if len(attrs) == 1 else " , ".join(attrs[:-1]) + " and " + attrs[-1]
        return f"what is the {listed} of the {self.entity} ?"


@dataclass
class World:
    """Animals and their true attribute values."""

    facts: dict[str, dict[str, str]]
    seed: int = WORLD_SEED
    _by_text: dict[str, Question] = field(default_factory=dict, repr=False)

    @property
    def entities(self) -> list[str]:
        return list(self.facts)

    def questions(self, max_attributes: int = 3) -> list[Question]:
        """Every (animal, ordered subset of 1..max_attributes attributes in canonical order)."""
        from itertools import combinations

        names = list(ATTRIBUTES)
        out = []
        for entity in self.facts:
            for k in range(1, max_attributes + 1):
                out += [Question(entity, combo) for combo in combinations(names, k)]
        return out

    def parse_prompt(self, prompt: str) -> Question:
        """The question a prompt text asks (raises ValueError for text that is not a world prompt)."""
        if not self._by_text:
            self._by_text = {q.text: q for q in self.questions(len(ATTRIBUTES))}
        key = " ".join(prompt.split())
        if key not in self._by_text:
            raise ValueError(f"not a prompt of this world: {prompt!r}")
        return self._by_text[key]

    def fact_words(self, entity: str, attribute: str, value: str | None = None,
                   subject: tuple[str, ...] = SUBJECTS[0]) -> list[str]:
        """The words of one fact sentence (the true value unless `value` is given)."""
        before, after, _ = ATTRIBUTES[attribute]
        return [*subject, *before, value or self.facts[entity][attribute], *after, END]

    def vocabulary(self) -> list[str]:
        words = set(PROMPT_WORDS) | {END} | set(ATTRIBUTES) | set(self.facts)
        for before, after, values in ATTRIBUTES.values():
            words |= set(before) | set(after) | set(values)
        for phrase in (*SUBJECTS, *FILLERS):
            words |= set(phrase)
        return sorted(words)


def build_world(seed: int = WORLD_SEED, num_entities: int = NUM_ENTITIES) -> World:
    """Deterministic: animal names from syllable pairs, values drawn uniformly."""
    rng = random.Random(seed)
    reserved = {w for w in World({}).vocabulary()}
    names: list[str] = []
    while len(names) < num_entities:
        name = rng.choice(_SYLLABLES) + rng.choice(_SYLLABLES) + rng.choice("xkrlnz")
        if name not in names and name not in reserved:
            names.append(name)
    facts = {n: {a: rng.choice(values) for a, (_, _, values) in ATTRIBUTES.items()} for n in names}
    return World(facts, seed)


@lru_cache(maxsize=4)
def default_world() -> World:
    return build_world()


# -- parsing a response --


@dataclass(frozen=True)
class Span:
    """A run of response words [start, end) and what it is.

    kind: "filler", "fact" (asked attribute, first mention), "extra" (unasked or repeated fact), "junk".
    """

    start: int
    end: int
    kind: str
    attribute: str = ""
    value_index: int = -1  # index of the value word (facts)
    subject: tuple[str, ...] = ()


def _match_fact(words: list[str]) -> tuple[str, int, tuple[str, ...]] | None:
    """(attribute, value offset, subject) if `words` is exactly one fact sentence ending in '.'."""
    for subject in SUBJECTS:
        n = len(subject)
        if tuple(words[:n]) != subject:
            continue
        for attribute, (before, after, _) in ATTRIBUTES.items():
            value_at = n + len(before)
            expected = len(subject) + len(before) + 1 + len(after) + 1
            if (len(words) == expected and tuple(words[n:value_at]) == before
                    and tuple(words[value_at + 1 : -1]) == after and words[-1] == END):
                return attribute, value_at, subject
    return None


def _leading_filler(words: list[str], start: int) -> int:
    """Length of the filler phrase starting at `start` (0 if none)."""
    for phrase in FILLERS:
        if tuple(words[start : start + len(phrase)]) == phrase:
            return len(phrase)
    return 0


def parse_response(question: Question, words: list[str]) -> list[Span]:
    """Cover every word with spans: sentences end at '.', filler phrases may open a sentence."""
    spans: list[Span] = []
    answered: set[str] = set()
    i = 0
    while i < len(words):
        n = _leading_filler(words, i)
        if n:
            spans.append(Span(i, i + n, "filler"))
            i += n
            continue
        end = i
        while end < len(words) and words[end] != END:
            end += 1
        end = min(end + 1, len(words))  # include the '.'
        match = _match_fact(words[i:end])
        if match is None:
            spans.append(Span(i, end, "junk"))
        else:
            attribute, offset, subject = match
            asked = attribute in question.attributes and attribute not in answered
            answered.add(attribute)
            spans.append(Span(i, end, "fact" if asked else "extra", attribute, i + offset, subject))
        i = end
    return spans


def gold_word_rewards(world: World, question: Question, words: list[str]) -> list[float]:
    """The gold reward of every response word (see the module docstring)."""
    rewards = [0.0] * len(words)
    for span in parse_response(question, words):
        if span.kind == "fact":
            correct = words[span.value_index] == world.facts[question.entity][span.attribute]
            rewards[span.value_index] = 1.0 if correct else -1.0
        else:
            share = -1.0 / (span.end - span.start)
            for j in range(span.start, span.end):
                rewards[j] = share
    return rewards


def gold_score(world: World, prompt: str, response: str) -> float:
    """Sum of the gold word rewards over the number of asked attributes (1.0 = perfect)."""
    question = world.parse_prompt(prompt)
    return sum(gold_word_rewards(world, question, response.split())) / len(question.attributes)


def gold_judge(prompts: list[str], responses: list[str]) -> list[float]:
    """The judge the training CLI loads as `training.sim.world:gold_judge` (default world)."""
    world = default_world()
    return [gold_score(world, p, r) for p, r in zip(prompts, responses, strict=True)]
