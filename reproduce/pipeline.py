"""The reproduction pipeline, end to end through the product's code.

    build     tiny tokenizer + tiny policy pretrained on the flawed synthetic corpus (training.sim)
    generate  initial responses to the training questions      (python -m training generate)
    annotate  import → simulated annotator works the queue → dataset version → pairs-jsonl export (app)
    train     per seed: token-rm, seq-rm, ppo --reward token / sequence, figa, sft, dpo (python -m training)
    evaluate  gold preference on held-out questions: PPO checkpoints (reward against step), final
              policies (gold score, win rate against the initial policy)

Everything lands in one folder (`results.json` holds the numbers the report is written from).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from reproduce.config import COMMON, Preset

POLICY_KINDS = ("figa", "sft", "dpo")
PPO_VARIANTS = {"token": "token-rm", "sequence": "seq-rm"}


def log(message: str) -> None:
    print(f"[reproduce {time.strftime('%H:%M:%S')}] {message}", flush=True)


class CLI:
    """Runs `python -m training KIND --set k=v ...` as a subprocess, or in this process (fast test)."""

    def __init__(self, in_process: bool = False) -> None:
        self.in_process = in_process
        self.seconds: dict[str, float] = {}

    def __call__(self, kind: str, output_dir: Path, **keys: Any) -> dict:
        argv = [kind, *[f"--set={k}={v}" for k, v in {**COMMON, **keys, "output_dir": output_dir}.items()]]
        shutil.rmtree(output_dir, ignore_errors=True)  # a run folder appends metrics and keeps checkpoints
        output_dir.mkdir(parents=True)
        log_path = output_dir / "cli.log"
        started = time.monotonic()
        if self.in_process:
            self._run_in_process(argv, log_path)
        else:
            env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1"}
            with log_path.open("w") as fh:
                proc = subprocess.run([sys.executable, "-m", "training", *argv], stdout=fh, stderr=subprocess.STDOUT,
                                      env=env, check=False)
            if proc.returncode != 0:
                tail = "\n".join(log_path.read_text().splitlines()[-25:])
                raise RuntimeError(f"python -m training {' '.join(argv)} failed ({proc.returncode}):\n{tail}")
        self.seconds[str(output_dir)] = round(time.monotonic() - started, 1)
        eval_path = output_dir / "eval.json"
        return json.loads(eval_path.read_text()) if eval_path.is_file() else {}

    @staticmethod
    def _run_in_process(argv: list[str], log_path: Path) -> None:
        from training.cli import main

        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            code = main(argv)
        log_path.write_text(buffer.getvalue())
        if code != 0:
            raise RuntimeError(f"python -m training {' '.join(argv)} failed ({code}):\n{buffer.getvalue()[-2000:]}")


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _head(rows: list[dict], n: int) -> list[dict]:
    return rows[:n] if n else rows


# -- stages --


def build_stage(preset: Preset, out: Path) -> Path:
    """The pretrained policy; reused when a previous run built it with the same world and configs."""
    from dataclasses import asdict

    from training.sim.build import build
    from training.sim.corpus import FlawRates
    from training.sim.policy import PolicyConfig, PretrainConfig
    from training.sim.world import NUM_ENTITIES

    folder = out / "build"
    meta_path = folder / "build.json"
    wanted = {"num_entities": NUM_ENTITIES, "flaw_rates": asdict(FlawRates()), "policy": asdict(PolicyConfig()),
              "pretrain": asdict(PretrainConfig(steps=preset.pretrain_steps))}
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if all(meta.get(k) == v for k, v in wanted.items()):
            log(f"reusing {folder}")
            return folder
    log(f"pretraining the tiny policy ({preset.pretrain_steps} steps)")
    build(folder, PretrainConfig(steps=preset.pretrain_steps))
    return folder


def generate_stage(preset: Preset, cli: CLI, build_dir: Path, out: Path) -> list[dict]:
    prompts = _write_jsonl(out / "prompts_train.jsonl",
                           _head(_read_jsonl(build_dir / "prompts_train.jsonl"), preset.train_prompts))
    log("initial responses (generate)")
    cli("generate", out / "generate", model=build_dir / "policy", data=prompts, seed=0, max_new_tokens=32,
        temperature=1.0, top_p=1.0, num_return_sequences=preset.initial_samples, batch_size=64)
    return _read_jsonl(out / "generate" / "responses.jsonl")


def annotate_stage(preset: Preset, build_dir: Path, responses: list[dict], out: Path) -> tuple[Path, dict]:
    from reproduce.server import annotate_and_export
    from training.sim.annotator import AnnotatorNoise, SimulatedAnnotator
    from training.sim.world import default_world

    annotator = SimulatedAnnotator(default_world(), AnnotatorNoise(preset.miss_prob, preset.spurious_prob), seed=0)
    noise = {"fixes": 0, "missed": 0, "spurious": 0}

    def editor(prompt: str, response: str) -> tuple[str, str]:
        edit = annotator.edit(prompt, response)
        for key in noise:
            noise[key] += getattr(edit, key)
        return edit.edited, edit.outcome

    log(f"import, annotate and export {len(responses)} responses through the app")
    export = out / "export.jsonl"
    counts = annotate_and_export(out / "redline.db", responses, str((build_dir / "policy").resolve()), editor, export)
    return export, {**counts, "annotator": noise}


def train_stage(preset: Preset, cli: CLI, build_dir: Path, export: Path, prompts: Path, seed: int, out: Path
                ) -> dict[str, Path]:
    """Every kind for one seed; returns the folder of each run."""
    policy = build_dir / "policy"
    runs = {kind: out / kind for kind in ("token-rm", "seq-rm", *POLICY_KINDS)}
    for kind in ("token-rm", "seq-rm"):
        log(f"seed {seed}: {kind}")
        cli(kind, runs[kind], model=policy, data=export, seed=seed, **getattr(preset, kind.replace("-", "_")))
    for reward, rm in PPO_VARIANTS.items():
        runs[f"ppo-{reward}"] = out / f"ppo-{reward}"
        log(f"seed {seed}: ppo --reward {reward}")
        cli("ppo", runs[f"ppo-{reward}"], model=policy, data=prompts, reward=reward,
            reward_model=runs[rm] / "model", seed=seed, **preset.ppo)
    for kind in POLICY_KINDS:
        log(f"seed {seed}: {kind}")
        cli(kind, runs[kind], model=policy, data=export, seed=seed, **getattr(preset, kind))
    return runs


def ppo_checkpoints(run: Path) -> list[tuple[int, Path]]:
    """(iteration, policy folder) of every saved checkpoint, plus the final model."""
    found = [(int(p.name.removeprefix("checkpoint-")), p) for p in run.glob("checkpoint-*") if p.is_dir()]
    final_step = json.loads((run / "eval.json").read_text())["step"]
    found = [(s, p) for s, p in found if s != final_step] + [(final_step, run / "model")]
    return sorted(found)


def rollout_stats(run: Path, window: int = 3) -> dict[str, float]:
    """Mean rollout length, RM score and KL over the first and the last `window` PPO iterations."""
    rows = [r for r in _read_jsonl(run / "metrics.jsonl") if "objective/response_length" in r]
    starts = [i for i, r in enumerate(rows) if r["step"] == 1]
    rows = rows[starts[-1]:] if starts else rows  # only the last run, should a folder hold several
    out = {}
    for name, part in (("first", rows[:window]), ("last", rows[-window:])):
        for key, metric in (("length", "objective/response_length"), ("score", "objective/scores"),
                            ("kl", "objective/kl")):
            out[f"{key}_{name}"] = sum(r[metric] for r in part) / len(part)
    return out


def add_training_stats(seed_result: dict[str, Any], seed_dir: Path) -> None:
    """PPO rollout statistics and FIGA's last logged training metrics, read from the run folders."""
    seed_result["ppo_rollouts"] = {r: rollout_stats(seed_dir / f"ppo-{r}") for r in PPO_VARIANTS}
    figa = [r for r in _read_jsonl(seed_dir / "figa" / "metrics.jsonl") if "figa/negative_active" in r]
    seed_result["figa_train"] = figa[-1] if figa else {}


def evaluate_stage(preset: Preset, build_dir: Path, runs: dict[str, Path], seed: int) -> dict[str, Any]:
    from training.sim.evaluate import gold_eval, gold_token_agreement, win_rate

    prompts = [r["prompt"] for r in _head(_read_jsonl(build_dir / "prompts_eval.jsonl"), preset.eval_prompts)]
    sample_seed = 1000 + seed

    def judge(folder: Path):
        return gold_eval(str(folder), prompts, preset.eval_samples, sample_seed)

    initial = judge(build_dir / "policy")
    result: dict[str, Any] = {"initial_gold": initial.mean, "policies": {}, "ppo_curves": {}}
    for reward in PPO_VARIANTS:
        run = runs[f"ppo-{reward}"]
        curve = [(0, initial.mean)] + [(step, judge(folder).mean) for step, folder in ppo_checkpoints(run)]
        result["ppo_curves"][reward] = curve
        log(f"seed {seed}: ppo {reward} gold curve {[round(g, 3) for _, g in curve]}")
    for name in [f"ppo-{r}" for r in PPO_VARIANTS] + list(POLICY_KINDS):
        ev = judge(runs[name] / "model")
        result["policies"][name] = {"gold": ev.mean, "win_rate": win_rate(ev.scores, initial.scores)}
    for kind in ("token-rm", "seq-rm"):
        result[kind] = json.loads((runs[kind] / "eval.json").read_text())
    add_training_stats(result, runs["ppo-token"].parent)
    # The token RM against the gold word rewards, on the initial policy's answers to held-out questions.
    result["token-rm"].update(gold_token_agreement(str(runs["token-rm"] / "model"), initial.prompts,
                                                   initial.responses))
    return result


def run_pipeline(preset: Preset, out: Path, in_process: bool = False) -> dict[str, Any]:
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    cli = CLI(in_process)
    build_dir = build_stage(preset, out)
    responses = generate_stage(preset, cli, build_dir, out)
    export, annotation = annotate_stage(preset, build_dir, responses, out)
    per_seed = {}
    for seed in preset.seeds:
        runs = train_stage(preset, cli, build_dir, export, out / "prompts_train.jsonl", seed, out / f"seed-{seed}")
        per_seed[seed] = evaluate_stage(preset, build_dir, runs, seed)
    results = {"preset": preset.as_dict(), "build": json.loads((build_dir / "build.json").read_text()),
               "annotation": annotation, "seeds": per_seed, "cli_seconds": cli.seconds,
               "seconds": round(time.monotonic() - started, 1)}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    log(f"done in {results['seconds']} s")
    return results
