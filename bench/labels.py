"""Benchmark `labels`: full label computation against tokenisation alone, one core, SmolLM2 tokenizer.

Pairs of about 250-token responses with about 10% of the words changed (replaced, inserted or deleted).
Tokenisation alone is `encode_pair` (both responses, with offsets) — exactly the tokenizer work that the
full computation (`analyse_edit`: tokenise, align, label, character diff, stats) contains. Since that
encodes byte-level BPE word by word from a word cache (labels/tokenizer.py), it is about three times faster
than the plain fast tokenizer; `ratio_to_fast_tokenizer` compares the full computation with the plain
tokenizer encoding both responses whole (`Tokenizer.encode_batch`), the yardstick the issue gave.
Rounds alternate the two measurements so machine noise hits both alike; the ratio is the median of
the per-round ratios.
"""

from __future__ import annotations

import os
import random
import statistics
import time

from bench.common import write_results
from labels import LabelTokenizer, analyse_edit, load_tokenizer
from labels.chardiff import full_diff

PAIRS = 400
ROUNDS = 7
TOKENIZER = os.environ.get("REDLINE_DEFAULT_MODEL", "var/models/SmolLM2-135M-Instruct")

PASSAGE = """
Gradient descent updates the parameters of a model in the direction that reduces the loss. The size of
each step is set by the learning rate: too large and training diverges, too small and it crawls. In
practice we use mini-batches, so every update sees a noisy estimate of the true gradient, which often
helps the model escape sharp minima. Adaptive methods such as Adam keep running averages of the first
and second moments of the gradient and scale each coordinate separately. Warm-up schedules start with a
small learning rate and raise it over the first few hundred steps, because early gradients are large
and poorly aligned. Weight decay pulls parameters toward zero and acts as a simple regulariser. When the
validation loss stops improving, it is common to lower the learning rate or stop training early. A
language model trained this way predicts the next token given the previous ones, and its quality is
measured by perplexity on held-out text. Fine-tuning on human preferences then shapes how it answers:
reward models score responses, and policy optimisation nudges the model toward higher-scoring outputs
while a penalty keeps it close to the reference model it started from. Careful evaluation matters more
than any single trick, since a model can look better on one metric while getting worse on others.
""".split()


def make_pair(rng: random.Random, n_words: int = 200, edit_share: float = 0.10) -> tuple[str, str]:
    start = rng.randrange(len(PASSAGE))
    words = [PASSAGE[(start + i) % len(PASSAGE)] for i in range(n_words)]
    edited = list(words)
    for index in sorted(rng.sample(range(n_words), int(n_words * edit_share)), reverse=True):
        action = rng.random()
        if action < 0.6:
            edited[index] = rng.choice(PASSAGE)
        elif action < 0.8:
            edited.insert(index, rng.choice(PASSAGE))
        else:
            del edited[index]
    return " ".join(words), " ".join(edited)


def time_pairs(fn, pairs: list[tuple[str, str]], tok: LabelTokenizer | None = None) -> float:
    """Seconds for `fn` over all pairs; with `tok`, its originals' cache is emptied first (the cold cost)."""
    if tok is not None:
        tok.forget_originals()
    start = time.perf_counter()
    for original, edited in pairs:
        fn(original, edited)
    return time.perf_counter() - start


def main() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as the issue asks
    tok = load_tokenizer(TOKENIZER)
    rng = random.Random(0)
    pairs = [make_pair(rng) for _ in range(PAIRS)]
    tokens = statistics.mean(len(tok.encode(original)[0]) for original, _ in pairs)

    def tokenize(original: str, edited: str) -> None:
        tok.encode_pair(original, edited)

    def fast_tokenizer(original: str, edited: str) -> None:
        tok.tokenizer.encode_batch([original, edited], add_special_tokens=False)

    def full(original: str, edited: str) -> None:
        analyse_edit(original, edited, tok)

    time_pairs(full, pairs[:50])  # warm-up
    ratios, fast_ratios, full_times, tok_times, fast_times = [], [], [], [], []
    for _ in range(ROUNDS):
        t_tok = time_pairs(tokenize, pairs, tok)
        t_fast = time_pairs(fast_tokenizer, pairs)
        t_full = time_pairs(full, pairs, tok)
        tok_times.append(t_tok)
        fast_times.append(t_fast)
        full_times.append(t_full)
        ratios.append(t_full / t_tok)
        fast_ratios.append(t_full / t_fast)
    dmp_pairs = pairs[:40]
    dmp_per_s = len(dmp_pairs) / time_pairs(full_diff, dmp_pairs)
    write_results(
        "labels",
        {
            "pairs_per_s": PAIRS / statistics.median(full_times),
            "ratio_to_tokenize": statistics.median(ratios),
            "tokenize_pairs_per_s": PAIRS / statistics.median(tok_times),
            "ratio_to_fast_tokenizer": statistics.median(fast_ratios),
            "fast_tokenizer_pairs_per_s": PAIRS / statistics.median(fast_times),
            "whole_text_dmp_pairs_per_s": dmp_per_s,
            "mean_tokens_per_response": tokens,
        },
        notes={"tokenizer": TOKENIZER, "pairs": str(PAIRS), "rounds": str(ROUNDS), "cores": "1 (affinity)"},
    )
