"""Gold preference, simulated annotator and synthetic corpus of the simulation (training/sim)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labels import Label, label_ids
from training.sim.annotator import AnnotatorNoise, SimulatedAnnotator, edit_words
from training.sim.corpus import FlawRates, sample_response, split_questions
from training.sim.world import (
    ATTRIBUTES,
    Question,
    build_world,
    default_world,
    gold_judge,
    gold_score,
    gold_word_rewards,
    parse_response,
)

WORLD = default_world()
ENTITY = WORLD.entities[0]
TRUTH = WORLD.facts[ENTITY]
Q = Question(ENTITY, ("color", "food"))


def wrong(attribute: str) -> str:
    return next(v for v in ATTRIBUTES[attribute][2] if v != TRUTH[attribute])


def test_world_is_deterministic_and_prompts_round_trip():
    assert build_world().facts == WORLD.facts
    assert len(WORLD.entities) == len(set(WORLD.entities)) == 24
    for q in WORLD.questions():
        assert WORLD.parse_prompt(q.text) == q
    assert Q.text == f"what is the color and food of the {ENTITY} ?"
    with pytest.raises(ValueError):
        WORLD.parse_prompt("what is love ?")


def test_gold_rewards_of_each_kind_of_span():
    good = f"it is {TRUTH['color']} . this animal eats {TRUTH['food']} ."
    assert gold_word_rewards(WORLD, Q, good.split()) == [0, 0, 1, 0, 0, 0, 0, 1, 0]
    assert gold_score(WORLD, Q.text, good) == 1.0
    bad_value = f"it is {wrong('color')} . it eats {TRUTH['food']} ."
    assert gold_word_rewards(WORLD, Q, bad_value.split())[2] == -1.0
    assert gold_score(WORLD, Q.text, bad_value) == 0.0
    filler = f"to be honest , it is {TRUTH['color']} . it eats {TRUTH['food']} ."
    rewards = gold_word_rewards(WORLD, Q, filler.split())
    assert rewards[:4] == [-0.25] * 4 and sum(rewards) == pytest.approx(1.0)
    extra = f"it is {TRUTH['color']} . it says {TRUTH['sound']} . it eats {TRUTH['food']} ."
    assert sum(gold_word_rewards(WORLD, Q, extra.split())) == pytest.approx(1.0)
    repeated = f"it is {TRUTH['color']} . it is {TRUTH['color']} ."
    assert gold_score(WORLD, Q.text, repeated) == pytest.approx(0.0)  # +1 first mention, -1 the repeat
    assert gold_score(WORLD, Q.text, f"it is {TRUTH['color']} .") == 0.5  # food missing
    assert gold_score(WORLD, Q.text, "fish fish it") == -0.5  # one junk sentence
    assert gold_score(WORLD, Q.text, "") == 0.0
    assert gold_judge([Q.text, Q.text], [good, bad_value]) == [1.0, 0.0]


def corpus_responses(n: int, seed: int, rates: FlawRates = FlawRates(0.5, 0.4, 0.2, 0.3)):
    rng = random.Random(seed)
    questions = WORLD.questions()
    for _ in range(n):
        q = rng.choice(questions)
        yield q, sample_response(WORLD, q, rates, rng)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000))
def test_noiseless_annotator_reaches_gold_optimum(seed):
    annotator = SimulatedAnnotator(WORLD, seed=seed)
    for q, response in corpus_responses(10, seed):
        edit = annotator.edit(q.text, response)
        assert gold_score(WORLD, q.text, edit.edited) == pytest.approx(1.0)
        assert (edit.outcome == "no_change_needed") == (gold_score(WORLD, q.text, response) == pytest.approx(1.0))
        assert edit.missed == edit.spurious == 0


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000))
def test_edits_are_minimal(seed):
    """The token edit distance never exceeds what the gold preference asks for: one substitution per
    wrong value, the words of each unwanted span, the words of each missing fact."""
    annotator = SimulatedAnnotator(WORLD, seed=seed)
    vocab = {w: i for i, w in enumerate(WORLD.vocabulary())}
    for q, response in corpus_responses(10, seed):
        words = response.split()
        edited = annotator.edit(q.text, response).edited.split()
        codes0, codes1, distance = label_ids([vocab[w] for w in words], [vocab[w] for w in edited])
        answered = {s.attribute for s in parse_response(q, words) if s.kind == "fact"}
        missing = sum(len(WORLD.fact_words(q.entity, a)) for a in q.attributes if a not in answered)
        needed = sum(r < 0 for r in gold_word_rewards(WORLD, q, words)) + missing
        assert distance <= needed
        assert (distance == 0) == all(c == Label.KEEP for c in codes0 + codes1)


def test_noise_misses_and_spurious_edits():
    response = f"well , it is {wrong('color')} . it eats {TRUTH['food']} ."
    rng = random.Random(0)
    words = response.split()
    same, fixes, missed, spurious = edit_words(WORLD, Q, words, AnnotatorNoise(miss_prob=1.0), rng)
    assert same == words and fixes == 0 and missed == 2 and spurious == 0
    edited, fixes, missed, spurious = edit_words(WORLD, Q, words, AnnotatorNoise(spurious_prob=1.0), rng)
    assert fixes == 2 and spurious == 1
    assert " ".join(edited) == f"it is {TRUTH['color']} . this animal eats {TRUTH['food']} ."
    assert gold_score(WORLD, Q.text, " ".join(edited)) == 1.0  # the spurious edit is gold-neutral


def test_noise_rates_are_respected():
    annotator = SimulatedAnnotator(WORLD, AnnotatorNoise(miss_prob=0.3, spurious_prob=0.2), seed=1)
    fixes = missed = 0
    for q, response in corpus_responses(400, 3):
        edit = annotator.edit(q.text, response)
        fixes, missed = fixes + edit.fixes, missed + edit.missed
    assert 0.25 < missed / (fixes + missed) < 0.35


def test_corpus_flaw_rates_show_in_gold_scores():
    clean = [gold_score(WORLD, q.text, r) for q, r in corpus_responses(200, 0, FlawRates(0, 0, 0, 0))]
    flawed = [gold_score(WORLD, q.text, r) for q, r in corpus_responses(400, 0, FlawRates())]
    assert min(clean) == 1.0
    # per asked attribute: (1 - p_missing)(1 - 2 p_wrong) - p_filler - (1 - p_missing) p_extra ≈ 0.23
    assert 0.13 < sum(flawed) / len(flawed) < 0.33


def test_question_split_is_disjoint_and_covers_every_entity():
    train, held = split_questions(WORLD)
    assert not set(train) & set(held)
    assert {q.entity for q in train} == set(WORLD.entities)
