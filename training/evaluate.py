"""Evaluation (algorithms.md §6) and the `evaluate` and `score` kinds.

Reward models: edit-span accuracy 1[Σ_U1 r > Σ_U0 r], full-sequence accuracy 1[R(y1) > R(y0)], and the
token AUROC of r_t separating y1-edited from y0-edited tokens. Policies: mean judge score and win rate
against the reference responses (the edited responses of the held-out pairs; ties count half), KL to
the reference policy on the generated tokens, and response length.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from training.config import DEFAULT_MODEL, EvaluateConfig, ScoreConfig
from training.data import (
    OUTCOMES_WITH_EDITS,
    EncodedPair,
    Formatter,
    Row,
    collate_pairs,
    collate_rows,
    edit_masks,
    encode_pairs,
    read_export,
    read_rows,
    shared_prefix_length,
    split_by_prompt,
)
from training.generate import Generator, HFGenerator, strip_eos
from training.losses import masked_sum
from training.models import Policy, RewardModel, is_reward_model, sequence_scores, token_rewards
from training.run import RunDir, make_accelerator

Judge = Callable[[list[str], list[str]], list[float]]


def auroc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """P(score of a positive > score of a negative), ties counting half (Mann–Whitney U)."""
    if not positives or not negatives:
        return float("nan")
    scored = sorted([(s, 1) for s in positives] + [(s, 0) for s in negatives])
    rank_sum, i = 0.0, 0
    while i < len(scored):
        j = i
        while j < len(scored) and scored[j][0] == scored[i][0]:
            j += 1
        mid_rank = (i + 1 + j) / 2  # average rank of a tie group (1-based)
        rank_sum += mid_rank * sum(label for _, label in scored[i:j])
        i = j
    n_pos, n_neg = len(positives), len(negatives)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


@torch.no_grad()
def pair_metrics(
    model: RewardModel, items: Sequence[EncodedPair], pad_id: int, batch_size: int, device: torch.device
) -> dict[str, float]:
    """Reward-model accuracies on edit pairs; `accuracy` is edit-span accuracy for token heads and
    full-sequence accuracy for a sequence head (it has no per-token rewards)."""
    span_hits, seq_hits, pos, neg = [], [], [], []
    for start in range(0, len(items), batch_size):
        batch = {k: v.to(device) for k, v in collate_pairs(items[start : start + batch_size], pad_id).items()}
        out = model(batch["input_ids"], batch["attention_mask"], shared_prefix=shared_prefix_length(batch))
        r = token_rewards(out, model.head_kind)
        n = r.shape[0] // 2
        u1, u0 = edit_masks(batch)
        scores = sequence_scores(r, batch["response_mask"], model.head_kind)
        seq_hits += (scores[:n] > scores[n:]).tolist()
        if model.head_kind != "sequence":
            span_hits += (masked_sum(r[:n], u1, -1) > masked_sum(r[n:], u0, -1)).tolist()
            pos += r[:n][u1].tolist()
            neg += r[n:][u0].tolist()
    out = {"full_seq_accuracy": _mean(seq_hits), "num_pairs": float(len(items))}
    if model.head_kind != "sequence":
        out.update(edit_span_accuracy=_mean(span_hits), token_auroc=auroc(pos, neg))
    out["accuracy"] = out.get("edit_span_accuracy", out["full_seq_accuracy"])
    return out


@torch.no_grad()
def score_rows(
    model: RewardModel, rows: Sequence[Row], pad_id: int, batch_size: int, device: torch.device
) -> tuple[list[float], list[list[float]]]:
    """Sequence score R(x, y) and the per-token rewards of each row's response."""
    scores, per_token = [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate_rows(chunk, pad_id).items()}
        r = token_rewards(model(batch["input_ids"], batch["attention_mask"]), model.head_kind)
        scores += sequence_scores(r, batch["response_mask"], model.head_kind).tolist()
        per_token += [r[i][batch["response_mask"][i]].tolist() for i in range(len(chunk))]
    return scores, per_token


class RewardModelJudge:
    """A trained reward model as judge: R(x, y) of each (prompt, response) text."""

    def __init__(self, folder: str, device: torch.device, batch_size: int = 8, max_length: int = 1024) -> None:
        from transformers import AutoTokenizer

        self.model = RewardModel.from_pretrained(folder).to(device).eval()
        self.fmt = Formatter(AutoTokenizer.from_pretrained(folder), max_length, max_length // 2)
        self.device, self.batch_size = device, batch_size

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        rows = [self.fmt.row(self.fmt.prompt_ids(p), self.fmt.response_ids(r)) for p, r in
                zip(prompts, responses, strict=True)]
        return score_rows(self.model, rows, self.fmt.pad_id, self.batch_size, self.device)[0]


def load_judge(spec: str, device: torch.device) -> Judge:
    """A reward-model folder, or `module:function` (a callable (prompts, responses) -> scores)."""
    if Path(spec).is_dir():
        return RewardModelJudge(spec, device)
    module, sep, name = spec.partition(":")
    if not sep:
        raise ValueError(f"judge {spec!r} is neither a reward model folder nor module:function")
    return getattr(importlib.import_module(module), name)


def win_rate(scores: Sequence[float], reference: Sequence[float]) -> float:
    """Share of prompts where the policy beats the reference; ties count half."""
    wins = [1.0 if s > r else 0.5 if s == r else 0.0 for s, r in zip(scores, reference, strict=True)]
    return _mean(wins)


@torch.no_grad()
def policy_metrics(
    policy: Policy, ref: Policy, fmt: Formatter, pairs: Sequence[EncodedPair], judge: Judge,
    generator: Generator, batch_size: int, device: torch.device,
) -> dict[str, float]:
    """Judge score and win rate vs the reference responses, KL to π_ref and length, one response a prompt."""
    by_prompt: dict[str, EncodedPair] = {}
    for p in pairs:
        by_prompt.setdefault(p.prompt, p)
    items = list(by_prompt.values())
    responses = generator([p.chosen.prompt_ids for p in items])
    texts = [fmt.tokenizer.decode(strip_eos(ids, fmt.eos_id), skip_special_tokens=True) for ids in responses]
    references = [fmt.tokenizer.decode(strip_eos(p.chosen.response_ids, fmt.eos_id), skip_special_tokens=True)
                  for p in items]
    prompts = [p.prompt for p in items]
    scores, ref_scores = judge(prompts, texts), judge(prompts, references)
    rows = [Row(p.chosen.prompt_ids, ids, [0] * len(ids), has_eos=False) for p, ids in zip(items, responses,
                                                                                      strict=True)]
    kls = []
    for start in range(0, len(rows), batch_size):
        batch = {k: v.to(device) for k, v in collate_rows(rows[start : start + batch_size], fmt.pad_id).items()}
        mask = batch["response_mask"]
        logp, _ = policy(batch["input_ids"], batch["attention_mask"], mask)
        ref_logp, _ = ref(batch["input_ids"], batch["attention_mask"], mask)
        kls += masked_sum(logp - ref_logp, mask, -1).tolist()
    return {
        "judge_score": _mean(scores),
        "reference_score": _mean(ref_scores),
        "win_rate": win_rate(scores, ref_scores),
        "kl": _mean(kls),
        "response_length": _mean([len(r) for r in responses]),
        "num_prompts": float(len(items)),
    }


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def _eval_pairs(cfg: EvaluateConfig, fmt: Formatter) -> list[EncodedPair]:
    pairs = [p for p in read_export(cfg.data, OUTCOMES_WITH_EDITS) if p.original != p.edited]
    if cfg.split == "val":
        pairs = split_by_prompt(pairs, lambda p: p.prompt, cfg.val_fraction, cfg.seed)[1]
    if not pairs:
        raise ValueError(f"{cfg.data}: no edit pairs to evaluate on (split={cfg.split})")
    return encode_pairs(pairs, fmt)


def run_evaluate(cfg: EvaluateConfig) -> dict[str, float]:
    """Reward model folder → accuracies; policy folder → judge score, win rate, KL, length."""
    from transformers import AutoTokenizer

    accelerator = make_accelerator(cfg)
    device = accelerator.device
    run = RunDir(cfg, "evaluate", accelerator.is_main_process)
    torch.manual_seed(cfg.seed)
    fmt = Formatter(AutoTokenizer.from_pretrained(cfg.model), cfg.max_length, cfg.max_prompt_length)
    items = _eval_pairs(cfg, fmt)
    if is_reward_model(cfg.model):
        model = RewardModel.from_pretrained(cfg.model).to(device).eval()
        result = pair_metrics(model, items, fmt.pad_id, cfg.batch_size, device)
    else:
        if not cfg.judge:
            raise ValueError("evaluating a policy needs a judge (--set judge=RM_FOLDER or module:function)")
        policy = Policy.load(cfg.model).to(device).eval()
        ref = Policy.load(cfg.ref_model or DEFAULT_MODEL).to(device).eval()
        generator = HFGenerator(policy.lm, fmt.pad_id, fmt.eos_id, cfg.max_new_tokens, cfg.do_sample,
                                cfg.temperature, batch_size=cfg.batch_size)
        result = policy_metrics(policy, ref, fmt, items, load_judge(cfg.judge, device), generator,
                                cfg.batch_size, device)
    run.log(1, 1, {f"eval/{k}": v for k, v in result.items()})
    run.write_eval(result)
    run.close()
    return result


def run_score(cfg: ScoreConfig) -> dict[str, float]:
    """Scores of a file: edit pairs get score_original/score_edited, other rows (prompt, response) a score.
    Writes scores.jsonl (with per-token rewards) and a summary in eval.json."""
    from transformers import AutoTokenizer

    accelerator = make_accelerator(cfg)
    device = accelerator.device
    run = RunDir(cfg, "score", accelerator.is_main_process)
    fmt = Formatter(AutoTokenizer.from_pretrained(cfg.model), cfg.max_length, cfg.max_prompt_length)
    model = RewardModel.from_pretrained(cfg.model).to(device).eval()
    rows = read_rows(cfg.data)
    pairwise = bool(rows) and all("original" in r and "edited" in r for r in rows)
    sides = ("original", "edited") if pairwise else ("response",)
    scored: dict[str, tuple[list[float], list[list[float]]]] = {}
    for side in sides:
        encoded = [fmt.row(fmt.prompt_ids(r["prompt"]), fmt.response_ids(r[side])) for r in rows]
        scored[side] = score_rows(model, encoded, fmt.pad_id, cfg.batch_size, device)
    with (run.path / "scores.jsonl").open("w", encoding="utf-8") as fh:
        for i, row in enumerate(rows):
            out = {"id": str(row.get("id", i))}
            for side in sides:
                suffix = "" if side == "response" else f"_{side}"
                out[f"score{suffix}"] = scored[side][0][i]
                out[f"token_scores{suffix}"] = scored[side][1][i]
            fh.write(json.dumps(out) + "\n")
    result = {f"mean_score_{side}": _mean(scored[side][0]) for side in sides}
    result["num_rows"] = float(len(rows))
    if pairwise:
        result["edited_preferred"] = _mean([float(e > o) for o, e in zip(scored["original"][0],
                                                                         scored["edited"][0], strict=True)])
    run.log(len(rows), len(rows), result)
    run.write_eval(result)
    run.close()
    return result

