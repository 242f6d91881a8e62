"""The reproduction pipeline, end to end through the product's code.

    build     tiny tokenizer + tiny policy pretrained on the task's flawed corpus (training.sim)
    generate  initial responses to the training questions      (python -m training generate)
    annotate  import → simulated annotator works the queue → dataset version → pairs-jsonl export (app)
    sweep     each policy method's lr (β, τ) scored by gold reward on a validation split of training
              questions (held out of the sweep's training runs; the final evaluation never sees them)
    train     per seed: token-rm, seq-rm, ppo --reward token / sequence, figa, sft, dpo on the edited rows,
              and sft / figa (γ > 0) with the no-change rows too (python -m training)
    evaluate  gold preference on held-out questions: PPO checkpoints (gold against step and KL), final
              policies (gold score, win rate against the initial policy), the token RM by gold class
    rm-check  token RM vs sequence RM on light and on heavy edits built from the task (same settings)

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
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from difflib import SequenceMatcher
from itertools import product
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from reproduce.config import COMMON, Preset

POLICY_KINDS = ("figa", "sft", "dpo")
# The second table: the same methods when every one also gets the no-change rows (DPO gains nothing
# from them: chosen = rejected gives a constant loss, so it is not rerun).
WITH_UNCHANGED = ("sft", "figa")
PPO_VARIANTS = {"token": "token-rm", "sequence": "seq-rm"}
# The reward-model check: our token-RM loss, the paper's (summed spans, no extra terms, random head), seq RM.
PAPER_TOKEN_RM = {"span_reduce": "sum", "full_seq_weight": 0, "keep_l2_weight": 0, "head_init": "normal"}
RM_CHECK = {"token-rm": ("token-rm", {}), "token-rm-paper": ("token-rm", PAPER_TOKEN_RM), "seq-rm": ("seq-rm", {})}


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
    """The pretrained policy; reused when a previous run built it with the same task and configs."""
    from dataclasses import asdict

    from training.sim.build import build
    from training.sim.policy import PolicyConfig, PretrainConfig
    from training.sim.task import load_task

    folder = out / "build"
    meta_path = folder / "build.json"
    wanted = {"task": preset.task, **load_task(preset.task).meta, "policy": asdict(PolicyConfig()),
              "pretrain": asdict(PretrainConfig(steps=preset.pretrain_steps))}
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if all(meta.get(k) == v for k, v in wanted.items()):
            log(f"reusing {folder}")
            return folder
    log(f"pretraining the tiny policy ({preset.pretrain_steps} steps)")
    build(folder, PretrainConfig(steps=preset.pretrain_steps), task=preset.task)
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
    from training.sim.task import load_task

    annotate = load_task(preset.task).annotator(preset.miss_prob, preset.spurious_prob, 0)
    noise = {"fixes": 0, "missed": 0, "spurious": 0}

    def editor(prompt: str, response: str) -> tuple[str, str]:
        edited, outcome, counts = annotate(prompt, response)
        for key in noise:
            noise[key] += counts[key]
        return edited, outcome

    log(f"import, annotate and export {len(responses)} responses through the app")
    export = out / "export.jsonl"
    counts = annotate_and_export(out / "redline.db", responses, str((build_dir / "policy").resolve()), editor, export)
    return export, {**counts, "annotator": noise}


def validation_prompts(export: Path, val_fraction: float, seed: int) -> list[str]:
    """The questions a policy run with this seed and val_fraction holds out of training (split by prompt,
    the trainer's own rule): the sweep scores on them; they are never among the evaluation questions."""
    from training.data import split_by_prompt

    prompts = sorted({r["prompt"] for r in _read_jsonl(export)})
    return split_by_prompt(prompts, lambda p: p, val_fraction, seed)[1]


def _sweep_point(preset: Preset, kind: str, setting: dict[str, Any], build_dir: Path, export: Path, run: Path,
                 prompts: list[str], in_process: bool) -> tuple[dict[str, Any], dict[str, float]]:
    """One grid point: train on the sweep seed's training split, score on its validation questions."""
    from training.sim.evaluate import gold_eval

    seed = preset.seeds[0]
    cli = CLI(in_process)
    log(f"sweep {kind} {run.name}")
    cli(kind, run, model=build_dir / "policy", data=export, seed=seed, **{**getattr(preset, kind), **setting})
    gold = gold_eval(str(run / "model"), prompts, preset.sweep_samples, 2000 + seed, task=preset.task).mean
    return {**setting, "gold": gold}, cli.seconds


def sweep_stage(preset: Preset, pool: Pool, build_dir: Path, export: Path, out: Path) -> dict[str, Any]:
    """Each policy method's grid, trained on one seed's training split and scored by mean gold reward
    on that seed's validation questions; returns every score and the chosen setting per method."""
    seed = preset.seeds[0]
    calls, grids = [], {}
    for kind, grid in preset.sweep.items():
        prompts = validation_prompts(export, getattr(preset, kind)["val_fraction"], seed)
        grids[kind] = (grid, len(prompts))
        for values in product(*grid.values()):
            setting = dict(zip(grid, values, strict=True))
            run = out / "sweep" / kind / "-".join(f"{k}={v}" for k, v in setting.items())
            calls.append((kind, (preset, kind, setting, build_dir, export, run, prompts, pool.in_process)))
    scored = pool.map(_sweep_point, [args for _, args in calls])
    table: dict[str, Any] = {}
    for kind, (grid, validation) in grids.items():
        rows = [row for (of, _), row in zip(calls, scored, strict=True) if of == kind]
        best = max(rows, key=lambda r: r["gold"])
        table[kind] = {"rows": rows, "chosen": {k: best[k] for k in grid}, "validation_prompts": validation}
    return table


def train_stage(preset: Preset, cli: CLI, build_dir: Path, export: Path, prompts: Path, seed: int, out: Path,
                chosen: dict[str, dict[str, Any]]) -> dict[str, Path]:
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
        cli(kind, runs[kind], model=policy, data=export, seed=seed, **{**getattr(preset, kind), **chosen.get(kind, {})})
    for kind in WITH_UNCHANGED:
        name = f"{kind}-unchanged"
        runs[name] = out / name
        log(f"seed {seed}: {name}")
        cli(kind, runs[name], model=policy, data=export, seed=seed,
            **{**getattr(preset, kind), **chosen.get(kind, {}), **preset.with_unchanged[kind]})
    return runs


def ppo_checkpoints(run: Path) -> list[tuple[int, Path]]:
    """(iteration, policy folder) of every saved checkpoint, plus the final model."""
    found = [(int(p.name.removeprefix("checkpoint-")), p) for p in run.glob("checkpoint-*") if p.is_dir()]
    final_step = json.loads((run / "eval.json").read_text())["step"]
    found = [(s, p) for s, p in found if s != final_step] + [(final_step, run / "model")]
    return sorted(found)


def _ppo_rows(run: Path) -> list[dict]:
    rows = [r for r in _read_jsonl(run / "metrics.jsonl") if "objective/response_length" in r]
    starts = [i for i, r in enumerate(rows) if r["step"] == 1]
    return rows[starts[-1]:] if starts else rows  # only the last run, should a folder hold several


def rollout_stats(run: Path, window: int = 3) -> dict[str, float]:
    """Mean rollout length, RM score and KL over the first and the last `window` PPO iterations."""
    rows = _ppo_rows(run)
    out = {}
    for name, part in (("first", rows[:window]), ("last", rows[-window:])):
        for key, metric in (("length", "objective/response_length"), ("score", "objective/scores"),
                            ("kl", "objective/kl")):
            out[f"{key}_{name}"] = sum(r[metric] for r in part) / len(part)
    return out


def kl_at(run: Path, steps: list[int], window: int = 2) -> list[float]:
    """KL to the reference (sequence sum, k1, on the rollouts) near each checkpoint: the mean over the
    iterations within `window` of it (0 at step 0: the policy is the reference)."""
    rows = _ppo_rows(run)
    out = []
    for step in steps:
        near = [r["objective/kl"] for r in rows if abs(r["step"] - step) <= window and step > 0]
        out.append(sum(near) / len(near) if near else 0.0)
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
        return gold_eval(str(folder), prompts, preset.eval_samples, sample_seed, task=preset.task)

    initial = judge(build_dir / "policy")
    result: dict[str, Any] = {"initial_gold": initial.mean, "policies": {}, "ppo_curves": {}, "ppo_kl": {}}
    for reward in PPO_VARIANTS:
        run = runs[f"ppo-{reward}"]
        curve = [(0, initial.mean)] + [(step, judge(folder).mean) for step, folder in ppo_checkpoints(run)]
        result["ppo_curves"][reward] = curve
        result["ppo_kl"][reward] = kl_at(run, [s for s, _ in curve])
        log(f"seed {seed}: ppo {reward} gold curve {[round(g, 3) for _, g in curve]}")
    names = [f"ppo-{r}" for r in PPO_VARIANTS] + list(POLICY_KINDS) + [f"{k}-unchanged" for k in WITH_UNCHANGED]
    for name in names:
        ev = judge(runs[name] / "model")
        result["policies"][name] = {"gold": ev.mean, "win_rate": win_rate(ev.scores, initial.scores)}
    for kind in ("token-rm", "seq-rm"):
        result[kind] = json.loads((runs[kind] / "eval.json").read_text())
    add_training_stats(result, runs["ppo-token"].parent)
    # The token RM against the gold word rewards, on the initial policy's answers to held-out questions.
    result["token-rm"].update(gold_token_agreement(str(runs["token-rm"] / "model"), initial.prompts,
                                                   initial.responses, task=preset.task))
    return result


def word_similarity(a: str, b: str) -> float:
    return SequenceMatcher(None, a.split(), b.split(), autojunk=False).ratio()


def edit_pairs(preset: Preset, prompts: list[str], level: str, path: Path) -> dict[str, float]:
    """Flawed answers at `level` fixed by the simulated annotator (same noise as the main run), written as
    a pairs file the training CLI reads; returns the pairs' median word similarity and counts."""
    from statistics import median

    from training.sim.task import load_task

    task = load_task(preset.task)
    annotate = task.annotator(preset.miss_prob, preset.spurious_prob, 1)
    rows = []
    for i, (prompt, answer) in enumerate(task.answers(prompts, preset.rm_check["samples"], 7, level)):
        edited, outcome, _ = annotate(prompt, answer)
        if outcome == "edited":
            rows.append({"id": f"{level}{i}", "prompt": prompt, "original": answer, "edited": edited,
                         "outcome": outcome})
    _write_jsonl(path, rows)
    sims = [word_similarity(r["original"], r["edited"]) for r in rows]
    return {"pairs": len(rows), "median_word_similarity": median(sims),
            "mean_edited_words": sum(len(r["original"].split()) + len(r["edited"].split()) for r in rows) / len(rows)}


def _rm_check_run(kind: str, run: Path, keys: dict[str, Any], in_process: bool
                  ) -> tuple[dict[str, Any], dict[str, float]]:
    cli = CLI(in_process)
    log(f"rm-check {run.parent.name}: {run.name}")
    return cli(kind, run, **keys), cli.seconds


def rm_check_stage(preset: Preset, pool: Pool, build_dir: Path, out: Path) -> dict[str, Any]:
    """Token RM (our loss and the paper's) vs sequence RM, identical settings, on light and heavy edits."""
    prompts = [r["prompt"] for r in _head(_read_jsonl(build_dir / "prompts_train.jsonl"),
                                           preset.rm_check.get("prompts", 0))]
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"data": {}, "seeds": {}}
    for level in ("light", "heavy"):
        result["data"][level] = edit_pairs(preset, prompts, level, out / f"pairs-{level}.jsonl")
    runs = [(seed, f"{name}/{level}", (kind, out / f"seed-{seed}" / f"{name}-{level}", {
        "model": build_dir / "policy", "data": out / f"pairs-{level}.jsonl", "seed": seed,
        **preset.rm_check["train"], **extra}, pool.in_process))
        for seed in preset.rm_check["seeds"]
        for level, (name, (kind, extra)) in product(("light", "heavy"), RM_CHECK.items())]
    for (seed, key, _), evaluated in zip(runs, pool.map(_rm_check_run, [args for *_, args in runs]), strict=True):
        result["seeds"].setdefault(seed, {})[key] = evaluated
    return result


def seed_stage(preset: Preset, out: Path, seed: int, chosen: dict[str, dict[str, Any]], in_process: bool
               ) -> tuple[dict[str, Any], dict[str, float]]:
    """Train and evaluate one seed: its results and CLI seconds."""
    cli = CLI(in_process)
    runs = train_stage(preset, cli, out / "build", out / "export.jsonl", out / "prompts_train.jsonl", seed,
                       out / f"seed-{seed}", chosen)
    return evaluate_stage(preset, out / "build", runs, seed), cli.seconds


Work = Callable[..., tuple[Any, dict[str, float]]]  # a stage's unit: (its result, its CLI runs' seconds)


class Pool:
    """A stage's independent units `jobs` at a time in spawned worker processes (each training run is
    single-threaded, so two cores take two at once), or one by one in this process; keeps the CLI seconds
    of every run."""

    def __init__(self, jobs: int, in_process: bool) -> None:
        self.in_process = in_process
        self.seconds: dict[str, float] = {}
        self._executor = ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) if jobs > 1 else None

    def completed(self, work: Work, calls: list[tuple]) -> Iterator[tuple[int, Any]]:
        """(index into `calls`, result) of each unit, as each finishes."""
        if self._executor is None:
            outcomes: Iterable[tuple[int, Any]] = ((i, work(*args)) for i, args in enumerate(calls))
        else:
            futures = {self._executor.submit(work, *args): i for i, args in enumerate(calls)}
            outcomes = ((futures[f], f.result()) for f in as_completed(futures))
        for index, (result, seconds) in outcomes:
            self.seconds.update(seconds)
            yield index, result

    def map(self, work: Work, calls: list[tuple]) -> list[Any]:
        return [result for _, result in sorted(self.completed(work, calls), key=lambda done: done[0])]

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)


def run_pipeline(preset: Preset, out: Path, in_process: bool = False, jobs: int = 1) -> dict[str, Any]:
    """Every stage in order; within the sweep, the reward-model check and the seeds, the independent runs go
    `jobs` at a time. results.json is rewritten after each seed, so a run cut short still leaves the seeds
    it finished (the report says how many)."""
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    pool = Pool(jobs, in_process)
    try:
        cli = CLI(in_process)
        build_dir = build_stage(preset, out)
        responses = generate_stage(preset, cli, build_dir, out)
        pool.seconds.update(cli.seconds)
        export, annotation = annotate_stage(preset, build_dir, responses, out)
        sweep = sweep_stage(preset, pool, build_dir, export, out)
        rm_check = rm_check_stage(preset, pool, build_dir, out / "rm-check")
        results: dict[str, Any] = {"preset": preset.as_dict(),
                                   "build": json.loads((build_dir / "build.json").read_text()),
                                   "annotation": annotation, "sweep": sweep, "rm_check": rm_check, "seeds": {},
                                   "jobs": jobs}
        chosen = {kind: entry["chosen"] for kind, entry in sweep.items()}
        calls = [(preset, out, seed, chosen, in_process) for seed in preset.seeds]
        for index, result in pool.completed(seed_stage, calls):
            results["seeds"][preset.seeds[index]] = result
            results["seeds"] = dict(sorted(results["seeds"].items()))
            results.update(cli_seconds=pool.seconds, seconds=round(time.monotonic() - started, 1))
            (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    finally:
        pool.close()
    log(f"done in {results['seconds']} s")
    return results
