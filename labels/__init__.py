"""Redline's label engine (algorithms.md §1): pure Python, no torch; imported by `app` and `training`."""

from labels.align import DELETE, INSERT, KEEP, LABEL_NAMES, REPLACE, Label, apply_script, edit_script
from labels.chardiff import diff_sides
from labels.engine import (
    ALGORITHM_VERSION,
    DEFAULT_MINIMALITY_BUDGET,
    EditAnalysis,
    EditStats,
    TokenLabels,
    analyse_edit,
    edit_rate,
    label_ids,
)
from labels.tokenizer import LabelTokenizer, TokenizerNotFound, load_tokenizer

__all__ = [
    "ALGORITHM_VERSION",
    "DEFAULT_MINIMALITY_BUDGET",
    "DELETE",
    "INSERT",
    "KEEP",
    "LABEL_NAMES",
    "REPLACE",
    "EditAnalysis",
    "EditStats",
    "Label",
    "LabelTokenizer",
    "TokenLabels",
    "TokenizerNotFound",
    "analyse_edit",
    "apply_script",
    "diff_sides",
    "edit_rate",
    "edit_script",
    "label_ids",
    "load_tokenizer",
]
