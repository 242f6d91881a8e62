"""The end-of-response rule (algorithms.md §1.8): where the training rows get their EOS, and what each
kind does with a labelled EOS."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labels.align import edit_script
from training import losses
from training.data import EditPair, Formatter, collate_pairs, edit_masks, encode_pair, eos_codes, keep_mask

KEEP, REPLACE = losses.KEEP, losses.REPLACE
EOS = 0


class WordTokenizer:
    """Each space-separated word is its own id (1 + its vocabulary index); EOS is id 0; no chat template."""

    eos_token_id = EOS
    pad_token_id = EOS
    chat_template = None

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [self.vocab.setdefault(w, len(self.vocab) + 1) for w in text.split()]}


FMT = Formatter(WordTokenizer(), max_length=200, max_prompt_length=20)
words = st.lists(st.sampled_from("a b c d e f".split()), min_size=0, max_size=8)


def encode(original: list[str], edited: list[str]):
    return encode_pair(EditPair("1", "q", " ".join(original), " ".join(edited), "edited"), FMT)


def eos_labels(original: list[str], edited: list[str]) -> tuple[int, int]:
    enc = encode(original, edited)
    assert enc.rejected.has_eos and enc.chosen.has_eos
    return enc.rejected.codes[-1], enc.chosen.codes[-1]


@settings(max_examples=200, deadline=None)
@given(words, st.lists(st.sampled_from("x y z".split()), min_size=1, max_size=5))
def test_insertion_at_the_end_labels_the_eos_of_y0(y0, tail):
    assert eos_labels(y0, y0 + tail) == (REPLACE, KEEP)


@settings(max_examples=200, deadline=None)
@given(words, st.lists(st.sampled_from("x y z".split()), min_size=1, max_size=5))
def test_deletion_at_the_end_labels_the_eos_of_y1(y1, tail):
    assert eos_labels(y1 + tail, y1) == (KEEP, REPLACE)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from("p q r .".split()), min_size=1, max_size=4, unique=True), words, words)
def test_other_edits_leave_both_eos_keep(ending, y0_head, y1_head):
    # Both responses end with the same tokens, found nowhere else: no minimal script touches the end.
    # (With repeated tokens a tie may put an insertion at the end: `a` → `a a` is an insertion after y0.)
    assert eos_labels(y0_head + ending, y1_head + ending) == (KEEP, KEEP)


@settings(max_examples=300, deadline=None)
@given(words, words)
def test_rule_matches_its_definition_on_any_pair(y0, y1):
    """The EOS of y0 is replace iff the script inserts after y0's last token; the EOS of y1 iff it deletes
    y0's last token; never both."""
    enc = encode(y0, y1)
    script = edit_script(enc.rejected.response_ids[:-1], enc.chosen.response_ids[:-1])
    inserts_after = any(tag == "insert" and src == len(y0) for tag, src, _ in script)
    deletes_last = bool(y0) and any(tag == "delete" and src == len(y0) - 1 for tag, src, _ in script)
    assert (enc.rejected.codes[-1] == REPLACE) == inserts_after
    assert (enc.chosen.codes[-1] == REPLACE) == deletes_last
    assert not (inserts_after and deletes_last)
    assert eos_codes(len(y0), script) == (enc.rejected.codes[-1], enc.chosen.codes[-1])


def test_truncated_rows_have_no_eos_label():
    short = Formatter(WordTokenizer(), max_length=4, max_prompt_length=2)
    enc = encode_pair(EditPair("1", "q", "a", "a b c d", "edited"), short)
    assert not enc.chosen.has_eos and len(enc.chosen.codes) == len(enc.chosen.response_ids)
    assert enc.rejected.has_eos and enc.rejected.codes[-1] == REPLACE


def test_a_labelled_eos_enters_the_token_rm_spans_figa_and_dense_dpo():
    batch = collate_pairs([encode(["a", "b"], ["a", "b", "c"]), encode(["a", "b", "c"], ["a", "b"])], EOS)
    u1, u0 = edit_masks(batch)
    eos = batch["is_eos"]
    assert (u0 & eos[2:]).any(-1).tolist() == [True, False]  # pair 0: y0 stopped early, its EOS is in U0
    assert (u1 & eos[:2]).any(-1).tolist() == [False, True]  # pair 1: y1 ends earlier, its EOS is in U1
    ce = torch.full(batch["codes"].shape, 0.1)
    w = losses.figa_weights(batch["codes"], eos, batch["is_revised"], ce, 1.0, 0.5, 0.0, 0.6)
    assert float(w[2][eos[2]]) == -0.5 and float(w[3][eos[3]]) == 0.0  # only a replace EOS of I is pushed down
    dense = losses.dense_weights(batch["codes"], 1.1)
    assert float(dense[2][eos[2]]) == pytest.approx(1.1) and float(dense[3][eos[3]]) == 1.0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(words, words), min_size=1, max_size=4))
def test_every_eos_gets_a_token_rm_term(pairs):
    """Each EOS of a batch is in U1 / U0 (a labelled EOS: edited-span BT) or keep (keep-L2): none is
    left without a gradient, which is what fine-grained PPO pays at every EOS."""
    batch = collate_pairs([encode(y0, y1) for y0, y1 in pairs], EOS)
    u1, u0 = edit_masks(batch)
    covered = torch.cat([u1, u0]) | keep_mask(batch)
    assert bool(covered[batch["is_eos"]].all())
