"""Character diff for display, anchored on the token alignment.

A diff-match-patch diff of two whole 1,000-character texts costs several times the tokenisation in
pure Python. The token alignment already proves most of the text unchanged, so only the gaps between
kept token runs are diffed at character level: the common ends of a gap are trimmed, a short changed
middle is shown as one replacement, and a long one goes through diff-match-patch with its semantic
clean-up. Every anchor is verified character by character, so the result is always an exact diff:
its deletions and equalities spell the original, its insertions and equalities the edited text.

Every change is then widened to boundaries a reader can see: never inside a grapheme cluster (a
letter and its combining marks, a ZWJ emoji sequence), and never inside a word of a script whose
letters join or combine when shaped (Arabic, Syriac, the Indic and South-East Asian scripts,
Mongolian, Hangul jamo). Cutting "كتاب" into "كت<del>ا</del>ب" would show unjoined letter forms; a
Latin word keeps its single-letter changes ("colo<ins>u</ins>r").
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from diff_match_patch import diff_match_patch

DELETE, EQUAL, INSERT = -1, 0, 1
Diff = list[tuple[int, str]]
SHORT_GAP = 16  # characters; a changed middle shorter than this on either side is one replacement

_dmp = diff_match_patch()

# Scripts whose letters change form with their neighbours (joining, conjuncts, stacked vowels).
_SHAPED_RANGES = (
    (0x0600, 0x08FF),  # Arabic, Syriac, Arabic Supplement, Thaana, NKo, Samaritan, Mandaic, Arabic Ext.
    (0x0900, 0x0DFF),  # Devanagari … Sinhala
    (0x0E00, 0x0FFF),  # Thai, Lao, Tibetan
    (0x1000, 0x109F),  # Myanmar
    (0x1100, 0x11FF),  # Hangul Jamo
    (0x1780, 0x18AF),  # Khmer, Mongolian
    (0xA960, 0xA97F), (0xD7B0, 0xD7FF),  # Hangul Jamo extensions
    (0xFB50, 0xFDFF), (0xFE70, 0xFEFF),  # Arabic presentation forms
)
_JOINERS = "\u200c\u200d"  # ZWNJ and ZWJ belong to the letters around them


def _shaped(char: str) -> bool:
    code = ord(char)
    return char in _JOINERS or (
        any(lo <= code <= hi for lo, hi in _SHAPED_RANGES) and unicodedata.category(char)[0] in "LM"
    )


def _extends(char: str) -> bool:
    """Whether `char` continues the grapheme cluster before it (UAX #29's Extend, ZWJ, SpacingMark)."""
    code = ord(char)
    return (
        unicodedata.category(char) in ("Mn", "Me", "Mc")
        or char == "\u200d"
        or 0xFE00 <= code <= 0xFE0F  # variation selectors
        or 0x1F3FB <= code <= 0x1F3FF  # emoji skin-tone modifiers
        or 0xE0020 <= code <= 0xE007F  # emoji tag sequences
        or 0xE0100 <= code <= 0xE01EF
    )


def visible_cut(left: str, right: str) -> bool:
    """Whether a change may begin or end between the characters `left` and `right` ("" is a text end)."""
    if not left or not right:
        return True
    if _extends(right) or left == "\u200d":
        return False
    if 0x1F1E6 <= ord(left) <= 0x1F1FF and 0x1F1E6 <= ord(right) <= 0x1F1FF:
        return False  # a flag is two regional indicators
    return not (_shaped(left) and _shaped(right))


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
    return snap_to_boundaries(out.pieces)


def snap_to_boundaries(diff: Diff) -> Diff:
    """Widen each run of changes until both its ends are cuts a reader can see (`visible_cut`) in both
    texts, taking characters from the equalities around it; runs that meet merge."""
    pending: list[tuple[str, str, str]] = []  # ("=", text, text) or ("~", deleted, inserted)
    for deleted, inserted, equal in _runs_and_equalities(diff):
        if deleted or inserted:
            pending.append(("~", deleted, inserted))
        if equal:
            pending.append(("=", equal, equal))
    out: list[list[str]] = []
    i = 0
    while i < len(pending):
        kind, a, b = pending[i]
        i += 1
        if kind == "=":
            out.append(["=", a])
            continue
        deleted, inserted = a, b
        # Left end: take characters from the equality before until the cut is visible on both sides.
        while out:
            before = out[-1][1]
            after = pending[i][1][:1] if i < len(pending) else ""
            if not before or (
                visible_cut(before[-1], deleted[:1] or after) and visible_cut(before[-1], inserted[:1] or after)
            ):
                break
            deleted, inserted = before[-1] + deleted, before[-1] + inserted
            out[-1][1] = before[:-1]
            if not out[-1][1]:
                out.pop()
                if out and out[-1][0] == "~":  # the equality between two runs is gone: merge them
                    _, d0, i0 = out.pop()
                    deleted, inserted = d0 + deleted, i0 + inserted
        # Right end: the same with the equality after.
        while i < len(pending):
            after = pending[i][1]
            before = out[-1][1][-1:] if out else ""
            if visible_cut(deleted[-1:] or before, after[0]) and visible_cut(inserted[-1:] or before, after[0]):
                break
            deleted, inserted = deleted + after[0], inserted + after[0]
            if len(after) > 1:
                pending[i] = ("=", after[1:], after[1:])
            else:
                i += 1
                if i < len(pending) and pending[i][0] == "~":
                    deleted, inserted = deleted + pending[i][1], inserted + pending[i][2]
                    i += 1
        out.append(["~", deleted, inserted])
    pieces: Diff = []
    for entry in out:
        if entry[0] == "=":
            pieces.append((EQUAL, entry[1]))
        else:
            pieces.extend((op, text) for op, text in ((DELETE, entry[1]), (INSERT, entry[2])) if text)
    return pieces


def _runs_and_equalities(diff: Diff) -> list[tuple[str, str, str]]:
    """The diff as (deleted, inserted, following equality) triples."""
    triples: list[tuple[str, str, str]] = []
    deleted = inserted = ""
    for op, text in diff:
        if op == EQUAL:
            triples.append((deleted, inserted, text))
            deleted = inserted = ""
        elif op == DELETE:
            deleted += text
        else:
            inserted += text
    if deleted or inserted:
        triples.append((deleted, inserted, ""))
    return triples


def changed_runs(diff: Diff) -> list[tuple[str, str]]:
    """(deleted, inserted) text of each run of changes between equalities."""
    return [(deleted, inserted) for deleted, inserted, _ in _runs_and_equalities(diff) if deleted or inserted]


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
