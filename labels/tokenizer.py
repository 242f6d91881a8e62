"""Tokenizer loading for the label engine: Rust `tokenizers` only, so the web app stays free of torch."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer

Encoded = tuple[tuple[int, ...], tuple[tuple[int, int], ...]]


# Encodings of recent originals, per tokenizer. Every live diff and the submit of an item tokenise its
# unchanging original again.
ORIGINALS_CACHED = 512
# Word encodings kept per word-splittable tokenizer (emptied when full).
WORDS_CACHED = 65_536

# GPT-2's byte-level pre-tokenizer cuts text into words at every single space between two non-space
# characters (whatever its regular expression does elsewhere, no word crosses such a space, and a word
# starting there ends the same way in any context), and BPE encodes each word on its own. So encoding
# word by word, each word's tokens cached, gives exactly the ids and offsets of a whole encode, without
# running that regular expression over the whole text: it is about 3/4 of an encode. Python's `\S` is
# narrower than the tokenizer's (Python counts a few more characters as space), so every cut here is a
# cut there too.
_WORD_CUTS = re.compile(r"(?<=\S)(?= \S)")  # zero-width: splitting keeps the space with the next word


def _splits_into_words(config: dict) -> bool:
    """True for byte-level BPE with GPT-2's pre-tokenizer and nothing that looks across words (`config`:
    the tokenizer's serialised form)."""
    pre = config.get("pre_tokenizer") or {}
    model = config.get("model") or {}
    return (
        config.get("normalizer") is None
        and pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space")
        and model.get("type") == "BPE" and model.get("dropout") is None
    )


def _added_tokens(config: dict) -> re.Pattern[str] | None:
    """Matches any added token's text (the tokenizer splits those out first, across words)."""
    contents = [token["content"] for token in config.get("added_tokens", [])]
    return re.compile("|".join(map(re.escape, contents))) if contents else None


@dataclass(frozen=True)
class LabelTokenizer:
    """A fast tokenizer plus the identity the labels are recorded with."""

    name: str
    tokenizer: Tokenizer
    vocab_hash: str
    _originals: Callable[[str], Encoded] = field(init=False, repr=False, compare=False)
    # Word -> (ids, offsets within the word); None: this tokenizer is always encoded whole.
    _words: dict[str, tuple[list[int], list[tuple[int, int]]]] | None = field(init=False, repr=False, compare=False)
    _added: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_originals", lru_cache(maxsize=ORIGINALS_CACHED)(self._encode_frozen))
        config = json.loads(self.tokenizer.to_str())
        object.__setattr__(self, "_words", {} if _splits_into_words(config) else None)
        object.__setattr__(self, "_added", _added_tokens(config))

    def _encode_frozen(self, text: str) -> Encoded:
        ids, offsets = self.encode(text)
        return tuple(ids), tuple(offsets)

    def forget_originals(self) -> None:
        """Empty the caches of originals and words (benchmarks measure the cold cost)."""
        self._originals.cache_clear()
        if self._words is not None:
            self._words.clear()

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Response-token ids and character offsets, with no special tokens added."""
        if self._words is None or (self._added is not None and self._added.search(text)):
            enc = self.tokenizer.encode(text, add_special_tokens=False)
            return enc.ids, enc.offsets
        return self._encode_by_words(text)

    def _encode_by_words(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        words = self._words
        if len(words) > WORDS_CACHED:
            words.clear()
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        start = 0
        for word in _WORD_CUTS.split(text):
            known = words.get(word)
            if known is None:
                enc = self.tokenizer.encode(word, add_special_tokens=False)
                known = words[word] = (enc.ids, enc.offsets)
            ids += known[0]
            for a, b in known[1]:
                offsets.append((a + start, b + start))
            start += len(word)
        return ids, offsets

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
