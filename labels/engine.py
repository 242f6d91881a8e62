"""The one label engine of algorithms.md §1, shared by the server (submit time) and training."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from rapidfuzz.distance import Levenshtein

from labels.align import Label, edit_script, equal_blocks, labels_from_script
from labels.chardiff import Diff, anchored_diff, changed_runs
from labels.tokenizer import LabelTokenizer

ALGORITHM_VERSION = "redline-labels/1"  # bump whenever labels for the same inputs could change
DEFAULT_MINIMALITY_BUDGET = 0.35  # max edit rate (our choice, algorithms.md §1.6)


@dataclass(frozen=True)
class EditStats:
    token_edit_distance: int
    edit_rate: float
    char_edit_distance: int
    original_tokens: int
    edited_tokens: int
    kept: int
    inserted: int
    deleted: int
    replaced: int


@dataclass(frozen=True)
class TokenLabels:
    tokenizer: str
    tokenizer_hash: str
    algorithm: str
    original_ids: list[int]
    original_labels: list[int]
    edited_ids: list[int]
    edited_labels: list[int]


@dataclass(frozen=True)
class EditAnalysis:
    """Everything the server stores and the exporter writes for one edit pair."""

    labels: TokenLabels
    char_diff: Diff
    stats: EditStats
    original_offsets: list[tuple[int, int]] = field(repr=False)
    edited_offsets: list[tuple[int, int]] = field(repr=False)

    def is_minimal(self, budget: float = DEFAULT_MINIMALITY_BUDGET) -> bool:
        return self.stats.edit_rate <= budget

    def to_record(self) -> dict[str, Any]:
        """JSON-ready form (the export's `token_labels`, `char_diff`, `stats`)."""
        return {
            "token_labels": asdict(self.labels),
            "char_diff": [[op, text] for op, text in self.char_diff],
            "stats": asdict(self.stats),
        }


def edit_rate(distance: int, edited_tokens: int) -> float:
    """TER/HTER convention: edits over the length of the edited response."""
    return distance / max(1, edited_tokens)


def char_edit_distance(original: str, edited: str, diff: Diff) -> int:
    """Exact character Levenshtein distance; the diff's own cost bounds it, which lets rapidfuzz band
    its search (the result stays exact, only faster when the edit is small)."""
    bound = sum(max(len(deleted), len(inserted)) for deleted, inserted in changed_runs(diff))
    return Levenshtein.distance(original, edited, score_hint=max(1, bound))


def _stats(original: str, edited: str, labels0: list[int], labels1: list[int], distance: int, diff: Diff):
    return EditStats(
        token_edit_distance=distance,
        edit_rate=edit_rate(distance, len(labels1)),
        char_edit_distance=char_edit_distance(original, edited, diff),
        original_tokens=len(labels0),
        edited_tokens=len(labels1),
        kept=labels0.count(Label.KEEP),
        inserted=labels1.count(Label.INSERT),
        deleted=labels0.count(Label.DELETE),
        replaced=labels0.count(Label.REPLACE),
    )


def label_ids(original_ids: list[int], edited_ids: list[int]) -> tuple[list[int], list[int], int]:
    """Labels of two token-id sequences, plus their edit distance; for callers that tokenised already."""
    script = edit_script(original_ids, edited_ids)
    original_labels, edited_labels = labels_from_script(len(original_ids), len(edited_ids), script)
    return original_labels, edited_labels, len(script)


def analyse_edit(original: str, edited: str, tokenizer: LabelTokenizer) -> EditAnalysis:
    """Tokenise both responses, align, label, diff and measure (the full computation)."""
    (ids0, off0), (ids1, off1) = tokenizer.encode_pair(original, edited)
    script = edit_script(ids0, ids1)
    labels0, labels1 = labels_from_script(len(ids0), len(ids1), script)
    diff = anchored_diff(original, edited, off0, off1, equal_blocks(ids0, ids1, script))
    return EditAnalysis(
        labels=TokenLabels(
            tokenizer=tokenizer.name,
            tokenizer_hash=tokenizer.vocab_hash,
            algorithm=ALGORITHM_VERSION,
            original_ids=ids0,
            original_labels=labels0,
            edited_ids=ids1,
            edited_labels=labels1,
        ),
        char_diff=diff,
        stats=_stats(original, edited, labels0, labels1, len(script), diff),
        original_offsets=off0,
        edited_offsets=off1,
    )

