"""Tokenizer loading for the label engine: Rust `tokenizers` only, so the web app stays free of torch."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer


@dataclass(frozen=True)
class LabelTokenizer:
    """A fast tokenizer plus the identity the labels are recorded with."""

    name: str
    tokenizer: Tokenizer
    vocab_hash: str

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Response-token ids and character offsets, with no special tokens added."""
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def encode_pair(self, a: str, b: str) -> tuple[tuple[list[int], list[tuple[int, int]]], ...]:
        first, second = self.tokenizer.encode_batch([a, b], add_special_tokens=False)
        return (first.ids, first.offsets), (second.ids, second.offsets)


class TokenizerNotFound(LookupError):
    pass


def _tokenizer_hash(tok: Tokenizer) -> str:
    # The serialised tokenizer covers vocabulary, merges, normaliser and pre-tokeniser: anything that
    # changes the ids changes the hash.
    return hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]


def _from_folder(folder: Path) -> Tokenizer:
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise TokenizerNotFound(f"{folder} has no tokenizer.json (a fast Hugging Face tokenizer is required)")
    return Tokenizer.from_file(str(path))


@lru_cache(maxsize=16)
def load_tokenizer(name: str) -> LabelTokenizer:
    """Load by local folder path, or by hub id from the local Hugging Face cache (never the network)."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        tok = _from_folder(folder)
    else:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            cached = snapshot_download(name, allow_patterns=["tokenizer.json"], local_files_only=True)
        except (LocalEntryNotFoundError, OSError, ValueError) as exc:
            raise TokenizerNotFound(
                f"tokenizer {name!r} is neither a local folder nor in the Hugging Face cache"
            ) from exc
        tok = _from_folder(Path(cached))
    # Labels are computed one pair at a time inside request handlers: keep the Rust side on one thread.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return LabelTokenizer(name=name, tokenizer=tok, vocab_hash=_tokenizer_hash(tok))
