"""The label engine (algorithms.md §1): invariants as properties, hard inputs, and the worked example."""

from __future__ import annotations

import random
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rapidfuzz.distance import Levenshtein

from labels import (
    ALGORITHM_VERSION,
    Label,
    LabelTokenizer,
    analyse_edit,
    apply_script,
    diff_sides,
    edit_script,
    label_ids,
    load_tokenizer,
)
from labels.chardiff import full_diff, snap_to_boundaries, visible_cut


@pytest.fixture(scope="module")
def tok(default_tokenizer_path: Path) -> LabelTokenizer:
    return load_tokenizer(str(default_tokenizer_path))


def check_invariants(original: str, edited: str, tok: LabelTokenizer) -> None:
    result = analyse_edit(original, edited, tok)
    labels = result.labels
    assert labels.original_ids == tok.encode(original)[0]
    assert labels.edited_ids == tok.encode(edited)[0]
    # one label per token
    assert len(labels.original_labels) == len(labels.original_ids)
    assert len(labels.edited_labels) == len(labels.edited_ids)
    assert set(labels.original_labels) <= {Label.KEEP, Label.DELETE, Label.REPLACE}
    assert set(labels.edited_labels) <= {Label.KEEP, Label.INSERT, Label.REPLACE}
    # applying the edit script to y0's ids gives y1's ids, and its length is the distance
    script = edit_script(labels.original_ids, labels.edited_ids)
    assert apply_script(labels.original_ids, labels.edited_ids, script) == labels.edited_ids
    assert result.stats.token_edit_distance == len(script)
    assert result.stats.token_edit_distance == Levenshtein.distance(labels.original_ids, labels.edited_ids)
    # replace labels pair up; keep tokens are the same tokens in order on both sides
    assert labels.original_labels.count(Label.REPLACE) == labels.edited_labels.count(Label.REPLACE)
    kept0 = [t for t, lab in zip(labels.original_ids, labels.original_labels, strict=True) if lab == Label.KEEP]
    kept1 = [t for t, lab in zip(labels.edited_ids, labels.edited_labels, strict=True) if lab == Label.KEEP]
    assert kept0 == kept1
    # the character diff is exact, and the stats agree with the labels
    assert diff_sides(result.char_diff) == (original, edited)
    assert_visible_cuts(result.char_diff)
    assert result.stats.char_edit_distance == Levenshtein.distance(original, edited)
    assert result.stats.edit_rate == pytest.approx(len(script) / max(1, len(labels.edited_ids)))
    assert result.stats.kept == len(kept0)
    if original == edited:
        assert result.stats.token_edit_distance == 0
        assert set(labels.original_labels) <= {Label.KEEP}
        assert result.char_diff in ([], [(0, original)])


def assert_visible_cuts(diff) -> None:
    """Every boundary between diff pieces is a visible cut in both texts (no split grapheme or shaped word)."""
    for side in (-1, 1):  # the original (equalities and deletions), then the edited text
        pieces = [text for op, text in diff if op != -side and text]
        for left, right in pairwise(pieces):
            assert visible_cut(left[-1], right[0]), (left, right)


texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=120)
words = st.lists(st.sampled_from(["the", "cat", "sat", "on", "a", "mat", "é", "猫", "🙂", "\n", "  ", "x=1;"]),
                 max_size=40).map(" ".join)


@st.composite
def edited_pair(draw: st.DrawFn) -> tuple[str, str]:
    """A text and a few random word-level edits of it (the shape of real minimal edits)."""
    base = draw(words).split(" ")
    edited = list(base)
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["insert", "delete", "replace"]))
        pos = draw(st.integers(0, max(0, len(edited) - 1)))
        word = draw(st.sampled_from(["dog", "ran", "", "Ä", "🙃", "\t"]))
        if kind == "insert":
            edited.insert(pos, word)
        elif edited and kind == "delete":
            del edited[pos]
        elif edited:
            edited[pos] = word
    return " ".join(base), " ".join(edited)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(original=texts, edited=texts)
def test_invariants_on_random_texts(tok: LabelTokenizer, original: str, edited: str) -> None:
    check_invariants(original, edited, tok)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pair=edited_pair())
def test_invariants_on_word_edits(tok: LabelTokenizer, pair: tuple[str, str]) -> None:
    check_invariants(*pair, tok)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts)
def test_identical_texts_are_all_keep(tok: LabelTokenizer, text: str) -> None:
    result = analyse_edit(text, text, tok)
    assert result.stats.token_edit_distance == 0
    assert set(result.labels.original_labels) | set(result.labels.edited_labels) <= {Label.KEEP}


@given(a=st.lists(st.integers(0, 6), max_size=30), b=st.lists(st.integers(0, 6), max_size=30))
def test_label_ids_on_raw_ids(a: list[int], b: list[int]) -> None:
    labels0, labels1, distance = label_ids(a, b)
    assert distance == Levenshtein.distance(a, b)
    assert apply_script(a, b, edit_script(a, b)) == b
    assert len(labels0) == len(a) and len(labels1) == len(b)


def test_worked_example(tok: LabelTokenizer) -> None:
    result = analyse_edit("a b c d", "a B c d e", tok)
    # Each letter (with its leading space) is one token of this tokenizer.
    assert len(result.labels.original_ids) == 4 and len(result.labels.edited_ids) == 5
    assert result.labels.original_labels == [Label.KEEP, Label.REPLACE, Label.KEEP, Label.KEEP]
    assert result.labels.edited_labels == [Label.KEEP, Label.REPLACE, Label.KEEP, Label.KEEP, Label.INSERT]
    assert result.char_diff == [(0, "a "), (-1, "b"), (1, "B"), (0, " c d"), (1, " e")]
    assert result.stats.token_edit_distance == 2
    assert result.stats.edit_rate == pytest.approx(2 / 5)
    assert (result.stats.replaced, result.stats.inserted, result.stats.deleted) == (1, 1, 0)


HARD_INPUTS = {
    "cjk": ("我喜欢在公园里散步。", "我喜欢在花园里跑步。"),
    "emoji_and_combining": ("Great job 👍🏽! Café naïve", "Great job 👍🏿!! Cafe\u0301 naive"),
    "right_to_left": ("مرحبا بالعالم، كيف حالك؟", "مرحبا بالعالم، كيف حالكم؟"),
    "whitespace_only": ("one two  three\n", "one  two three \n\n"),
    "code_indentation": (
        "```python\ndef f(x):\n    if x:\n        return 1\n    return 0\n```",
        "```python\ndef f(x):\n  if x:\n    return 1\n  return 0\n```",
    ),
    "empty_original": ("", "A brand new answer."),
    "empty_edit": ("Everything here was wrong.", ""),
    "both_empty": ("", ""),
}


@pytest.mark.parametrize("name", sorted(HARD_INPUTS))
def test_hard_inputs(tok: LabelTokenizer, name: str) -> None:
    original, edited = HARD_INPUTS[name]
    check_invariants(original, edited, tok)


def test_empty_sides_label_everything(tok: LabelTokenizer) -> None:
    inserted = analyse_edit("", "A brand new answer.", tok)
    assert inserted.labels.original_labels == []
    assert set(inserted.labels.edited_labels) == {Label.INSERT}
    assert inserted.stats.edit_rate == 1.0
    deleted = analyse_edit("Everything here was wrong.", "", tok)
    assert set(deleted.labels.original_labels) == {Label.DELETE}
    assert deleted.stats.edit_rate == len(deleted.labels.original_ids)  # d / max(1, 0)


def test_ten_thousand_token_response(tok: LabelTokenizer) -> None:
    rng = random.Random(7)
    vocab = ["alpha", "beta", "gamma", "delta", "model", "token", "edit", "reward", "value", "policy"]
    words = [rng.choice(vocab) for _ in range(10_000)]
    edited = list(words)
    for i in rng.sample(range(len(words)), 500):
        edited[i] = rng.choice(vocab).upper()
    original_text, edited_text = " ".join(words), " ".join(edited)
    assert len(tok.encode(original_text)[0]) >= 10_000
    check_invariants(original_text, edited_text, tok)


def test_recomputed_labels_equal_submit_time_labels(tok: LabelTokenizer, default_tokenizer_path: Path) -> None:
    original, edited = HARD_INPUTS["code_indentation"]
    at_submit = analyse_edit(original, edited, tok).to_record()
    load_tokenizer.cache_clear()  # a later process: the tokenizer is loaded afresh from disk
    again = load_tokenizer(str(default_tokenizer_path))
    recomputed = analyse_edit(original, edited, again).to_record()
    assert recomputed == at_submit
    assert at_submit["token_labels"]["algorithm"] == ALGORITHM_VERSION
    assert at_submit["token_labels"]["tokenizer_hash"] == tok.vocab_hash == again.vocab_hash


def changed_chars(diff: list[tuple[int, str]]) -> int:
    return sum(len(text) for op, text in diff if op != 0)


def test_display_diff_stays_close_to_plain_diff_match_patch(tok: LabelTokenizer) -> None:
    """Over many edits, the anchored diff marks about as many characters changed as diff-match-patch on
    the whole texts (it shows a replaced word whole where dmp may keep a coincidental shared letter)."""
    rng = random.Random(3)
    vocab = "the model wrote a long answer about gradient descent and its learning rate".split()
    ours = plain = 0
    for _ in range(60):
        words = [rng.choice(vocab) for _ in range(120)]
        edited = [w if rng.random() > 0.1 else rng.choice(vocab) + "s" for w in words]
        original_text, edited_text = " ".join(words), " ".join(edited)
        ours += changed_chars(analyse_edit(original_text, edited_text, tok).char_diff)
        plain += changed_chars(full_diff(original_text, edited_text))
    assert ours <= 1.05 * plain


@pytest.mark.parametrize(("original", "edited", "expected"), [
    # Arabic letters join: a changed letter shows its whole word, deleted then inserted.
    ("الكتاب كبير.", "الكتب كبير.", [(-1, "الكتاب"), (1, "الكتب"), (0, " كبير.")]),
    ("السلام عليكم ورحمة", "السلام عليكن ورحمه",
     [(0, "السلام "), (-1, "عليكم"), (1, "عليكن"), (0, " "), (-1, "ورحمة"), (1, "ورحمه")]),
    ("नमस्ते दुनिया", "नमस्कार दुनिया", [(-1, "नमस्ते"), (1, "नमस्कार"), (0, " दुनिया")]),  # conjuncts
    # Hebrew letters do not join: only the letter with its points (a grapheme) is cut out.
    ("שָׁלוֹם עולם", "שָׁלֹום עולם", [(0, "שָׁ"), (-1, "לוֹ"), (1, "לֹו"), (0, "ם עולם")]),
    ("hi 👍🏻 x", "hi 👍🏿 x", [(0, "hi "), (-1, "👍🏻"), (1, "👍🏿"), (0, " x")]),  # an emoji with its skin tone
    ("The color red", "The colour red", [(0, "The colo"), (1, "u"), (0, "r red")]),  # Latin keeps letters
])
def test_diff_never_cuts_a_grapheme_or_a_shaped_word(original: str, edited: str, expected) -> None:
    assert snap_to_boundaries(full_diff(original, edited)) == expected


arabic = st.text(alphabet="كتابالسمعليرحة ًٌٍَُِّْ.", max_size=60)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(original=arabic, edited=arabic)
def test_arabic_diffs_are_exact_with_visible_cuts(tok: LabelTokenizer, original: str, edited: str) -> None:
    check_invariants(original, edited, tok)


def test_unknown_tokenizer_is_a_clear_error() -> None:
    from labels import TokenizerNotFound

    with pytest.raises(TokenizerNotFound, match="neither a local folder"):
        load_tokenizer("no-such-org/no-such-tokenizer-xyz")


def test_cached_original_encoding_is_exact_and_never_shared(tok: LabelTokenizer) -> None:
    original, edited = "Teh quick brown fox, naturally.", "The quick brown fox, naturally."
    tok.forget_originals()
    first = tok.encode_pair(original, edited)
    assert first == (tok.encode(original), tok.encode(edited))
    first[0][0].append(-1)  # a caller that changes its lists must not change the next caller's
    first[0][1].clear()
    assert tok.encode_pair(original, edited) == (tok.encode(original), tok.encode(edited))
    assert tok._originals.cache_info().hits >= 1


_PIECES = st.sampled_from([
    " ", "  ", "\n", "\t", "\u00a0", "\u2003", "\x1c", "a", "Word", "teh", "'s", "'ll", "don't", "3", "42", "1.5",
    ",", ".", "!?", "--", "(", ")", "é", "naïve", "日本語", "😀", "\u0301", "<|im_start|>", "<|endoftext|>", "Ġ",
])


@given(st.lists(_PIECES, max_size=60).map("".join))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_encoding_word_by_word_equals_encoding_whole(tok: LabelTokenizer, text: str) -> None:
    whole = tok.tokenizer.encode(text, add_special_tokens=False)
    assert tok._words is not None  # SmolLM2 is byte-level BPE: the word-by-word path is the one under test
    assert tok.encode(text) == (whole.ids, whole.offsets)
    assert tok.encode(text) == (whole.ids, whole.offsets)  # again, from the word cache


def test_other_tokenizers_are_encoded_whole() -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    bpe = Tokenizer(models.BPE(vocab={"a": 0, "b": 1}, merges=[]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.normalizer = normalizers.NFKC()  # a normaliser may join characters across words
    assert LabelTokenizer("nfkc", bpe, "x")._words is None
    words = Tokenizer(models.WordLevel(vocab={"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    assert LabelTokenizer("word-level", words, "x")._words is None
    assert LabelTokenizer("word-level", words, "x").encode("a b") == ([0, 1], [(0, 1), (2, 3)])
