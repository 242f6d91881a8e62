"""The report of a reproduction run: summary numbers with bootstrap intervals, a verdict per claim, plots,
docs/reproduction.md and var/bench/reproduce.json.

Definitions (ours, stated in the report too):
- gold reward of a policy: mean gold score of sampled answers (temperature 1) to held-out questions;
- every figure is a mean over seeds with a 95% percentile bootstrap interval: seeds are resampled with
  replacement and the whole summary is recomputed (so figures of seed-mean curves get one too);
- PPO threshold: the initial gold reward plus 90% of the sequence-level run's improvement,
  g0 + 0.9·(g_seq_final − g0), on the seed-mean curves; steps to it are interpolated linearly between
  evaluated checkpoints; the ratio is token steps ÷ sequence steps;
- matched KL: per seed, the largest KL to the reference that both PPO variants reached; gold reward at
  that KL is interpolated on each variant's gold-against-KL curve;
- win rate: paired samples of a policy and the initial policy on the same questions, ties half;
- verdict: "holds" when the whole interval is on the claim's side, "does not hold" when it is wholly on
  the other side, otherwise "not resolved at this budget".
"""

from __future__ import annotations

import json
import math
import random
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from training.sim.task import DIAGNOSTIC_CLASSES

PAPER = {
    "token_rm_accuracy": "≈ 85% (85.2%, Xu et al. 2024)",
    "ppo_steps_ratio": "≈ 0.5 (\"about half the PPO training time\", Xu et al.)",
    "ppo_win_rate_gain": "+5.1 points win rate of fine-grained over sequence PPO (Xu et al., AlpacaFarm)",
    "figa_vs_sft": "FIGA above SFT (+3.2 reward, Guo et al. 2023)",
}
BOOTSTRAP = 2000
CLASS_KEYS = {"correct value": "token_rm_class_correct_value", "wrong value": "token_rm_class_wrong_value",
              "filler": "token_rm_class_filler", "EOS after a complete answer": "token_rm_eos_reward_complete",
              "EOS after an incomplete answer": "token_rm_eos_reward_incomplete"}
RM_CHECK_NAMES = {"token-rm": "token RM (ours)", "token-rm-paper": "token RM (paper's loss)",
                  "seq-rm": "sequence RM"}


def _mean(values: Sequence[float | None]) -> float | None:
    values = [v for v in values if v is not None and v == v]
    return statistics.fmean(values) if values else None


def _std(values: Sequence[float | None]) -> float | None:
    values = [v for v in values if v is not None and v == v]
    return statistics.stdev(values) if len(values) > 1 else 0.0 if values else None


def mean_curve(curves: list[list[list[float]]]) -> tuple[list[int], list[float], list[float]]:
    """Steps, mean and std over seeds of gold-vs-step curves (every seed evaluates the same steps)."""
    steps = [int(s) for s, _ in curves[0]]
    columns = list(zip(*[[g for _, g in c] for c in curves], strict=True))
    return steps, [statistics.fmean(col) for col in columns], [_std(list(col)) or 0.0 for col in columns]


def steps_to(steps: list[int], values: list[float], threshold: float) -> float | None:
    """First (linearly interpolated) step where the curve reaches `threshold`; None if it never does."""
    for i, (step, value) in enumerate(zip(steps, values, strict=True)):
        if value >= threshold:
            if i == 0:
                return float(step)
            s0, v0 = steps[i - 1], values[i - 1]
            return s0 + (step - s0) * (threshold - v0) / (value - v0)
    return None


def steps_ratio(steps_token: float | None, steps_seq: float | None) -> float | None:
    """Token ÷ sequence steps to the threshold. Infinite when fine-grained PPO never reaches it: slower than any
    finite ratio, so such runs count against the claim in its interval instead of dropping out of it. None when
    the sequence-level curve gives no target (no gain, or met at step 0)."""
    if not steps_seq:
        return None
    return math.inf if steps_token is None else steps_token / steps_seq


def seed_ratio(seed: dict[str, Any]) -> float | None:
    """Token ÷ sequence steps to 90% of that seed's own sequence-level gain (`steps_ratio`)."""
    token, sequence = seed["ppo_curves"]["token"], seed["ppo_curves"]["sequence"]
    g0, final = sequence[0][1], sequence[-1][1]
    if final <= g0:
        return None
    threshold = g0 + 0.9 * (final - g0)
    steps_token = steps_to([int(s) for s, _ in token], [g for _, g in token], threshold)
    steps_seq = steps_to([int(s) for s, _ in sequence], [g for _, g in sequence], threshold)
    return steps_ratio(steps_token, steps_seq)


def gold_at_kl(kls: list[float], golds: list[float], target: float) -> float | None:
    """Gold reward where the run first reaches KL `target` (running maximum of the KL, linear
    interpolation between checkpoints); None if it never does."""
    running, best = [], -math.inf
    for kl in kls:
        best = max(best, kl)
        running.append(best)
    for i, kl in enumerate(running):
        if kl >= target:
            if i == 0 or kl == running[i - 1]:
                return golds[i]
            frac = (target - running[i - 1]) / (kl - running[i - 1])
            return golds[i - 1] + frac * (golds[i] - golds[i - 1])
    return None


def matched_kl(seed: dict[str, Any]) -> tuple[float, float | None, float | None]:
    """(matched KL, gold of token-level PPO there, gold of sequence-level PPO there) for one seed."""
    kls = seed["ppo_kl"]
    target = min(max(kls["token"]), max(kls["sequence"]))
    golds = {r: [g for _, g in seed["ppo_curves"][r]] for r in ("token", "sequence")}
    return target, gold_at_kl(kls["token"], golds["token"], target), gold_at_kl(kls["sequence"],
                                                                                 golds["sequence"], target)


def point(seeds: list[dict[str, Any]]) -> dict[str, float | None]:
    """Every scalar figure of the main runs, from a list of per-seed results."""
    curves = {r: mean_curve([s["ppo_curves"][r] for s in seeds]) for r in ("token", "sequence")}
    g0 = statistics.fmean(s["initial_gold"] for s in seeds)
    seq_gain = curves["sequence"][1][-1] - g0
    threshold = g0 + 0.9 * seq_gain
    steps_token = steps_seq = None
    if seq_gain > 0:  # otherwise "90% of the sequence-level gain" is no target at all
        steps_token = steps_to(curves["token"][0], curves["token"][1], threshold)
        steps_seq = steps_to(curves["sequence"][0], curves["sequence"][1], threshold)

    def policy(name: str, key: str) -> list[float]:
        return [s["policies"][name][key] for s in seeds]

    def rm(kind: str, key: str) -> list[float | None]:
        return [s[kind].get(key) for s in seeds]

    out: dict[str, float | None] = {
        "seeds": float(len(seeds)),
        "token_rm_edit_span_acc": _mean(rm("token-rm", "edit_span_accuracy")),
        "token_rm_edit_span_acc_std": _std(rm("token-rm", "edit_span_accuracy")),
        "token_rm_full_seq_acc": _mean(rm("token-rm", "full_seq_accuracy")),
        "token_rm_token_auroc": _mean(rm("token-rm", "token_auroc")),
        "token_rm_gold_token_auroc": _mean(rm("token-rm", "gold_token_auroc")),
        "token_rm_gold_value_auroc": _mean(rm("token-rm", "gold_value_auroc")),
        "seq_rm_acc": _mean(rm("seq-rm", "full_seq_accuracy")),
        "seq_rm_acc_std": _std(rm("seq-rm", "full_seq_accuracy")),
        "initial_gold": g0,
        "ppo_threshold_gold": threshold,
        "ppo_sequence_gain": seq_gain,
        "ppo_steps_to_threshold_token": steps_token,
        "ppo_steps_to_threshold_sequence": steps_seq,
        "ppo_steps_ratio_token_vs_sequence": steps_ratio(steps_token, steps_seq),
        "ppo_steps_ratio_per_seed_mean": _mean([seed_ratio(s) for s in seeds]),
        "ppo_final_gold_token": curves["token"][1][-1],
        "ppo_final_gold_sequence": curves["sequence"][1][-1],
    }
    for key in ("token", "sequence"):
        c = curves[key]
        peak = max(c[1])
        out[f"ppo_peak_gold_{key}"] = peak
        out[f"ppo_peak_step_{key}"] = float(c[0][c[1].index(peak)])
        late = next(i for i, step in enumerate(c[0]) if step >= 0.7 * c[0][-1])
        out[f"ppo_late_change_{key}"] = c[1][-1] - c[1][late]  # ≈ 0 on a plateau
        out[f"ppo_win_rate_{key}"] = _mean(policy(f"ppo-{key}", "win_rate"))
        out[f"ppo_win_rate_{key}_std"] = _std(policy(f"ppo-{key}", "win_rate"))
        out[f"ppo_{key}_gold"] = _mean(policy(f"ppo-{key}", "gold"))
        out[f"ppo_{key}_gold_std"] = _std(policy(f"ppo-{key}", "gold"))
        for stat in ("length_first", "length_last", "kl_last"):
            out[f"ppo_{key}_{stat}"] = _mean([s["ppo_rollouts"][key][stat] for s in seeds])
    matched = [matched_kl(s) for s in seeds]
    out["ppo_matched_kl"] = _mean([m[0] for m in matched])
    out["ppo_gold_at_matched_kl_token"] = _mean([m[1] for m in matched])
    out["ppo_gold_at_matched_kl_sequence"] = _mean([m[2] for m in matched])
    out["ppo_matched_kl_gold_diff"] = _mean([m[1] - m[2] for m in matched if None not in m])
    out["ppo_win_rate_diff"] = _mean([t - q for t, q in zip(policy("ppo-token", "win_rate"),
                                                             policy("ppo-sequence", "win_rate"), strict=True)])
    for name in ("figa", "sft", "dpo", "figa-unchanged", "sft-unchanged"):
        key = name.replace("-", "_")
        out[f"{key}_gold"] = _mean(policy(name, "gold"))
        out[f"{key}_gold_std"] = _std(policy(name, "gold"))
        out[f"{key}_win_rate"] = _mean(policy(name, "win_rate"))
    out["sft_edited_only_gold"] = out["sft_gold"]
    out["figa_minus_sft"] = _mean([f - s for f, s in zip(policy("figa", "gold"), policy("sft", "gold"), strict=True)])
    out["figa_minus_sft_unchanged"] = _mean([f - s for f, s in zip(policy("figa-unchanged", "gold"),
                                                                    policy("sft-unchanged", "gold"), strict=True)])
    out["figa_negative_active"] = _mean([s.get("figa_train", {}).get("figa/negative_active") for s in seeds])
    for cls, key in CLASS_KEYS.items():
        out[key] = _mean(rm("token-rm", f"class_mean/{cls}"))
    return out


def rm_point(seeds: list[dict[str, Any]]) -> dict[str, float | None]:
    """The reward-model check's figures (token RM ours / paper's loss, sequence RM; light and heavy edits)."""
    out: dict[str, float | None] = {"rm_check_seeds": float(len(seeds))}
    for level in ("light", "heavy"):
        for name in RM_CHECK_NAMES:
            prefix = name.replace("-", "_")
            runs = [s[f"{name}/{level}"] for s in seeds]
            out[f"{prefix}_full_seq_acc_{level}"] = _mean([r.get("full_seq_accuracy") for r in runs])
            if name != "seq-rm":
                out[f"{prefix}_edit_span_acc_{level}"] = _mean([r.get("edit_span_accuracy") for r in runs])
                out[f"{prefix}_token_auroc_{level}"] = _mean([r.get("token_auroc") for r in runs])
        out[f"token_rm_minus_seq_rm_full_seq_acc_{level}"] = _mean(
            [s[f"token-rm/{level}"]["full_seq_accuracy"] - s[f"seq-rm/{level}"]["full_seq_accuracy"] for s in seeds])
    return out


def bootstrap(items: list[Any], stat: Callable[[list[Any]], dict[str, float | None]], rounds: int = BOOTSTRAP,
              seed: int = 0) -> dict[str, tuple[float | None, float | None]]:
    """95% percentile interval of every figure of `stat`, resampling `items` with replacement. A figure
    undefined in more than half of the resamples gets no interval."""
    rng = random.Random(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(rounds):
        sample = [items[rng.randrange(len(items))] for _ in items]
        for key, value in stat(sample).items():
            if value is not None and value == value:
                draws.setdefault(key, []).append(value)
    out = {}
    for key in stat(items):
        values = sorted(draws.get(key, []))
        if len(values) * 2 < rounds:
            out[key] = (None, None)
        else:
            out[key] = (values[int(0.025 * (len(values) - 1))], values[math.ceil(0.975 * (len(values) - 1))])
    return out


def verdict(low: float | None, high: float | None, bound: float, above: bool = True) -> str:
    """holds / does not hold / not resolved, for the claim "figure > bound" (above) or "figure < bound"."""
    if low is None or high is None:
        return "not resolved at this budget"
    if above:
        return "holds" if low > bound else "does not hold" if high <= bound else "not resolved at this budget"
    return "holds" if high < bound else "does not hold" if low >= bound else "not resolved at this budget"


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    seeds = list(results["seeds"].values())
    rm_seeds = list(results["rm_check"]["seeds"].values())
    summary: dict[str, Any] = {**point(seeds), **rm_point(rm_seeds)}
    intervals = {**bootstrap(seeds, point), **bootstrap(rm_seeds, rm_point)}
    for key, (low, high) in intervals.items():
        summary[f"{key}_ci_low"], summary[f"{key}_ci_high"] = low, high
    summary["ppo_steps_ratio_per_seed"] = [seed_ratio(s) for s in seeds]
    curves = {r: mean_curve([s["ppo_curves"][r] for s in seeds]) for r in ("token", "sequence")}
    summary["curves"] = {r: {"steps": c[0], "mean": c[1], "std": c[2]} for r, c in curves.items()}
    summary["verdicts"] = verdicts(summary)
    return summary


def _ci(s: dict[str, Any], key: str) -> tuple[float | None, float | None]:
    return s.get(f"{key}_ci_low"), s.get(f"{key}_ci_high")


MIN_SEEDS = 5  # issue #17: a claim is settled with at least five seeds
SIDES = {"holds": "wholly on the claim's side", "does not hold": "wholly on the other side",
         "not resolved at this budget": "across the bound"}


def verdicts(s: dict[str, Any]) -> dict[str, str]:
    """One verdict per claim. With fewer than MIN_SEEDS seeds none is settled; the verdict then says
    where the interval lies, for what it is worth."""
    claims = {
        "token_rm_accuracy": (_ci(s, "token_rm_edit_span_acc"), 0.80, True, s["seeds"]),
        "ppo_faster": (_ci(s, "ppo_steps_ratio_token_vs_sequence"), 1.0, False, s["seeds"]),
        "ppo_better": (_ci(s, "ppo_win_rate_diff"), 0.0, True, s["seeds"]),
        "ppo_better_matched_kl": (_ci(s, "ppo_matched_kl_gold_diff"), 0.0, True, s["seeds"]),
        "figa_above_sft": (_ci(s, "figa_minus_sft"), 0.0, True, s["seeds"]),
        "figa_above_sft_unchanged": (_ci(s, "figa_minus_sft_unchanged"), 0.0, True, s["seeds"]),
        "token_rm_heavy_edits": (_ci(s, "token_rm_minus_seq_rm_full_seq_acc_heavy"), 0.0, True, s["rm_check_seeds"]),
    }
    out = {}
    for name, ((low, high), bound, above, seeds) in claims.items():
        result = verdict(low, high, bound, above)
        if seeds < MIN_SEEDS:
            result = (f"not resolved at this budget ({int(seeds)} seed(s) of the {MIN_SEEDS} needed; the interval "
                      f"is {SIDES[result]})")
        out[name] = result
    return out


# -- plots --


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


VARIANTS = (("token", "fine-grained (token RM)", "tab:red"), ("sequence", "sequence-level (seq RM)", "tab:blue"))


def plot_ppo(summary: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for key, label, color in VARIANTS:
        c = summary["curves"][key]
        lo = [m - s for m, s in zip(c["mean"], c["std"], strict=True)]
        hi = [m + s for m, s in zip(c["mean"], c["std"], strict=True)]
        ax.plot(c["steps"], c["mean"], marker="o", color=color, label=label)
        ax.fill_between(c["steps"], lo, hi, color=color, alpha=0.2)
    ax.axhline(summary["ppo_threshold_gold"], color="gray", ls="--", lw=1, label="90% of sequence-level gain")
    ax.set_xlabel("PPO iteration")
    ax.set_ylabel("gold reward (held-out questions)")
    ax.set_title(f"Gold reward against PPO step (mean ± std over {int(summary['seeds'])} seeds)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_ppo_kl(seeds: list[dict[str, Any]], path: Path) -> None:
    """Gold reward against KL to the reference: one thin line per seed and variant."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for key, label, color in VARIANTS:
        for i, s in enumerate(seeds):
            ax.plot(s["ppo_kl"][key], [g for _, g in s["ppo_curves"][key]], marker=".", lw=1, alpha=0.7,
                    color=color, label=label if i == 0 else None)
    for i, s in enumerate(seeds):
        ax.axvline(matched_kl(s)[0], color="gray", ls=":", lw=0.8, label="matched KL (per seed)" if i == 0 else None)
    ax.set_xlabel("KL to the reference policy (sequence, on rollouts)")
    ax.set_ylabel("gold reward (held-out questions)")
    ax.set_title("Gold reward against KL, every seed")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bars(path: Path, title: str, ylabel: str, bars: list[tuple[str, float, float | None, float | None]],
              reference: float | None, reference_label: str = "") -> None:
    """Bars at the mean with the 95% interval as error bars."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 3.8))
    names = [b[0] for b in bars]
    means = [b[1] if b[1] is not None else float("nan") for b in bars]
    lows = [m - b[2] if b[2] is not None else 0.0 for m, b in zip(means, bars, strict=True)]
    highs = [b[3] - m if b[3] is not None else 0.0 for m, b in zip(means, bars, strict=True)]
    ax.bar(names, means, yerr=[lows, highs], capsize=4, color="tab:gray")
    if reference is not None:
        ax.axhline(reference, color="tab:red", ls="--", lw=1, label=reference_label)
        ax.legend(loc="lower right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- markdown --


def _f(value: float | None, digits: int = 3) -> str:
    if value == math.inf:
        return "∞"
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{100 * value:.1f}%"


def _reached(s: dict[str, Any], variant: str) -> str:
    """Steps of one PPO variant to the threshold on the seed-mean curves: "never" where there is a target it missed."""
    steps = s[f"ppo_steps_to_threshold_{variant}"]
    return "never" if steps is None and s["ppo_steps_to_threshold_sequence"] else _f(steps, 1)


def _with_ci(s: dict[str, Any], key: str, fmt: Callable[[float | None], str] = _f) -> str:
    low, high = _ci(s, key)
    return f"{fmt(s.get(key))} [{fmt(low)}, {fmt(high)}]"


def _pct_ci(s: dict[str, Any], key: str) -> str:
    return _with_ci(s, key, _pct)


def _points(s: dict[str, Any], key: str) -> str:
    def pts(v: float | None) -> str:
        return "n/a" if v is None or v != v else f"{100 * v:+.1f}"

    low, high = _ci(s, key)
    return f"{pts(s.get(key))} points [{pts(low)}, {pts(high)}]"


def claims_table(s: dict[str, Any]) -> list[str]:
    v = s["verdicts"]
    return [
        "| claim | paper | here: mean [95% bootstrap interval] | verdict |",
        "|---|---|---|---|",
        f"| token RM accuracy (edit-span, held-out pairs) ≥ 80% | {PAPER['token_rm_accuracy']} | "
        f"{_pct_ci(s, 'token_rm_edit_span_acc')} (full-sequence {_pct_ci(s, 'token_rm_full_seq_acc')}, token AUROC "
        f"{_with_ci(s, 'token_rm_token_auroc')}) | {v['token_rm_accuracy']} |",
        f"| fine-grained PPO reaches 90% of the sequence-level gain in fewer steps (ratio < 1) | "
        f"{PAPER['ppo_steps_ratio']} | {_with_ci(s, 'ppo_steps_ratio_token_vs_sequence')} "
        f"({_reached(s, 'token')} vs {_reached(s, 'sequence')} iterations "
        f"on the seed-mean curves) | {v['ppo_faster']} |",
        f"| fine-grained PPO wins more often than sequence-level PPO (against the initial policy) | "
        f"{PAPER['ppo_win_rate_gain']} | {_points(s, 'ppo_win_rate_diff')} (token {_pct_ci(s, 'ppo_win_rate_token')}, "
        f"sequence {_pct_ci(s, 'ppo_win_rate_sequence')}) | {v['ppo_better']} |",
        f"| … and has the higher gold reward at matched KL | (same claim) | "
        f"{_with_ci(s, 'ppo_matched_kl_gold_diff')} gold (token {_with_ci(s, 'ppo_gold_at_matched_kl_token')}, "
        f"sequence {_with_ci(s, 'ppo_gold_at_matched_kl_sequence')} at KL {_f(s['ppo_matched_kl'], 2)}) | "
        f"{v['ppo_better_matched_kl']} |",
        f"| FIGA above SFT, same rows (edited pairs only) | {PAPER['figa_vs_sft']} | "
        f"{_with_ci(s, 'figa_minus_sft')} gold (FIGA {_with_ci(s, 'figa_gold')}, SFT {_with_ci(s, 'sft_gold')}) | "
        f"{v['figa_above_sft']} |",
        f"| FIGA above SFT, every method also gets the no-change rows | (same claim) | "
        f"{_with_ci(s, 'figa_minus_sft_unchanged')} gold (FIGA γ>0 {_with_ci(s, 'figa_unchanged_gold')}, SFT "
        f"{_with_ci(s, 'sft_unchanged_gold')}) | {v['figa_above_sft_unchanged']} |",
        f"| token RM full-sequence accuracy ≥ sequence RM's on heavy edits (issue #17's goal) | — | "
        f"{_points(s, 'token_rm_minus_seq_rm_full_seq_acc_heavy')} (token {_pct_ci(s, 'token_rm_full_seq_acc_heavy')},"
        f" sequence {_pct_ci(s, 'seq_rm_full_seq_acc_heavy')}) | {v['token_rm_heavy_edits']} |",
    ]


def policies_tables(results: dict[str, Any], s: dict[str, Any]) -> list[str]:
    chosen = {kind: entry["chosen"] for kind, entry in results.get("sweep", {}).items()}
    preset = results["preset"]

    def setting(kind: str, extra: dict[str, Any] | None = None) -> str:
        keys = {k: v for k, v in preset[kind].items() if k in ("learning_rate", "beta", "tau", "gamma")}
        keys.update(chosen.get(kind, {}))
        keys.update(extra or {})
        return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in keys.items())

    out = ["Table 1 — every policy method trains on the same rows (the edited pairs; SFT without the "
           "no-change rows), with the setting its sweep chose:", "",
           "| method | setting | gold reward | win rate vs initial |", "|---|---|---|---|",
           f"| initial policy | — | {_with_ci(s, 'initial_gold')} | 50% |"]
    for name, kind in (("SFT", "sft"), ("FIGA", "figa"), ("DPO", "dpo")):
        out.append(f"| {name} | {setting(kind)} | {_with_ci(s, f'{kind}_gold')} | {_pct_ci(s, f'{kind}_win_rate')} |")
    for key, label in (("token", "PPO fine-grained"), ("sequence", "PPO sequence-level")):
        out.append(f"| {label} | lr {preset['ppo']['learning_rate']:g}, KL β {preset['ppo']['kl_coef']:g}, "
                   f"{preset['ppo']['num_iterations']} iterations | {_with_ci(s, f'ppo_{key}_gold')} | "
                   f"{_pct_ci(s, f'ppo_win_rate_{key}')} |")
    extra = preset.get("with_unchanged", {})
    out += ["", "Table 2 — every method also gets the no-change rows (their response needed no edit): SFT "
            "trains on them, FIGA through γ > 0 on kept tokens (and the EOS of every revised row). DPO is not "
            "rerun: a no-change pair has chosen = rejected, a constant loss with zero gradient.", "",
            "| method | setting | gold reward | win rate vs initial |", "|---|---|---|---|"]
    for name, kind in (("SFT", "sft"), ("FIGA", "figa")):
        out.append(f"| {name} + no-change rows | {setting(kind, extra.get(kind))} | "
                   f"{_with_ci(s, f'{kind}_unchanged_gold')} | {_pct_ci(s, f'{kind}_unchanged_win_rate')} |")
    return out


def sweep_tables(results: dict[str, Any]) -> list[str]:
    grids = results["preset"].get("sweep", {})
    edges = [f"`{kind}` {key} {entry['chosen'][key]:g}" for kind, entry in results.get("sweep", {}).items()
             for key, values in grids.get(kind, {}).items()
             if len(values) > 1 and entry["chosen"][key] in (min(values), max(values))]
    out = [f"Chosen at the edge of their grid: {', '.join(edges)} — a wider grid (`--preset sweep`) may choose "
           "beyond it.", ""] if edges else []
    for kind, entry in results.get("sweep", {}).items():
        keys = list(entry["chosen"])
        out += [f"`{kind}` ({entry['validation_prompts']} validation questions):", "",
                "| " + " | ".join(keys) + " | validation gold | |", "|" + "---|" * (len(keys) + 2)]
        for row in entry["rows"]:
            mark = "chosen" if all(row[k] == entry["chosen"][k] for k in keys) else ""
            out.append("| " + " | ".join(f"{row[k]:g}" if isinstance(row[k], float) else str(row[k]) for k in keys)
                       + f" | {_f(row['gold'])} | {mark} |")
        out.append("")
    return out


def diagnostic_table(s: dict[str, Any]) -> list[str]:
    out = ["| gold class | mean token-RM reward [95% interval] |", "|---|---|"]
    for cls in DIAGNOSTIC_CLASSES:
        out.append(f"| {cls} | {_with_ci(s, CLASS_KEYS[cls])} |")
    return out


def rm_check_table(results: dict[str, Any], s: dict[str, Any]) -> list[str]:
    data = results["rm_check"]["data"]
    out = ["| edits | pairs | median word similarity | model | full-sequence accuracy | edit-span accuracy | "
           "token AUROC |", "|---|---|---|---|---|---|---|"]
    for level in ("light", "heavy"):
        for name, label in RM_CHECK_NAMES.items():
            prefix = name.replace("-", "_")
            span = _pct_ci(s, f"{prefix}_edit_span_acc_{level}") if name != "seq-rm" else "—"
            auroc = _with_ci(s, f"{prefix}_token_auroc_{level}") if name != "seq-rm" else "—"
            out.append(f"| {level} | {data[level]['pairs']} | {_f(data[level]['median_word_similarity'], 2)} | "
                       f"{label} | {_pct_ci(s, f'{prefix}_full_seq_acc_{level}')} | {span} | {auroc} |")
    return out


def readings(s: dict[str, Any]) -> list[str]:
    """Factual sentences computed from the figures (the verdicts say which claims hold)."""
    out = []
    ratio = s["ppo_steps_ratio_token_vs_sequence"]
    if s["ppo_sequence_gain"] is not None and s["ppo_sequence_gain"] <= 0:
        out.append("- PPO speed: the sequence-level run ended no better than the initial policy, so 90% of its "
                   "gain is no target and no ratio is reported.")
    elif ratio == math.inf:
        out.append(f"- PPO speed: fine-grained PPO never reached 90% of the sequence-level gain on the seed-mean "
                   f"curves (its gold peaked at {_f(s['ppo_peak_gold_token'], 4)}, the threshold is "
                   f"{_f(s['ppo_threshold_gold'], 4)}): the ratio is ∞, and so is each seed's where it never did.")
    out.append(f"- Plateau: over the last 30% of iterations the seed-mean gold reward moved "
               f"{_f(s.get('ppo_late_change_token'))} (token) and {_f(s.get('ppo_late_change_sequence'))} "
               f"(sequence); peaks {_f(s['ppo_peak_gold_token'])} at iteration {_f(s['ppo_peak_step_token'], 0)} and "
               f"{_f(s['ppo_peak_gold_sequence'])} at iteration {_f(s['ppo_peak_step_sequence'], 0)}.")
    drop = s["ppo_peak_gold_token"] - s["ppo_final_gold_token"]
    if drop > 0.05:
        out.append(f"- Fine-grained PPO over-optimises its reward: the seed-mean gold peaks at "
                   f"{_f(s['ppo_peak_gold_token'])} (iteration {_f(s['ppo_peak_step_token'], 0)}) and ends at "
                   f"{_f(s['ppo_final_gold_token'])} while its KL keeps growing (final {_f(s['ppo_token_kl_last'], 2)}"
                   f" vs {_f(s['ppo_sequence_kl_last'], 2)} for sequence-level PPO at the same β): the final-"
                   "checkpoint figures (win rate, final gold) compare an over-optimised policy with one that is "
                   "not, which is why the matched-KL comparison is the like-for-like one.")
    out.append(f"- Rollout length went from {_f(s['ppo_token_length_first'], 1)} to {_f(s['ppo_token_length_last'], 1)}"
               f" tokens under fine-grained PPO and from {_f(s['ppo_sequence_length_first'], 1)} to "
               f"{_f(s['ppo_sequence_length_last'], 1)} under sequence-level PPO (final KL "
               f"{_f(s['ppo_token_kl_last'], 2)} / {_f(s['ppo_sequence_kl_last'], 2)}).")
    out.append(f"- The token RM against the gold word rewards: AUROC {_with_ci(s, 'token_rm_gold_token_auroc')} over "
               f"all gold-scored words, {_with_ci(s, 'token_rm_gold_value_auroc')} on fact values alone.")
    complete, incomplete = s["token_rm_eos_reward_complete"], s["token_rm_eos_reward_incomplete"]
    if complete is not None and incomplete is not None:
        out.append(f"- EOS: the token RM pays {_f(complete)} for stopping after a complete answer and "
                   f"{_f(incomplete)} after an incomplete one — "
                   + ("stopping early is penalised, as the end-of-response rule intends." if complete > incomplete
                      else "it does not yet tell a premature EOS from a due one."))
    out.append(f"- FIGA's unlikelihood term was active on {_pct(s['figa_negative_active'])} of the edited y0 tokens "
               "at the end of training (τ gate).")
    return out


def markdown(results: dict[str, Any], s: dict[str, Any], plots: str) -> str:
    preset = results["preset"]
    ann = results["annotation"]
    build = results["build"]
    lines = [
        "# Reproduction of the papers' claims in the simulated environment",
        "",
        "Written by `make reproduce` (`python -m reproduce --preset full`); do not edit by hand — rerun it.",
        f"Preset `{preset['name']}`, task `{preset['task']}`, seeds {sorted(int(k) for k in results['seeds'])} "
        f"(of {list(preset['seeds'])}), {results.get('jobs', 1)} at a time; wall time {results['seconds'] / 60:.1f} "
        f"min, which includes pretraining the tiny policy ({build['seconds'] / 60:.1f} min; a later run with the same "
        f"task and configs reuses it); "
        f"{sum(results.get('cli_seconds', {}).values()) / 60:.1f} min inside the training CLI runs.",
        "Gold world, flaw types and simulated annotator: a pluggable task (`training/sim/task.py`, see "
        "docs/reproduction-status.md).",
        *([f"Run note: {results['note']}"] if results.get("note") else []),
        "",
        "## Pipeline",
        "",
        f"1. A tiny Llama ({build['policy']}) pretrained for {build['pretrain']['steps']} steps on "
        f"{build['corpus_size']} synthetic answers with flaw rates {build.get('flaw_rates')} (final loss "
        f"{_f(build['final_loss'])}).",
        f"2. `python -m training generate` answered the training questions: {ann['imported']} items imported "
        f"through the app's importer ({ann['duplicates']} duplicates dropped).",
        f"3. The simulated annotator worked the queue (lease → submit): outcomes {ann['outcomes']}; noise "
        f"miss_prob={preset['miss_prob']}, spurious_prob={preset['spurious_prob']} gave "
        f"{ann['annotator']['missed']} missed and {ann['annotator']['spurious']} unnecessary edits against "
        f"{ann['annotator']['fixes']} correct fixes. A dataset version was exported as pairs-jsonl "
        f"({ann['exported_rows']} rows).",
        f"4. Sweep (seed {preset['seeds'][0]}): each policy method's grid below, scored by the gold reward of "
        f"{preset['sweep_samples']} sampled answers per validation question — the questions that run held out "
        "of training (split by prompt, the trainer's rule), never among the evaluation questions.",
        "5. Per seed: `token-rm`, `seq-rm`, `ppo --reward token` (token RM), `ppo --reward sequence` (sequence "
        "RM), `figa`, `sft`, `dpo` on the edited pairs, and `sft` / `figa` with the no-change rows too, all "
        "through `python -m training`.",
        f"6. Gold evaluation: {preset['eval_samples']} sampled answer(s) (temperature 1) per held-out question, "
        "scored by the gold preference; win rates pair each answer with the initial policy's answer "
        "(same question, same sampling seed), ties half.",
        "7. Reward-model check: edit pairs built from the task at a light and a heavy flaw level, fixed by the "
        "same simulated annotator; token RM (our loss and the paper's) and sequence RM trained with identical "
        f"settings on each, seeds {list(preset['rm_check']['seeds'])}.",
        "",
        "## Claims, with a verdict each",
        "",
        *claims_table(s),
        "",
        f"Intervals: 95% percentile bootstrap over the {int(s['seeds'])} seeds ({int(s['rm_check_seeds'])} for the "
        f"reward-model check; {BOOTSTRAP} resamples; seeds resampled, every figure recomputed). "
        "Verdict: holds when the whole interval is on the claim's side, "
        "does not hold when it is wholly on the other side, otherwise not resolved at this budget.",
        "",
        "## Policies",
        "",
        *policies_tables(results, s),
        "",
        f"![gold score of each policy]({plots}/policies_gold.png)",
        "",
        "### Sweeps (validation questions)",
        "",
        *sweep_tables(results),
        "## PPO: gold against step and against KL",
        "",
        f"Both variants ran {preset['ppo']['num_iterations']} iterations (checkpoints every "
        f"{preset['ppo']['save_steps']}). The KL of a checkpoint is the rollouts' sequence KL to the reference "
        "in the iterations next to it. Matched KL: per seed, the largest KL both variants reached; the gold "
        "reward of each there (interpolated) is the like-for-like comparison. Steps to 90% of the sequence-level "
        "gain is kept as the second figure.",
        "",
        f"![gold reward against KL]({plots}/ppo_gold_vs_kl.png)",
        "",
        f"![gold reward against PPO step]({plots}/ppo_gold_vs_step.png)",
        "",
        f"Initial policy gold reward {_f(s['initial_gold'])}; final gold reward on the seed-mean curves: token "
        f"{_f(s['ppo_final_gold_token'])}, sequence {_f(s['ppo_final_gold_sequence'])}; threshold "
        f"{_f(s['ppo_threshold_gold'])}; steps to it per seed (token ÷ sequence, each seed's own threshold): "
        f"{', '.join(_f(r, 2) for r in s['ppo_steps_ratio_per_seed'])} (∞: fine-grained PPO never reached it; n/a: "
        f"the sequence-level run gained nothing).",
        "",
        "## Token RM by gold class (before PPO)",
        "",
        "Mean reward the token RM gives each gold class on the initial policy's answers to the held-out "
        "questions — the PPO reward it pays. A wrong value must score below a correct one, a filler below 0, "
        "and a premature EOS below a due one; otherwise fine-grained PPO optimises the bias.",
        "",
        *diagnostic_table(s),
        "",
        "## Token RM vs sequence RM on light and heavy edits",
        "",
        *rm_check_table(results, s),
        "",
        f"![reward-model accuracy]({plots}/rm_accuracy.png)",
        "",
        "## Readings",
        "",
        *readings(s),
        "",
        "Structural differences that apply to every number: a ~0.14M-parameter policy on a synthetic facts task "
        "instead of LLaMA-7B on AlpacaFarm; gold preference and annotator are simulated, so annotator noise is "
        "exactly the configured miss/unnecessary-edit rates; win rates are against the initial policy, not "
        "AlpacaFarm's reference model.",
        "",
        "## Configs",
        "",
        "```json",
        json.dumps(preset, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def _strict_json(value: Any) -> Any:
    """JSON has no infinity: a ratio that is ∞ (never reached, see `steps_ratio`) is written as null."""
    if isinstance(value, float) and math.isinf(value):
        return None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict_json(v) for v in value]
    return value


def write_report(results: dict[str, Any], docs: Path, bench: Path) -> dict[str, Any]:
    summary = summarise(results)
    seeds = list(results["seeds"].values())
    plots = docs / "reproduction"
    plots.mkdir(parents=True, exist_ok=True)
    plot_ppo(summary, plots / "ppo_gold_vs_step.png")
    plot_ppo_kl(seeds, plots / "ppo_gold_vs_kl.png")

    def bar(label: str, key: str) -> tuple[str, float, float | None, float | None]:
        return (label, summary[key], *_ci(summary, key))

    plot_bars(plots / "policies_gold.png", "Gold score on held-out questions (mean, 95% interval)", "gold score",
              [bar("initial", "initial_gold"), bar("SFT", "sft_gold"), bar("FIGA", "figa_gold"),
               bar("DPO", "dpo_gold"), bar("SFT+nc", "sft_unchanged_gold"), bar("FIGA+nc", "figa_unchanged_gold"),
               bar("PPO seq", "ppo_sequence_gold"), bar("PPO token", "ppo_token_gold")], None)
    plot_bars(plots / "rm_accuracy.png", "Full-sequence accuracy on held-out pairs (mean, 95% interval)",
              "accuracy",
              [bar("main\ntoken RM", "token_rm_full_seq_acc"), bar("main\nseq RM", "seq_rm_acc"),
               bar("light\ntoken RM", "token_rm_full_seq_acc_light"), bar("light\nseq RM", "seq_rm_full_seq_acc_light"),
               bar("heavy\ntoken RM", "token_rm_full_seq_acc_heavy"), bar("heavy\nseq RM", "seq_rm_full_seq_acc_heavy"),
               bar("heavy\npaper loss", "token_rm_paper_full_seq_acc_heavy")], 0.852, "paper: 85.2%")
    (docs / "reproduction.md").write_text(markdown(results, summary, "reproduction"))
    bench.parent.mkdir(parents=True, exist_ok=True)
    flat = {k: v for k, v in summary.items() if k not in ("curves",)}
    bench.write_text(json.dumps(_strict_json({**flat, "preset": results["preset"]["name"],
                                              "seconds": results["seconds"]}), indent=2) + "\n")
    return flat
