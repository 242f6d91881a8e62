"""Training throughput: our kinds against TRL on the same model, data and shapes (issue #6).

SmolLM2-135M-Instruct, sequences of exactly 256 tokens, batch 4 (pairs for pairwise kinds), CPU, fp32.
Every measurement runs in its own child process (same environment, so the same MALLOC_* settings), which
reports its step times and its peak RSS. One warm-up step is dropped; REDLINE_BENCH_TRAIN_STEPS (default
4) steps are measured after it, each on its own batch, and a side's figure is the median of its step times
(one step slowed by another process on a shared machine does not move it; all step times are printed).

What a step time covers, on both sides: fetching and collating the batch, forward, loss, backward, gradient
clipping, the optimizer and the schedule. Ours is `train/step_time` (the loop's window from the end of one
step's logging to the end of the next step's update, logging_steps = 1); TRL's is the wall time between
consecutive `on_step_end` callbacks, which also holds TRL's own per-step logging (a few milliseconds).
Both sides use AdamW (torch's fused kernel: TRL's default `adamw_torch_fused`, ours by `training.run.adamw`),
the same learning rate, a constant schedule, clipping at 1.0, no gradient checkpointing, fp32.

Both sides see identical token ids: the export's texts are built from words that are one token each, so
every prompt ⊕ response ⊕ EOS is exactly 256 tokens, and TRL gets those same ids pre-tokenised.
PPO (ours only, token vs sequence reward) uses a fixed response length (min_new_tokens = max_new_tokens)
so both runs process the same shapes, and one PPO epoch per iteration to keep the run short; the two
rewards differ only in how s_t is laid out, which is what the ratio measures.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import write_results

MODEL = os.environ.get("REDLINE_BENCH_TRAIN_MODEL", "var/models/SmolLM2-135M-Instruct")
SEQ, BATCH, WARMUP = 256, 4, 1
STEPS = int(os.environ.get("REDLINE_BENCH_TRAIN_STEPS", "4"))
PPO_NEW_TOKENS = 32
WORDS = ("the a of and to in is it that was for on are with as his they be at one have this from or had by "
         "word but what some we can out other were all there when up use your how said an each she which do "
         "their time if will way about many then them write would like so these her long make thing see him "
         "two has look more day could go come did number sound no most people my over know water than call "
         "first who may down side been now find any new work part take get place made live where after back "
         "little only round man year came show every good me give our under name very through just form "
         "sentence great think say help low line differ turn cause much mean before move right boy old too "
         "same tell does set three want air well also play small end put home read hand port large spell add "
         "even land here must big high such follow act why ask men change went light kind off need house "
         "picture try us again animal point mother world near build self earth father head stand own page").split()


# ---- data ----------------------------------------------------------------------------------------------


def single_token_words(tokenizer) -> list[str]:
    return [w for w in WORDS if len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1]


def build_pairs(tokenizer, n_pairs: int, prompt_tokens: int, seed: int = 0) -> list[dict]:
    """Export rows with prompts of exactly `prompt_tokens` (chat template included) and prompt ⊕ response
    ⊕ EOS of exactly SEQ tokens on both sides; the edit replaces about 8% of the words, deletes two and
    inserts two (so both sides keep the same length)."""
    from training.data import Formatter

    fmt = Formatter(tokenizer, max_length=SEQ, max_prompt_length=SEQ)
    words = single_token_words(tokenizer)
    rng = random.Random(seed)
    rows = []
    for i in range(n_pairs):
        overhead = len(fmt.prompt_ids(f"Story {i}:"))
        prompt = f"Story {i}:" + "".join(" " + rng.choice(words) for _ in range(prompt_tokens - overhead))
        n = SEQ - 1 - prompt_tokens
        original = [rng.choice(words) for _ in range(n)]
        edited = [rng.choice(words) if rng.random() < 0.08 else w for w in original]
        del edited[n // 3], edited[n // 2]
        edited[n // 4: n // 4] = [rng.choice(words)]
        edited[2 * n // 3: 2 * n // 3] = [rng.choice(words)]
        rows.append({"id": f"b{i}", "prompt": prompt, "original": " " + " ".join(original),
                     "edited": " " + " ".join(edited), "outcome": "edited"})
    for row in rows:
        if len(fmt.prompt_ids(row["prompt"])) != prompt_tokens:
            raise RuntimeError(f"bench row {row['id']}: prompt is not {prompt_tokens} tokens")
        for side in ("original", "edited"):
            total = prompt_tokens + len(fmt.response_ids(row[side])) + 1
            if total != SEQ:
                raise RuntimeError(f"bench row {row['id']} {side} has {total} tokens, not {SEQ}")
    return rows


# ---- children --------------------------------------------------------------------------------------------


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def ours(kind: str, work: Path, export: Path, extra: dict | None = None) -> dict:
    from training.config import load_config
    from training.ppo import PPOTrainer
    from training.trainers import TRAINERS

    out = work / f"ours-{kind}-{(extra or {}).get('reward', '')}"
    values = {"model": MODEL, "data": str(export), "output_dir": str(out), "max_length": SEQ,
              "max_prompt_length": SEQ, "batch_size": BATCH, "val_fraction": 0.0, "logging_steps": 1,
              "mixed_precision": "no", "learning_rate": 1e-6, "save_total_limit": 1, **(extra or {})}
    if kind == "ppo":
        values.update(num_iterations=WARMUP + STEPS, rollout_batch_size=BATCH, ppo_epochs=1,
                      max_new_tokens=PPO_NEW_TOKENS, min_new_tokens=PPO_NEW_TOKENS, val_fraction=0.0,
                      reward_model=str(work / "token-rm"))
        PPOTrainer(load_config(kind, None, values)).train()
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        times = [m["iteration_time"] for m in metrics if "iteration_time" in m][WARMUP:]
        return {"iteration_s": statistics.median(times), "times_s": rounded(times), "peak_mb": peak_mb()}
    values["max_steps"] = WARMUP + STEPS
    TRAINERS[kind](load_config(kind, None, values)).train()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    measured = [m for m in metrics if "train/tokens_per_second" in m][WARMUP:]
    times = [m["train/step_time"] for m in measured]
    tokens = {round(m["train/tokens_per_second"] * m["train/step_time"]) for m in measured}
    if len(tokens) != 1:
        raise RuntimeError(f"{kind}: steps of different sizes {tokens}; the bench expects fixed shapes")
    step_s = statistics.median(times)
    return {"tokens_per_s": tokens.pop() / step_s, "step_s": step_s, "times_s": rounded(times), "peak_mb": peak_mb()}


def rounded(times: list[float]) -> list[float]:
    return [round(t, 2) for t in times]


def trl_step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time between consecutive step ends (the first step measured from its own start)."""

        def __init__(self) -> None:
            self.marks: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            if not self.marks:
                self.marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append(time.perf_counter())

    return StepTimer()


def trl(kind: str, work: Path, export: Path) -> dict:
    """TRL's trainer on the same ids: pre-tokenised rows, same batch, lr, clipping, fp32, no checkpointing."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from training.data import Formatter, encode_pairs, read_export

    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    pairs = encode_pairs(read_export(export), Formatter(tokenizer, SEQ, SEQ))
    common = {"output_dir": str(work / f"trl-{kind}"), "per_device_train_batch_size": BATCH,
              "max_steps": WARMUP + STEPS, "logging_steps": 1, "report_to": [], "save_strategy": "no",
              "use_cpu": True, "bf16": False, "learning_rate": 1e-6, "lr_scheduler_type": "constant",
              "max_grad_norm": 1.0, "gradient_checkpointing": False, "dataloader_num_workers": 0, "seed": 0,
              "max_length": SEQ}
    timer = trl_step_timer()
    if kind == "reward":
        from trl import RewardConfig, RewardTrainer

        rows = [{"chosen_ids": p.chosen.prompt_ids + p.chosen.response_ids,
                 "rejected_ids": p.rejected.prompt_ids + p.rejected.response_ids} for p in pairs]
        model = AutoModelForSequenceClassification.from_pretrained(MODEL, num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = tokenizer.pad_token_id
        trainer = RewardTrainer(model=model, args=RewardConfig(**common), train_dataset=Dataset.from_list(rows),
                                processing_class=tokenizer, callbacks=[timer])
        tokens_per_step = 2 * BATCH * SEQ
    elif kind == "dpo":
        from trl import DPOConfig, DPOTrainer

        # TRL's DPO takes text only: the templated prompt as text plus the response texts; it appends EOS
        # and re-tokenises, which reproduces our ids (checked below).
        texts = {p.id: p for p in read_export(export)}
        rows = [{"prompt": tokenizer.decode(p.chosen.prompt_ids), "chosen": texts[p.id].edited,
                 "rejected": texts[p.id].original} for p in pairs]
        model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
        trainer = DPOTrainer(model=model, args=DPOConfig(**common, beta=0.1), train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, callbacks=[timer])
        first = trainer.train_dataset[0]
        if [*first["prompt_ids"], *first["chosen_ids"]] != pairs[0].chosen.prompt_ids + pairs[0].chosen.response_ids:
            raise RuntimeError("TRL's DPO tokenisation differs from ours; the comparison would be unfair")
        tokens_per_step = 2 * BATCH * SEQ
    else:
        from trl import SFTConfig, SFTTrainer

        rows = [{"input_ids": p.chosen.prompt_ids + p.chosen.response_ids,
                 "completion_mask": [0] * len(p.chosen.prompt_ids) + [1] * len(p.chosen.response_ids)}
                for p in pairs]
        model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
        trainer = SFTTrainer(model=model, args=SFTConfig(**common), train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, callbacks=[timer])
        tokens_per_step = BATCH * SEQ
    trainer.train()
    times = [b - a for a, b in zip(timer.marks, timer.marks[1:], strict=False)][WARMUP:]
    if len(times) != STEPS:
        raise RuntimeError(f"TRL {kind}: {len(times)} measured steps, expected {STEPS}")
    step_s = statistics.median(times)
    return {"tokens_per_s": tokens_per_step / step_s, "step_s": step_s, "times_s": rounded(times),
            "peak_mb": peak_mb()}


def child(name: str, work: Path, export: Path) -> dict:
    import torch

    torch.manual_seed(0)
    side, _, kind = name.partition(":")
    if side == "trl":
        return trl(kind, work, export)
    if kind.startswith("ppo-"):
        return ours("ppo", work, export, {"reward": kind.removeprefix("ppo-")})
    return ours(kind, work, export)


# ---- parent --------------------------------------------------------------------------------------------


CASES = ["ours:token-rm", "trl:reward", "ours:dpo", "trl:dpo", "ours:sft", "trl:sft", "ours:figa",
         "ours:ppo-token", "ours:ppo-sequence"]


def run_child(name: str, work: Path, export: Path) -> dict:
    started, load_before = time.monotonic(), os.getloadavg()[0]
    proc = subprocess.run([sys.executable, "-m", "bench.train", "--child", name, str(work), str(export)],
                          capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"bench child {name} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # The 1-minute load average before and after the child: other processes on the machine skew every figure.
    result["load_avg"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(f"  {name:<20} {json.dumps(result)}  ({time.monotonic() - started:.0f}s)", flush=True)
    return result


def prepare(work: Path) -> Path:
    """The export file and an (untrained) token RM for PPO, written once and shared by every child."""
    import torch
    from transformers import AutoTokenizer

    from training.models import RewardModel

    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    rows = build_pairs(tokenizer, BATCH * (WARMUP + STEPS), prompt_tokens=48)
    # PPO prompts leave exactly PPO_NEW_TOKENS for the response, so rollouts are SEQ tokens too.
    ppo_rows = build_pairs(tokenizer, 2, prompt_tokens=SEQ - PPO_NEW_TOKENS, seed=1)
    export = work / "export.jsonl"
    export.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (work / "ppo-export.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ppo_rows))
    torch.manual_seed(0)
    RewardModel.from_backbone(MODEL, "token").save(work / "token-rm", base_model=MODEL)
    tokenizer.save_pretrained(work / "token-rm")
    return export


def main() -> None:
    malloc = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    print(f"bench train: MALLOC_* = {malloc or 'unset (glibc defaults)'}, the same for every child; "
          f"{WARMUP} warm-up + {STEPS} measured step(s) each", flush=True)
    work = Path(tempfile.mkdtemp(prefix="redline-bench-train-"))
    try:  # the children's checkpoints and models take gigabytes: never leave them behind
        export = prepare(work)
        results = {}
        for name in CASES:
            data = work / "ppo-export.jsonl" if "ppo" in name else export
            results[name] = run_child(name, work, data)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    r = results
    figures = {
        "token_rm_vs_trl": r["ours:token-rm"]["tokens_per_s"] / r["trl:reward"]["tokens_per_s"],
        "dpo_vs_trl": r["ours:dpo"]["tokens_per_s"] / r["trl:dpo"]["tokens_per_s"],
        "sft_vs_trl": r["ours:sft"]["tokens_per_s"] / r["trl:sft"]["tokens_per_s"],
        "figa_vs_sft": r["ours:figa"]["tokens_per_s"] / r["ours:sft"]["tokens_per_s"],
        "ppo_token_vs_sequence": r["ours:ppo-token"]["iteration_s"] / r["ours:ppo-sequence"]["iteration_s"],
    }
    for name, result in r.items():
        side, _, kind = name.partition(":")
        key = kind.replace("-", "_") if side == "ours" else f"trl_{kind}"
        figures[f"peak_mb_{key}"] = result["peak_mb"]
    for name, result in r.items():
        if "tokens_per_s" in result:
            figures[f"tokens_per_s_{name.replace(':', '_').replace('-', '_')}"] = result["tokens_per_s"]
    figures["ppo_iteration_s_token"] = r["ours:ppo-token"]["iteration_s"]
    figures["ppo_iteration_s_sequence"] = r["ours:ppo-sequence"]["iteration_s"]
    notes = {"malloc": json.dumps(malloc) if malloc else "unset",
             "steps": f"{WARMUP} warm-up + {STEPS} measured, median step time per side",
             "shapes": f"seq {SEQ}, batch {BATCH}, fp32 CPU, {os.cpu_count()} cpus",
             "ppo": f"{PPO_NEW_TOKENS} generated tokens, 1 PPO epoch per iteration",
             "load_avg_before_after_each_child": ", ".join(f"{a:.1f}/{b:.1f}" for a, b in
                                                           (r["load_avg"] for r in results.values())),
             "step_times_s": "; ".join(f"{name} {r['times_s']}" for name, r in results.items())}
    write_results("train", figures, notes)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))))
    else:
        main()
