"""Token alignment by a Levenshtein edit script on token ids (algorithms.md §1, steps 2-4)."""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum

from rapidfuzz.distance import Levenshtein


class Label(IntEnum):
    """Export codes of the token labels."""

    KEEP = 0
    INSERT = 1
    DELETE = 2
    REPLACE = 3


# The same codes as plain ints (tensor code compares with them) and by name (export cards, the editor's classes).
KEEP, INSERT, DELETE, REPLACE = (int(label) for label in Label)
LABEL_NAMES = {int(label): label.name.lower() for label in Label}


EditOp = tuple[str, int, int]  # (tag, position in original, position in edited); tags as rapidfuzz


def edit_script(original_ids: Sequence[int], edited_ids: Sequence[int]) -> list[EditOp]:
    """Unit-cost Levenshtein edit script with rapidfuzz's deterministic tie-breaking."""
    return [(op.tag, op.src_pos, op.dest_pos) for op in Levenshtein.editops(original_ids, edited_ids)]


def labels_from_script(n_original: int, n_edited: int, script: Sequence[EditOp]) -> tuple[list[int], list[int]]:
    original = [int(Label.KEEP)] * n_original
    edited = [int(Label.KEEP)] * n_edited
    for tag, src, dest in script:
        if tag == "replace":
            original[src] = edited[dest] = int(Label.REPLACE)
        elif tag == "delete":
            original[src] = int(Label.DELETE)
        else:  # insert
            edited[dest] = int(Label.INSERT)
    return original, edited


def apply_script(original_ids: Sequence[int], edited_ids: Sequence[int], script: Sequence[EditOp]) -> list[int]:
    """Rebuild the edited ids from the original ids and the script (the invariant the tests check)."""
    out: list[int] = []
    src = 0
    for tag, op_src, dest in script:
        out.extend(original_ids[src:op_src])
        src = op_src
        if tag == "insert":
            out.append(edited_ids[dest])
        elif tag == "replace":
            out.append(edited_ids[dest])
            src += 1
        else:
            src += 1
    out.extend(original_ids[src:])
    return out


def equal_blocks(original_ids: Sequence[int], edited_ids: Sequence[int], script: Sequence[EditOp]):
    """Runs of kept tokens as (original_start, edited_start, length), derived from the same script."""
    blocks: list[tuple[int, int, int]] = []
    src = dest = 0
    for tag, op_src, op_dest in script:
        if op_src - src > 0:
            blocks.append((src, dest, op_src - src))
        src, dest = op_src, op_dest
        if tag in ("replace", "delete"):
            src += 1
        if tag in ("replace", "insert"):
            dest += 1
    if len(original_ids) - src > 0:
        blocks.append((src, dest, len(original_ids) - src))
    return blocks
