"""Character diff for display, anchored on the token alignment.

A diff-match-patch diff of two whole 1,000-character texts costs several times the tokenisation in
pure Python. The token alignment already proves most of the text unchanged, so only the gaps between
kept token runs are diffed at character level: the common ends of a gap are trimmed, a short changed
middle is shown as one replacement, and a long one goes through diff-match-patch with its semantic
clean-up. Every anchor is verified character by character, so the result is always an exact diff:
its deletions and equalities spell the original, its insertions and equalities the edited text.
"""

from __future__ import annotations

from collections.abc import Sequence

from diff_match_patch import diff_match_patch

DELETE, EQUAL, INSERT = -1, 0, 1
Diff = list[tuple[int, str]]
SHORT_GAP = 16  # characters; a changed middle shorter than this on either side is one replacement

_dmp = diff_match_patch()


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _changed_middle(mid_a: str, mid_b: str) -> Diff:
    if len(mid_a) > SHORT_GAP and len(mid_b) > SHORT_GAP:
        middle = _dmp.diff_main(mid_a, mid_b, False)
        _dmp.diff_cleanupSemantic(middle)
        return [(op, text) for op, text in middle]
    return [(op, text) for op, text in ((DELETE, mid_a), (INSERT, mid_b)) if text]


class _DiffBuilder:
    """Collects pieces, joining neighbouring equalities as they come."""

    def __init__(self) -> None:
        self.pieces: Diff = []

    def equal(self, text: str) -> None:
        if not text:
            return
        if self.pieces and self.pieces[-1][0] == EQUAL:
            self.pieces[-1] = (EQUAL, self.pieces[-1][1] + text)
        else:
            self.pieces.append((EQUAL, text))

    def gap(self, a: str, b: str) -> None:
        """One stretch between anchors: trim its common ends, then replace or diff the middle."""
        if a == b:
            self.equal(a)
            return
        head = _common_prefix(a, b)
        tail = _common_prefix(a[head:][::-1], b[head:][::-1])
        self.equal(a[:head])
        self.pieces.extend(_changed_middle(a[head : len(a) - tail], b[head : len(b) - tail]))
        self.equal(a[len(a) - tail :])


def anchored_diff(
    original: str,
    edited: str,
    original_offsets: Sequence[tuple[int, int]],
    edited_offsets: Sequence[tuple[int, int]],
    blocks: Sequence[tuple[int, int, int]],
) -> Diff:
    """Diff `original` → `edited` using kept token runs `blocks` as verified equal anchors."""
    out = _DiffBuilder()
    pos0 = pos1 = 0
    for src, dest, length in blocks:
        a0, a1 = original_offsets[src][0], original_offsets[src + length - 1][1]
        b0, b1 = edited_offsets[dest][0], edited_offsets[dest + length - 1][1]
        # Byte-level tokenizers may give overlapping offsets for a character split across tokens.
        a0, b0 = max(a0, pos0), max(b0, pos1)
        if a1 <= a0 or b1 <= b0 or original[a0:a1] != edited[b0:b1]:
            continue
        out.gap(original[pos0:a0], edited[pos1:b0])
        out.equal(original[a0:a1])
        pos0, pos1 = a1, b1
    out.gap(original[pos0:], edited[pos1:])
    return out.pieces


def changed_runs(diff: Diff) -> list[tuple[str, str]]:
    """(deleted, inserted) text of each run of changes between equalities."""
    runs: list[tuple[str, str]] = []
    deleted = inserted = ""
    for op, text in diff:
        if op == EQUAL:
            if deleted or inserted:
                runs.append((deleted, inserted))
            deleted = inserted = ""
        elif op == DELETE:
            deleted += text
        else:
            inserted += text
    if deleted or inserted:
        runs.append((deleted, inserted))
    return runs


def full_diff(original: str, edited: str) -> Diff:
    """Plain diff-match-patch on the whole texts (the reference for tests and the benchmark)."""
    diff = _dmp.diff_main(original, edited, False)
    _dmp.diff_cleanupSemantic(diff)
    return [(op, text) for op, text in diff]


def diff_sides(diff: Diff) -> tuple[str, str]:
    """The two texts a diff spells, for checking exactness."""
    before = "".join(text for op, text in diff if op != INSERT)
    after = "".join(text for op, text in diff if op != DELETE)
    return before, after
