"""Helpers of the training tests: a tiny random Llama with the real SmolLM2 tokenizer, and export files
in the server's edit-pair format, labelled with the label engine."""

from __future__ import annotations

import json
from pathlib import Path

from labels import analyse_edit, load_tokenizer

ROOT = Path(__file__).resolve().parents[2]
SMOL = ROOT / "var" / "models" / "SmolLM2-135M-Instruct"

# (prompt, original, edited): each edit swaps a bad word for a good one, deletes filler, or inserts.
TOPICS = ["tea", "rivers", "bread", "clocks", "maps", "bees", "glass", "salt", "kites", "moss", "owls", "wool"]


def edit_rows(n: int, seed: int = 0) -> list[dict]:
    """n edit-pair export rows; every third row a pure insertion, every fifth a pure deletion."""
    rows = []
    for i in range(n):
        topic = TOPICS[(i + seed) % len(TOPICS)]
        prompt = f"Tell me one fact about {topic} (case {i})."
        original = f"Sadly, {topic} are terrible and boring, honestly."
        if i % 3 == 1:
            edited = f"Sadly, {topic} are terrible and boring, honestly. Still, people like them."
        elif i % 5 == 2:
            original = f"{topic.capitalize()} are useful, honestly, truly, basically."
            edited = f"{topic.capitalize()} are useful."
        else:
            edited = f"Happily, {topic} are wonderful and useful, clearly."
        rows.append(make_row(f"r{i}", prompt, original, edited, "edited"))
    return rows


def make_row(row_id: str, prompt: str, original: str, edited: str, outcome: str) -> dict:
    """One export row as the server writes it (labels computed with the project's tokenizer)."""
    analysis = analyse_edit(original, edited, load_tokenizer(str(SMOL)))
    record = analysis.to_record()
    return {"id": row_id, "prompt": prompt, "original": original, "edited": edited, "outcome": outcome,
            **record, "annotator_id": "a1", "review": None, "created_at": "2026-01-01T00:00:00Z"}


def write_export(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


