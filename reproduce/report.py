"""The report of a reproduction run: summary numbers, plots, docs/reproduction.md, var/bench/reproduce.json.

Definitions (ours, stated in the report too):
- gold reward of a policy: mean gold score of sampled answers (temperature 1) to held-out questions;
- PPO threshold: the initial gold reward plus 90% of the sequence-level run's improvement,
  g0 + 0.9·(g_seq_final − g0), on the seed-mean curves; steps to it are interpolated linearly between
  evaluated checkpoints; the ratio is token steps ÷ sequence steps;
- win rate: paired samples of a policy and the initial policy on the same questions, ties half.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

PAPER = {
    "token_rm_accuracy": "≈ 85% (85.2%, Xu et al. 2024)",
    "ppo_steps_ratio": "≈ 0.5 (\"about half the PPO training time\", Xu et al.)",
    "ppo_win_rate_gain": "+5.1 points win rate of fine-grained over sequence PPO (Xu et al., AlpacaFarm)",
    "figa_vs_sft": "FIGA above SFT (+3.2 reward, Guo et al. 2023)",
}


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def mean_curve(curves: list[list[list[float]]]) -> tuple[list[int], list[float], list[float]]:
    """Steps, mean and std over seeds of gold-vs-step curves (every seed evaluates the same steps)."""
    steps = [int(s) for s, _ in curves[0]]
    columns = list(zip(*[[g for _, g in c] for c in curves], strict=True))
    stats = [_mean_std(list(col)) for col in columns]
    return steps, [m for m, _ in stats], [s for _, s in stats]


def steps_to(steps: list[int], values: list[float], threshold: float) -> float | None:
    """First (linearly interpolated) step where the curve reaches `threshold`; None if it never does."""
    for i, (step, value) in enumerate(zip(steps, values, strict=True)):
        if value >= threshold:
            if i == 0:
                return float(step)
            s0, v0 = steps[i - 1], values[i - 1]
            return s0 + (step - s0) * (threshold - v0) / (value - v0)
    return None


def seed_ratio(seed: dict[str, Any]) -> float | None:
    """Token ÷ sequence steps to 90% of that seed's own sequence-level gain (None when undefined)."""
    token, sequence = seed["ppo_curves"]["token"], seed["ppo_curves"]["sequence"]
    g0, final = sequence[0][1], sequence[-1][1]
    if final <= g0:
        return None
    threshold = g0 + 0.9 * (final - g0)
    steps_token = steps_to([int(s) for s, _ in token], [g for _, g in token], threshold)
    steps_seq = steps_to([int(s) for s, _ in sequence], [g for _, g in sequence], threshold)
    return steps_token / steps_seq if steps_token and steps_seq else None


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    seeds = list(results["seeds"].values())
    curves = {r: mean_curve([s["ppo_curves"][r] for s in seeds]) for r in ("token", "sequence")}
    g0 = statistics.fmean(s["initial_gold"] for s in seeds)
    seq_gain = curves["sequence"][1][-1] - g0
    threshold = g0 + 0.9 * seq_gain
    steps_token = steps_seq = None
    if seq_gain > 0:  # otherwise "90% of the sequence-level gain" is no target at all
        steps_token = steps_to(curves["token"][0], curves["token"][1], threshold)
        steps_seq = steps_to(curves["sequence"][0], curves["sequence"][1], threshold)

    per_seed_ratios = [seed_ratio(s_) for s_ in seeds]

    def policy(name: str, key: str) -> tuple[float, float]:
        return _mean_std([s["policies"][name][key] for s in seeds])

    def rm(kind: str, key: str) -> tuple[float, float]:
        return _mean_std([s[kind].get(key) for s in seeds])

    summary = {
        "seeds": len(seeds),
        "token_rm_edit_span_acc": rm("token-rm", "edit_span_accuracy")[0],
        "token_rm_edit_span_acc_std": rm("token-rm", "edit_span_accuracy")[1],
        "token_rm_full_seq_acc": rm("token-rm", "full_seq_accuracy")[0],
        "token_rm_token_auroc": rm("token-rm", "token_auroc")[0],
        "token_rm_gold_token_auroc": rm("token-rm", "gold_token_auroc")[0],
        "token_rm_gold_value_auroc": rm("token-rm", "gold_value_auroc")[0],
        "seq_rm_acc": rm("seq-rm", "full_seq_accuracy")[0],
        "seq_rm_acc_std": rm("seq-rm", "full_seq_accuracy")[1],
        "initial_gold": g0,
        "ppo_threshold_gold": threshold,
        "ppo_sequence_gain": seq_gain,
        "ppo_steps_to_threshold_token": steps_token,
        "ppo_steps_to_threshold_sequence": steps_seq,
        "ppo_steps_ratio_token_vs_sequence": steps_token / steps_seq if steps_token and steps_seq else None,
        "ppo_steps_ratio_per_seed": per_seed_ratios,
        "ppo_final_gold_token": curves["token"][1][-1],
        "ppo_peak_gold_token": max(curves["token"][1]),
        "ppo_peak_step_token": curves["token"][0][curves["token"][1].index(max(curves["token"][1]))],
        "ppo_peak_gold_sequence": max(curves["sequence"][1]),
        "ppo_peak_step_sequence": curves["sequence"][0][curves["sequence"][1].index(max(curves["sequence"][1]))],
        "ppo_final_gold_sequence": curves["sequence"][1][-1],
    }
    for name, key in (("ppo-token", "token"), ("ppo-sequence", "sequence")):
        summary[f"ppo_win_rate_{key}"], summary[f"ppo_win_rate_{key}_std"] = policy(name, "win_rate")
        summary[f"ppo_{key}_gold"], summary[f"ppo_{key}_gold_std"] = policy(name, "gold")
    for name in ("figa", "sft", "dpo"):
        summary[f"{name}_gold"], summary[f"{name}_gold_std"] = policy(name, "gold")
        summary[f"{name}_win_rate"] = policy(name, "win_rate")[0]
    for key in ("token", "sequence"):
        for stat in ("length_first", "length_last", "kl_last"):
            values = [s_["ppo_rollouts"][key][stat] for s_ in seeds if "ppo_rollouts" in s_]
            summary[f"ppo_{key}_{stat}"] = _mean_std(values)[0]
    summary["figa_negative_active"] = _mean_std([s_.get("figa_train", {}).get("figa/negative_active")
                                                 for s_ in seeds])[0]
    summary["curves"] = {r: {"steps": c[0], "mean": c[1], "std": c[2]} for r, c in curves.items()}
    return summary


# -- plots --


def plot_ppo(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for key, label, color in (("token", "fine-grained (token RM)", "tab:red"),
                              ("sequence", "sequence-level (seq RM)", "tab:blue")):
        c = summary["curves"][key]
        lo = [m - s for m, s in zip(c["mean"], c["std"], strict=True)]
        hi = [m + s for m, s in zip(c["mean"], c["std"], strict=True)]
        ax.plot(c["steps"], c["mean"], marker="o", color=color, label=label)
        ax.fill_between(c["steps"], lo, hi, color=color, alpha=0.2)
    ax.axhline(summary["ppo_threshold_gold"], color="gray", ls="--", lw=1, label="90% of sequence-level gain")
    ax.set_xlabel("PPO iteration")
    ax.set_ylabel("gold reward (held-out questions)")
    ax.set_title(f"Gold reward against PPO step (mean ± std over {summary['seeds']} seeds)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bars(path: Path, title: str, ylabel: str, bars: list[tuple[str, float, float]], reference: float | None,
              reference_label: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    names = [b[0] for b in bars]
    ax.bar(names, [b[1] for b in bars], yerr=[b[2] for b in bars], capsize=4, color="tab:gray")
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
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{100 * value:.1f}%"


def markdown(results: dict[str, Any], s: dict[str, Any], plots: str) -> str:
    preset = results["preset"]
    ann = results["annotation"]
    ratio = s["ppo_steps_ratio_token_vs_sequence"]
    gain = s["ppo_win_rate_token"] - s["ppo_win_rate_sequence"]
    lines = [
        "# Reproduction of the papers' claims in the simulated environment",
        "",
        "Written by `make reproduce` (`python -m reproduce --preset full`); do not edit by hand — rerun it.",
        f"Preset `{preset['name']}`, seeds {list(preset['seeds'])}, wall time {results['seconds'] / 60:.1f} min.",
        "Environment, gold preference and annotator: `training/sim/` (see docs/reproduction-status.md).",
        "",
        "## Pipeline",
        "",
        f"1. A tiny Llama ({results['build']['policy']}) pretrained for {results['build']['pretrain']['steps']} "
        f"steps on {results['build']['corpus_size']} synthetic answers with flaw rates "
        f"{results['build']['flaw_rates']} (final loss {_f(results['build']['final_loss'])}).",
        f"2. `python -m training generate` answered the training questions: {ann['imported']} items imported "
        f"through the app's importer ({ann['duplicates']} duplicates dropped).",
        f"3. The simulated annotator worked the queue (lease → submit): outcomes {ann['outcomes']}; noise "
        f"miss_prob={preset['miss_prob']}, spurious_prob={preset['spurious_prob']} gave "
        f"{ann['annotator']['missed']} missed and {ann['annotator']['spurious']} unnecessary edits against "
        f"{ann['annotator']['fixes']} correct fixes. A dataset version was exported as pairs-jsonl "
        f"({ann['exported_rows']} rows).",
        "4. Per seed: `token-rm`, `seq-rm`, `ppo --reward token` (token RM), `ppo --reward sequence` (sequence RM), "
        "`figa`, `sft`, `dpo`, all through `python -m training`.",
        f"5. Gold evaluation: {preset['eval_samples']} sampled answer(s) (temperature 1) per held-out question, "
        "scored by the gold preference; win rates pair each answer with the initial policy's answer "
        "(same question, same sampling seed), ties half.",
        "",
        "## Results beside the papers",
        "",
        "| claim | paper | here (mean over seeds ± std) |",
        "|---|---|---|",
        f"| token RM accuracy (edit-span, held-out pairs) | {PAPER['token_rm_accuracy']} | "
        f"{_pct(s['token_rm_edit_span_acc'])} ± {_pct(s['token_rm_edit_span_acc_std'])} "
        f"(full-sequence {_pct(s['token_rm_full_seq_acc'])}, token AUROC {_f(s['token_rm_token_auroc'])}) |",
        f"| token RM against the gold word rewards (held-out answers of the initial policy) | — | AUROC "
        f"{_f(s['token_rm_gold_token_auroc'])} over all gold-scored words, {_f(s['token_rm_gold_value_auroc'])} "
        "on fact values alone (correct vs wrong) |",
        f"| sequence RM accuracy | — | {_pct(s['seq_rm_acc'])} ± {_pct(s['seq_rm_acc_std'])} |",
        f"| PPO steps to 90% of the sequence-level gain, token ÷ sequence | {PAPER['ppo_steps_ratio']} | "
        f"{_f(ratio, 2)} ({_f(s['ppo_steps_to_threshold_token'], 1)} vs "
        f"{_f(s['ppo_steps_to_threshold_sequence'], 1)} iterations on the seed-mean curves; per seed, "
        f"against each seed's own threshold: {', '.join(_f(r, 2) for r in s['ppo_steps_ratio_per_seed'])}) |",
        f"| PPO win rate against the initial policy | {PAPER['ppo_win_rate_gain']} | token "
        f"{_pct(s['ppo_win_rate_token'])} ± {_pct(s['ppo_win_rate_token_std'])}, sequence "
        f"{_pct(s['ppo_win_rate_sequence'])} ± {_pct(s['ppo_win_rate_sequence_std'])} "
        f"(difference {100 * gain:+.1f} points) |",
        f"| FIGA vs SFT (gold score) | {PAPER['figa_vs_sft']} | FIGA {_f(s['figa_gold'])} ± "
        f"{_f(s['figa_gold_std'])}, SFT {_f(s['sft_gold'])} ± {_f(s['sft_gold_std'])}, "
        f"DPO {_f(s['dpo_gold'])} ± {_f(s['dpo_gold_std'])} |",
        "",
        f"Initial policy gold reward {_f(s['initial_gold'])}; final PPO gold reward: token "
        f"{_f(s['ppo_final_gold_token'])}, sequence {_f(s['ppo_final_gold_sequence'])}; PPO threshold "
        f"{_f(s['ppo_threshold_gold'])}. Win rates against the initial policy: FIGA {_pct(s['figa_win_rate'])}, "
        f"SFT {_pct(s['sft_win_rate'])}, DPO {_pct(s['dpo_win_rate'])}.",
        "",
        f"![gold reward against PPO step]({plots}/ppo_gold_vs_step.png)",
        "",
        f"![gold score of each policy]({plots}/policies_gold.png)",
        "",
        f"![reward-model accuracy]({plots}/rm_accuracy.png)",
        "",
        "## Where this differs from the papers, and why we think so",
        "",
        *comparison(s),
        "",
        "Structural differences that apply to every number: a ~0.14M-parameter policy on a synthetic facts task "
        "instead of LLaMA-7B on AlpacaFarm; gold preference and annotator are simulated, so annotator noise is "
        "exactly the configured miss/unnecessary-edit rates; few PPO iterations on CPU; win rates are against "
        "the initial policy (the issue's definition), not AlpacaFarm's reference model.",
        "",
        "## Definitions",
        "",
        "- Gold score of an answer: the sum of the gold word rewards (+1 correct asked fact, −1 wrong value, "
        "−1 per unwanted span) over the number of asked attributes; 1 is perfect.",
        "- PPO threshold: g0 + 0.9·(g_seq_final − g0) on the seed-mean curves (g0 = initial policy); steps "
        "are interpolated linearly between evaluated checkpoints.",
        "",
        "## Configs",
        "",
        "```json",
        json.dumps(preset, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def comparison(s: dict[str, Any]) -> list[str]:
    """One factual sentence per claim: agrees or not, by how much."""
    out = []
    acc = s["token_rm_edit_span_acc"]
    out.append(f"- Token RM accuracy {_pct(acc)} vs ≈85%: "
               + ("close to the paper." if abs(acc - 0.85) < 0.05 else
                  "higher than the paper — the simulated edits are consistent and the task is simple, so most "
                  "held-out edits are easy to rank (the residual errors come mostly from annotator noise)."
                  if acc > 0.85 else
                  "lower than the paper — few pairs and a tiny backbone; the noisy edits (missed fixes, "
                  "unnecessary subject swaps) put a ceiling on edit-span accuracy."))
    ratio = s["ppo_steps_ratio_token_vs_sequence"]
    if s["ppo_sequence_gain"] <= 0:
        out.append("- PPO speed: the sequence-level run ended no better than the initial policy "
                   f"({_f(s['ppo_sequence_gain'])} gold), so the threshold (90% of its gain) is undefined and "
                   "no ratio is reported; see the curves.")
    elif ratio is None:
        reached = "the token-level run never reached it" if s["ppo_steps_to_threshold_token"] is None else \
            "the sequence-level run never reached it"
        out.append(f"- PPO speed: the threshold could not be compared ({reached}) within the iterations run.")
    else:
        out.append(f"- PPO speed: token ÷ sequence steps = {ratio:.2f} vs ≈0.5: "
                   + ("fine-grained PPO converges faster, as the paper says." if ratio < 0.9 else
                      "no speed-up here — with short answers (≈10–20 tokens) a sequence reward on the last token "
                      "already assigns credit well through GAE, so dense rewards help less than on long "
                      "AlpacaFarm responses." if ratio >= 0.9 else ""))
        if s["ppo_final_gold_token"] < s["ppo_final_gold_sequence"]:
            out.append(f"  But the token-level run plateaus: its final gold reward ({_f(s['ppo_final_gold_token'])}) "
                       f"is below the sequence-level run's ({_f(s['ppo_final_gold_sequence'])}); per seed the "
                       f"ratios are {', '.join(_f(r, 2) for r in s['ppo_steps_ratio_per_seed'])} (n/a: the "
                       "token-level run never reached that seed's threshold). A faster start towards a lower "
                       "ceiling fits a token RM that is dense but knows the facts poorly (value AUROC below).")
    gain = s["ppo_win_rate_token"] - s["ppo_win_rate_sequence"]
    out.append(f"- PPO win rate: fine-grained minus sequence-level = {100 * gain:+.1f} points vs +5.1: "
               + ("same direction as the paper." if gain > 0 else "not reproduced."))
    out.append(f"- Peaks of the seed-mean curves: token-level {_f(s['ppo_peak_gold_token'])} at iteration "
               f"{s['ppo_peak_step_token']}, sequence-level {_f(s['ppo_peak_gold_sequence'])} at iteration "
               f"{s['ppo_peak_step_sequence']} (initial {_f(s['initial_gold'])}).")
    out.append(f"- Diagnostics: rollout length went from {_f(s['ppo_token_length_first'], 1)} to "
               f"{_f(s['ppo_token_length_last'], 1)} tokens under token-level PPO and from "
               f"{_f(s['ppo_sequence_length_first'], 1)} to {_f(s['ppo_sequence_length_last'], 1)} under "
               f"sequence-level PPO (final KL {_f(s['ppo_token_kl_last'], 2)} / {_f(s['ppo_sequence_kl_last'], 2)}). "
               f"The token RM separates correct from wrong fact values with AUROC "
               f"{_f(s['token_rm_gold_value_auroc'])} but all gold-scored words with "
               f"{_f(s['token_rm_gold_token_auroc'])}: it learned the unwanted phrases better than the facts.")
    shrink = s["ppo_token_length_last"] < 0.8 * s["ppo_token_length_first"]
    if shrink:
        out.append("  Token-level PPO shortened the answers: omitted facts cost gold reward, but the token RM "
                   "only learns that omissions are bad from insertion edits (a minority of the edits), while "
                   "every deleted filler teaches it that dropping words is good — reward hacking by omission.")
    diff = s["figa_gold"] - s["sft_gold"]
    out.append(f"- FIGA − SFT gold = {diff:+.3f}: "
               + ("FIGA ahead, as the paper reports." if diff > 0 else
                  "FIGA not ahead. Our reading: with γ = 0 FIGA trains only on the edited tokens of y1, while "
                  "SFT also trains on every kept token and on the no-change rows — here those are mostly "
                  "correct facts, so SFT sharpens the whole fact distribution and FIGA only the corrected "
                  "quarter; the unlikelihood term was active on "
                  f"{_pct(s['figa_negative_active'])} of the edited y0 tokens at the end of training (τ gate)."))
    return out


def write_report(results: dict[str, Any], docs: Path, bench: Path) -> dict[str, Any]:
    summary = summarise(results)
    plots = docs / "reproduction"
    plots.mkdir(parents=True, exist_ok=True)
    plot_ppo(summary, plots / "ppo_gold_vs_step.png")
    plot_bars(plots / "policies_gold.png", "Gold score on held-out questions", "gold score",
              [("initial", summary["initial_gold"], 0.0), ("SFT", summary["sft_gold"], summary["sft_gold_std"]),
               ("FIGA", summary["figa_gold"], summary["figa_gold_std"]),
               ("DPO", summary["dpo_gold"], summary["dpo_gold_std"]),
               ("PPO seq", summary["ppo_sequence_gold"], summary["ppo_sequence_gold_std"]),
               ("PPO token", summary["ppo_token_gold"], summary["ppo_token_gold_std"])], None)
    plot_bars(plots / "rm_accuracy.png", "Reward-model accuracy on held-out edit pairs", "accuracy",
              [("token RM\nedit-span", summary["token_rm_edit_span_acc"], summary["token_rm_edit_span_acc_std"]),
               ("token RM\nfull-seq", summary["token_rm_full_seq_acc"], 0.0),
               ("seq RM", summary["seq_rm_acc"], summary["seq_rm_acc_std"])], 0.852, "paper: 85.2%")
    (docs / "reproduction.md").write_text(markdown(results, summary, "reproduction"))
    bench.parent.mkdir(parents=True, exist_ok=True)
    flat = {k: v for k, v in summary.items() if k != "curves"}
    bench.write_text(json.dumps({**flat, "preset": results["preset"]["name"], "seconds": results["seconds"]},
                                indent=2) + "\n")
    return flat
