"""GPU check: a few steps of token-rm, FIGA and fine-grained PPO (rollouts from Hugging Face `generate`,
then from a colocated vLLM engine) on the default SmolLM2 in bf16, with tokens/s, peak GPU memory and
model FLOPs utilisation for each. Nothing comes from a model hub: the model is the prepared local
folder, the data the demo answers with a one-word minimal edit each.

    scripts/gpu-check.sh            # or: python scripts/gpu_check.py [--model DIR] [--out DIR]

MFU = achieved model FLOPs / the GPU's peak dense bf16 FLOPs. Model FLOPs per token follow the usual
estimate (Kaplan et al.): 2·N forward, 6·N forward + backward, for N parameters. PPO counts per
response token: the sampling forward (2N), the rollout's policy, reference, reward and value forwards
(4·2N), and `ppo_epochs` updates of policy and value (2·6N each). Attention FLOPs are left out (small at
these lengths), so the figure errs low. PPO also prints the rollout tokens per second of generation
alone (`generation_time`), where the two engines differ. Peak memory is torch's allocator peak: vLLM's
KV cache, allocated at its start, is in it for the vLLM run (vllm_gpu_memory_utilization of the card).
Peak FLOPs come from the device name (H100/H200, A100, L40S, A10, RTX 4090) or GPU_PEAK_TFLOPS.
Writes var/bench/gpu-check.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}


def peak_flops(device_name: str) -> float | None:
    import os

    if os.environ.get("GPU_PEAK_TFLOPS"):
        return float(os.environ["GPU_PEAK_TFLOPS"]) * 1e12
    return next((tflops * 1e12 for key, tflops in PEAK_BF16_TFLOPS.items() if key in device_name), None)


def parameter_count(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for path in model_dir.glob("*.safetensors"):
        with safe_open(str(path), "pt") as fh:
            for key in fh.keys():  # noqa: SIM118 (safe_open is not a mapping)
                shape = fh.get_slice(key).get_shape()
                count = 1
                for dim in shape:
                    count *= dim
                total += count
    return total


def edit_pairs(out: Path) -> Path:
    """The demo's prompts and answers, each with one word changed: a minimal edit the labels can see."""
    rows = [json.loads(line) for line in (ROOT / "app" / "demo" / "items.jsonl").read_text().splitlines() if line]
    with out.open("w") as fh:
        for i, row in enumerate(rows):
            words = row["response"].split(" ")
            words[len(words) // 2] = "indeed"
            fh.write(json.dumps({"id": str(i), "prompt": row["prompt"], "original": row["response"],
                                 "edited": " ".join(words), "outcome": "edited"}) + "\n")
    return out


def run(kind: str, settings: dict) -> tuple[dict, float, float, list[dict]]:
    """(result, seconds, peak GiB, metrics rows) of one in-process run of `kind`."""
    import torch
    from accelerate.state import AcceleratorState

    from training.cli import run_kind
    from training.config import build_config

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = run_kind(kind, build_config(kind, settings))
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**30
    AcceleratorState._reset_state(reset_partial_state=True)  # the next kind builds its own Accelerator
    metrics = [json.loads(line) for line in (Path(settings["output_dir"]) / "metrics.jsonl").read_text().splitlines()]
    return result, seconds, peak, metrics


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / "var" / "models" / "SmolLM2-135M-Instruct"))
    parser.add_argument("--out", default=str(ROOT / "var" / "gpu-check"))
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; run it on a GPU machine", file=sys.stderr)
        return 2
    model, out = Path(args.model), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = edit_pairs(out / "pairs.jsonl")
    device = torch.cuda.get_device_name()
    peak = peak_flops(device)
    n_params = parameter_count(model)
    common = {"model": str(model), "data": str(data), "mixed_precision": "bf16", "seed": 0, "logging_steps": 5}
    report: dict = {"device": device, "model": str(model), "parameters": n_params, "peak_tflops": peak and peak / 1e12,
                    "runs": {}}

    def record(name: str, tokens_per_s: float, flops_per_token: float, seconds: float, peak_gib: float,
               **extra: float) -> None:
        mfu = flops_per_token * tokens_per_s / peak if peak else None
        report["runs"][name] = {"tokens_per_s": tokens_per_s, "peak_memory_gib": peak_gib, "seconds": seconds,
                                "mfu": mfu, **extra}
        mfu_text = f"{100 * mfu:.1f}%" if mfu is not None else "n/a (set GPU_PEAK_TFLOPS)"
        more = "".join(f"   {key.replace('_', ' ')} {value:,.0f}" for key, value in extra.items())
        print(f"{name:<14} {tokens_per_s:>10,.0f} tokens/s   peak {peak_gib:6.2f} GiB   MFU {mfu_text}   "
              f"({seconds:.0f} s){more}", flush=True)

    supervised = {**common, "max_steps": args.steps, "batch_size": 16, "val_fraction": 0.1}
    for kind in ("token-rm", "figa"):
        _, seconds, peak_gib, metrics = run(kind, {**supervised, "output_dir": str(out / kind)})
        rates = [row["train/tokens_per_second"] for row in metrics if "train/tokens_per_second" in row]
        steady = rates[1:] or rates  # the first window holds CUDA warm-up
        # Pairwise kinds run original and edited through the model: the logged count covers both.
        record(kind, sum(steady) / len(steady), 6 * n_params, seconds, peak_gib)

    ppo = {**common, "reward_model": str(out / "token-rm" / "model"), "num_iterations": max(4, args.steps // 5),
           "rollout_batch_size": 32, "max_new_tokens": 64, "logging_steps": 1, "val_fraction": 0.1}
    from training.config import build_config

    epochs = build_config("ppo", ppo).ppo_epochs
    for generator, label in (("hf", "ppo (HF)"), ("vllm", "ppo (vLLM)")):
        if generator == "vllm" and importlib.util.find_spec("vllm") is None:
            report["runs"][label] = "not run: vLLM is not installed (the gpu extra)"
            print(f"{label:<14} not run: vLLM is not installed (pip install 'redline[gpu]')", flush=True)
            continue
        _, seconds, peak_gib, metrics = run("ppo", {**ppo, "generator": generator,
                                                    "output_dir": str(out / f"ppo-{generator}")})
        rows = [row for row in metrics if "iteration_time" in row][1:] or metrics  # the first holds warm-up
        tokens = [ppo["rollout_batch_size"] * row["objective/response_length"] for row in rows]
        per_s = sum(tokens) / sum(row["iteration_time"] for row in rows)
        generation = sum(tokens) / sum(row["generation_time"] for row in rows)
        record(label, per_s, (2 + 4 * 2 + epochs * 2 * 6) * n_params, seconds, peak_gib,
               generation_tokens_per_s=generation, eos_per_rollout=sum(r["val/num_eos_tokens"] for r in rows)
               / len(rows))

    bench = ROOT / "var" / "bench"
    bench.mkdir(parents=True, exist_ok=True)
    (bench / "gpu-check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {bench / 'gpu-check.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
