"""Tokenizer loading for the label engine: Rust `tokenizers` only, so the web app stays free of torch."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer

Encoded = tuple[tuple[int, ...], tuple[tuple[int, int], ...]]


# Encodings of recent originals, per tokenizer. Every live diff and the submit of an item tokenise its
# unchanging original again, and the byte-level pre-tokeniser makes that the costliest step of a label.
ORIGINALS_CACHED = 512


@dataclass(frozen=True)
class LabelTokenizer:
    """A fast tokenizer plus the identity the labels are recorded with."""

    name: str
    tokenizer: Tokenizer
    vocab_hash: str
    _originals: Callable[[str], Encoded] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_originals", lru_cache(maxsize=ORIGINALS_CACHED)(self._encode_frozen))

    def _encode_frozen(self, text: str) -> Encoded:
        ids, offsets = self.encode(text)
        return tuple(ids), tuple(offsets)

    def forget_originals(self) -> None:
        """Empty the originals' cache (benchmarks measure the cold cost)."""
        self._originals.cache_clear()

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Response-token ids and character offsets, with no special tokens added."""
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def encode_pair(self, original: str, edited: str) -> tuple[tuple[list[int], list[tuple[int, int]]], ...]:
        """`encode` of both; the original's encoding comes from a cache (fresh lists each time)."""
        ids, offsets = self._originals(original)
        return (list(ids), list(offsets)), self.encode(edited)


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
