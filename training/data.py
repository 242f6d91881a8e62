"""Reading exports and turning them into token tensors.

Format (one rule for every kind, so labels and training agree): prompt ids come from the model's chat
template with a generation prompt when it has one (plain prompt text otherwise); response ids are the
response text tokenised alone without special tokens; a row is prompt ⊕ response ⊕ EOS. Prompt and
response are tokenised separately and concatenated, so the response ids are exactly the ones the
label engine aligned. Labels are always recomputed from those ids with the label engine's edit script:
it is cheap and it makes the export's tokenizer irrelevant (the file's labels may come from another
tokenizer). The EOS of each row gets its label here, by the end-of-response rule (`eos_codes`), the one
place every kind's rows get their EOS.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from labels import Label
from labels.align import EditOp, edit_script, labels_from_script

OUTCOMES_WITH_EDITS = ("edited",)
OUTCOMES_WITH_GOOD_RESPONSE = ("edited", "no_change_needed")


@dataclass(frozen=True)
class EditPair:
    id: str
    prompt: str
    original: str
    edited: str
    outcome: str


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl or .parquet file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def read_export(path: str | Path, outcomes: Sequence[str] = OUTCOMES_WITH_EDITS) -> list[EditPair]:
    """Edit pairs whose outcome is in `outcomes` ("unfixable" rows have no good response: never used)."""
    pairs = []
    for i, row in enumerate(read_rows(path)):
        missing = {"prompt", "original", "edited"} - set(row)
        if missing:
            raise ValueError(f"{path} row {i}: not an edit-pair export (missing {', '.join(sorted(missing))})")
        outcome = row.get("outcome") or "edited"
        if outcome in outcomes:
            pairs.append(EditPair(str(row.get("id", i)), row["prompt"], row["original"], row["edited"], outcome))
    return pairs


def read_prompts(path: str | Path) -> list[tuple[str, str]]:
    """(id, prompt) from a .txt file (one prompt a line) or .jsonl/.parquet rows with a `prompt` field."""
    path = Path(path)
    if path.suffix == ".txt":
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        return [(str(i), line) for i, line in enumerate(lines) if line]
    out, seen = [], set()
    for i, row in enumerate(read_rows(path)):
        if "prompt" not in row:
            raise ValueError(f"{path} row {i}: no `prompt` field")
        if row["prompt"] not in seen:  # exports repeat a prompt once per edit
            seen.add(row["prompt"])
            out.append((str(row.get("id", i)), row["prompt"]))
    return out


def split_by_prompt(items: Sequence[Any], prompt_of, val_fraction: float, seed: int) -> tuple[list, list]:
    """Train/validation split where all rows of one prompt land on the same side (hash of seed + prompt)."""
    train, val = [], []
    for item in items:
        digest = hashlib.sha256(f"{seed}\0{prompt_of(item)}".encode()).digest()
        (val if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else train).append(item)
    if val_fraction > 0 and not val and len(train) > 1:
        val.append(train.pop())  # a tiny file still gets something to evaluate on
    return train, val


class Formatter:
    """Prompt/response tokenisation with the model's tokenizer, shared by every kind."""

    def __init__(self, tokenizer, max_length: int = 512, max_prompt_length: int = 256) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.has_template = bool(getattr(tokenizer, "chat_template", None))

    def prompt_ids(self, prompt: str) -> list[int]:
        if self.has_template:
            ids = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=False
            )
        else:
            ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        return list(ids)[-self.max_prompt_length:]  # keep the end: it holds the generation prompt

    def response_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def row(self, prompt_ids: list[int], response_ids: list[int], codes: list[int] | None = None,
            eos_code: int = Label.KEEP) -> Row:
        """prompt ⊕ response ⊕ EOS (labelled `eos_code`), the response cut on the right to fit max_length
        (then no EOS)."""
        room = max(0, self.max_length - len(prompt_ids))
        codes = codes if codes is not None else [0] * len(response_ids)
        if len(response_ids) + 1 <= room:
            return Row(prompt_ids, [*response_ids, self.eos_id], [*codes, int(eos_code)], has_eos=True)
        return Row(prompt_ids, response_ids[:room], codes[:room], has_eos=False)


@dataclass(frozen=True)
class Row:
    """One training sequence: prompt ids, response ids (EOS included when it fits) and their label codes."""

    prompt_ids: list[int]
    response_ids: list[int]
    codes: list[int]
    has_eos: bool

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


@dataclass(frozen=True)
class EncodedPair:
    id: str
    prompt: str
    chosen: Row  # x ⊕ y1 ⊕ EOS
    rejected: Row  # x ⊕ y0 ⊕ EOS


def eos_codes(n_original: int, script: Sequence[EditOp]) -> tuple[int, int]:
    """Labels of (y0's EOS, y1's EOS) by the end-of-response rule (algorithms.md §1.8).

    An insertion after y0's last token means y0 stopped too early: its EOS is `replace`. A deletion of
    y0's last token means y1 ends where y0 should have: y1's EOS is `replace`. Otherwise both `keep`.
    (A minimal script never does both: deleting the last token and inserting after it costs 2, a
    replacement 1.)
    """
    stopped_early = any(tag == "insert" and src == n_original for tag, src, _ in script)
    ran_on = n_original > 0 and any(tag == "delete" and src == n_original - 1 for tag, src, _ in script)
    return (int(Label.REPLACE) if stopped_early else int(Label.KEEP),
            int(Label.REPLACE) if ran_on else int(Label.KEEP))


def encode_pair(pair: EditPair, fmt: Formatter) -> EncodedPair:
    prompt = fmt.prompt_ids(pair.prompt)
    ids0, ids1 = fmt.response_ids(pair.original), fmt.response_ids(pair.edited)
    script = edit_script(ids0, ids1)
    codes0, codes1 = labels_from_script(len(ids0), len(ids1), script)
    eos0, eos1 = eos_codes(len(ids0), script)
    return EncodedPair(pair.id, pair.prompt, fmt.row(prompt, ids1, codes1, eos1), fmt.row(prompt, ids0, codes0, eos0))


def encode_pairs(pairs: Sequence[EditPair], fmt: Formatter) -> list[EncodedPair]:
    return [encode_pair(p, fmt) for p in pairs]


def collate_rows(rows: Sequence[Row], pad_id: int) -> dict[str, Tensor]:
    """Right-padded batch: input_ids, attention_mask, response_mask (response tokens incl. EOS),
    codes (label code at response positions, 0 elsewhere), is_eos."""
    width = max(len(r) for r in rows)
    batch = len(rows)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention = torch.zeros((batch, width), dtype=torch.bool)
    response = torch.zeros((batch, width), dtype=torch.bool)
    codes = torch.zeros((batch, width), dtype=torch.long)
    is_eos = torch.zeros((batch, width), dtype=torch.bool)
    for i, r in enumerate(rows):
        p, n = len(r.prompt_ids), len(r.response_ids)
        input_ids[i, : p + n] = torch.tensor(r.prompt_ids + r.response_ids)
        attention[i, : p + n] = True
        response[i, p : p + n] = True
        codes[i, p : p + n] = torch.tensor(r.codes, dtype=torch.long)
        if r.has_eos:
            is_eos[i, p + n - 1] = True
    return {"input_ids": input_ids, "attention_mask": attention, "response_mask": response,
            "codes": codes, "is_eos": is_eos}


def collate_pairs(items: Sequence[EncodedPair], pad_id: int) -> dict[str, Tensor]:
    """Chosen rows first, then rejected rows, in one batch (one forward pass scores both)."""
    batch = collate_rows([p.chosen for p in items] + [p.rejected for p in items], pad_id)
    n = len(items)
    batch["is_revised"] = torch.arange(2 * n)[:, None] < n
    return batch


def shared_prefix_length(batch: dict[str, Tensor]) -> int:
    """How many leading tokens every pair of a `collate_pairs` batch shares (the prompt and the response up to
    its first change), padding excluded; at most width − 1, so every row keeps a token of its own."""
    ids, attention = batch["input_ids"], batch["attention_mask"].bool()
    n = ids.shape[0] // 2
    same = ((ids[:n] == ids[n:]) & attention[:n] & attention[n:]).all(0)
    return min(int(same.long().cumprod(0).sum()), ids.shape[1] - 1)


def edit_masks(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """U1 (insert/replace tokens of y1, chosen half) and U0 (delete/replace tokens of y0, rejected half)."""
    n = batch["input_ids"].shape[0] // 2
    codes, response = batch["codes"], batch["response_mask"]
    u1 = response[:n] & ((codes[:n] == Label.INSERT) | (codes[:n] == Label.REPLACE))
    u0 = response[n:] & ((codes[n:] == Label.DELETE) | (codes[n:] == Label.REPLACE))
    return u1, u0


def keep_mask(batch: dict[str, Tensor]) -> Tensor:
    """Response tokens labelled keep, EOS included: with `edit_masks` they cover every EOS of the batch,
    so every EOS a policy can emit gets a trained reward (keep-L2 pulls a keep EOS toward 0)."""
    return batch["response_mask"] & (batch["codes"] == Label.KEEP)


class EpochSampler(torch.utils.data.Sampler[int]):
    """Seeded shuffle that changes with the epoch, so a resumed run sees the same order."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        order = list(range(self.size))
        random.Random(self.seed * 100_003 + self.epoch).shuffle(order)
        return iter(order)

    def __len__(self) -> int:
        return self.size
