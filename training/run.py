"""What every run shares: the output folder (config, metrics, TensorBoard, progress, checkpoints,
eval.json), the Accelerate setup, and CPU thread counts."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from training.config import RESUME_STATE_FILE, BaseConfig, config_dict

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = RESUME_STATE_FILE  # optimizer, scheduler and RNG state: for resuming, not for download
MIN_EVAL_EXAMPLES = 20


def make_accelerator(cfg: BaseConfig, gradient_accumulation_steps: int = 1):
    """One Accelerator for CPU, one GPU or many (`accelerate launch`); bf16 when `auto` and supported."""
    from accelerate import Accelerator

    sharded = [name for name in ("FSDP", "DEEPSPEED") if os.environ.get(f"ACCELERATE_USE_{name}", "").lower() == "true"]
    if sharded and not torch.cuda.is_available():
        # Accelerate would quietly fall back to plain data parallel on CPU: say so instead.
        raise RuntimeError(f"{sharded[0]} sharding needs GPUs (Accelerate shards only on accelerators); no CUDA here")
    precision = cfg.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    # Without CUDA, `cpu=True` is what makes ranks started by `accelerate launch` (torchrun) join one gloo
    # process group; otherwise each CPU rank would train alone.
    accelerator = Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=gradient_accumulation_steps,
        cpu=not torch.cuda.is_available(),
    )
    set_threads(cfg.num_threads, accelerator.num_processes if accelerator.device.type == "cpu" else 1)
    if accelerator.num_processes > 1:  # each rank says where it runs (torchrun's GROUP_RANK: its machine)
        where = f"machine {os.environ.get('GROUP_RANK', '0')}"
        print(f"[training] process {accelerator.process_index} of {accelerator.num_processes} on {where}", flush=True)
    return accelerator


def is_sharded(accelerator) -> bool:
    """Whether Accelerate shards the prepared models' weights or states (FSDP, DeepSpeed ZeRO)."""
    return accelerator.distributed_type.value in ("FSDP", "DEEPSPEED")


def is_fsdp2(model: torch.nn.Module) -> bool:
    """Whether `model` was sharded by torch's `fully_shard` (FSDP2, what Accelerate's FSDP config applies)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def whole_state_dict(accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The whole weights of a prepared model when it is sharded, gathered from every shard; None when the
    process holds them whole (one process, DDP). Every process must call it (gathering is a collective);
    the dict is complete on the main process only (the others may get an empty one).

    FSDP2 modules: torch's full state dict offloaded to CPU memory, the very call Accelerate's
    `get_state_dict` makes for them, made here on the module itself (which also makes it testable on CPU,
    where Accelerate does not shard). DeepSpeed: Accelerate's `get_state_dict` (ZeRO-3: the 16-bit
    consolidation that training/accelerate/zero3.yaml turns on)."""
    if is_fsdp2(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if is_sharded(accelerator):
        return accelerator.get_state_dict(model)
    return None


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state, whole (gathered from FSDP shards) and keyed by parameter names rather than
    positions (torch's distributed state-dict API, which also sees through DDP's wrapper), complete on
    the main process: a run with any process count, sharded or not, can load it. Every process calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, getattr(optimizer, "optimizer", optimizer),
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load an `optimizer_state` (every process reads the whole state and keeps its own part)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, getattr(optimizer, "optimizer", optimizer), state,
                             options=StateDictOptions(full_state_dict=True))


def fsdp_forward_method(model: torch.nn.Module, name: str) -> None:
    """Under FSDP2, let `model.<name>` (e.g. `generate`) gather and free the weights as its forward does;
    nothing to do for a model that is not sharded."""
    if is_fsdp2(model):
        from torch.distributed.fsdp import register_fsdp_forward_method

        register_fsdp_forward_method(model, name)


def vllm_dtype(accelerator) -> str:
    """The precision a colocated vLLM engine runs in: the run's mixed precision."""
    return {"bf16": "bfloat16", "fp16": "float16"}.get(accelerator.mixed_precision, "float32")


def adamw(params: list, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Fused AdamW where torch has it for the parameters' device (HF Trainer's default too), else foreach."""
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def set_threads(requested: int, local_processes: int) -> None:
    """All cores by default, divided among CPU processes so they do not oversubscribe each other."""
    threads = requested or max(1, (os.cpu_count() or 1) // max(1, local_processes))
    torch.set_num_threads(threads)


class RunDir:
    """The output folder of one run. Only the main process writes."""

    def __init__(self, cfg: BaseConfig, kind: str, is_main: bool = True) -> None:
        if not cfg.output_dir:
            raise ValueError("output_dir is required (--set output_dir=DIR)")
        self.path = Path(cfg.output_dir)
        self.kind = kind
        self.is_main = is_main
        self._tb = None
        self._started = time.monotonic()
        self._progress_at = 0.0
        if is_main:
            self.path.mkdir(parents=True, exist_ok=True)
            resolved = {"kind": kind, **config_dict(cfg)}
            (self.path / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))

    def log(self, step: int, total_steps: int, metrics: dict[str, float]) -> None:
        """Append one line to metrics.jsonl, mirror it to TensorBoard, rewrite progress.json."""
        if not self.is_main:
            return
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with (self.path / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        writer = self._writer()
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                writer.add_scalar(key, value, step)
        writer.flush()
        self.progress(step, total_steps)

    def progress(self, step: int, total_steps: int, *, every_s: float = 0.0) -> None:
        """Rewrite progress.json (the job page's progress bar). Loops call it on every step with
        `every_s`, so a run shows its progress long before its first logging step without rewriting
        the file thousands of times a second."""
        if not self.is_main:
            return
        now = time.monotonic()
        if every_s and step < total_steps and now - self._progress_at < every_s:
            return
        self._progress_at = now
        elapsed = now - self._started
        payload = {"step": step, "total_steps": total_steps, "progress": step / max(1, total_steps),
                   "elapsed_s": round(elapsed, 1)}
        tmp = self.path / "progress.json.tmp"
        tmp.write_text(json.dumps(payload) + "\n")
        tmp.replace(self.path / "progress.json")  # readers never see a half-written file

    def write_eval(self, metrics: dict[str, Any], examples: int | None = None) -> None:
        """eval.json; with `examples` (the size of the validation split), its count, and a warning when it
        is too small for the figures to mean anything."""
        if not self.is_main:
            return
        record = {k: _plain(v) for k, v in metrics.items()}
        if examples is not None:
            record["eval_examples"] = examples
            if warning := small_eval_warning(examples):
                record["warning"] = warning
        (self.path / "eval.json").write_text(json.dumps(record, indent=2) + "\n")

    def _writer(self):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.path / "tensorboard"))
        return self._tb

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()

    # -- checkpoints --

    def checkpoint_dir(self, step: int) -> Path:
        return self.path / f"{CHECKPOINT_PREFIX}{step}"

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints (those with a trainer state), oldest first."""
        found = [p for p in self.path.glob(f"{CHECKPOINT_PREFIX}*") if (p / STATE_FILE).is_file()]
        return sorted(found, key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX)))

    def last_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def prune(self, keep: int) -> None:
        if self.is_main:
            for old in self.checkpoints()[:-keep]:
                shutil.rmtree(old, ignore_errors=True)


def small_eval_warning(examples: int) -> str | None:
    """Below MIN_EVAL_EXAMPLES an accuracy moves by 1/n per example (and its standard error is above
    0.1): such a figure says next to nothing about the model."""
    if examples >= MIN_EVAL_EXAMPLES:
        return None
    return (f"the validation split has {examples} example(s), too few for these figures to mean anything "
            f"(at least {MIN_EVAL_EXAMPLES} needed): use more data or a larger val_fraction")


def save_state(folder: Path, state: dict[str, Any]) -> None:
    """Written last, so a checkpoint folder counts as complete only once everything else is in it."""
    state = {**state, "torch_rng": torch.get_rng_state()}
    tmp = folder / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(folder / STATE_FILE)


def load_state(folder: Path) -> dict[str, Any]:
    state = torch.load(folder / STATE_FILE, weights_only=False)
    torch.set_rng_state(state.pop("torch_rng"))
    return state


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item()
    return value
