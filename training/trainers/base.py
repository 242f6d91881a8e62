"""What every weight-updating run shares (`TrainingRun`), and the one supervised loop (`Trainer`:
token-rm, seq-rm, figa, sft, dpo, dense-dpo), nanoGPT-style.

`TrainingRun` is the plumbing: Accelerate, the output folder, seeding, tokenizer and formatter, LoRA
settings, building the policy from its start or a checkpoint, frozen helper models, checkpoints and
resume, and the final save. `Trainer` and `training.ppo.PPOTrainer` are built on it.

A supervised kind subclasses `Trainer` and fills in: which rows it trains on, how to build and save its
model, the loss of one micro-batch, and its evaluation. The loop handles gradient accumulation,
clipping, the schedule, logging, evaluation, checkpoints and resume.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from training.config import TrainConfig
from training.data import EditPair, EncodedPair, EpochSampler, Formatter, encode_pairs, read_export, split_by_prompt
from training.models import Policy, is_adapter
from training.run import (
    RunDir,
    adamw,
    is_sharded,
    load_optimizer_state,
    load_state,
    make_accelerator,
    optimizer_state,
    save_state,
    whole_state_dict,
)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


class TrainingRun:
    """The plumbing of one run. `model` below is whatever a kind trains: one module, or (PPO) a tuple of
    modules; `save_model` receives it unwrapped from Accelerate, with its whole weights when sharded.

    Sharded runs (FSDP, DeepSpeed ZeRO): each process holds part of the weights, so every save first
    gathers the whole state dict (`run.whole_state_dict`, a collective of all processes) and the main
    process writes that; the optimizer state is gathered the same way (`run.optimizer_state`), keyed by
    parameter names, so a checkpoint resumes under any process count, with or without sharding.
    """

    kind = ""

    def __init__(self, cfg: TrainConfig, gradient_accumulation_steps: int = 1) -> None:
        self.cfg = cfg
        self.accelerator = make_accelerator(cfg, gradient_accumulation_steps)
        if cfg.use_lora and is_sharded(self.accelerator):
            raise ValueError("use_lora with sharding (fsdp, zero2, zero3) is not supported: the final save merges "
                             "the adapters into the weights, which needs them whole on one process; LoRA "
                             "trains few weights, so run it without sharding")
        self.run_dir = RunDir(cfg, self.kind, self.accelerator.is_main_process)
        torch.manual_seed(cfg.seed)
        self.tokenizer = load_tokenizer(cfg.model)
        self.fmt = Formatter(self.tokenizer, cfg.max_length, cfg.max_prompt_length)

    def save_model(self, model: Any, folder: Path, final: bool, weights: Any = None) -> None:
        """Write `model` into `folder`; `weights` (sharded runs) holds its whole state dicts, shaped like
        `model` (one dict, or a tuple of dicts), to write in place of the modules' own shards."""
        raise NotImplementedError

    def lora_settings(self) -> dict | None:
        c = self.cfg
        return {"r": c.lora_r, "alpha": c.lora_alpha, "dropout": c.lora_dropout} if c.use_lora else None

    def resume_checkpoint(self) -> Path | None:
        return self.run_dir.last_checkpoint() if self.cfg.resume else None

    def load_policy(self, resume_from: Path | None) -> Policy:
        """The policy to train: the starting model (with fresh LoRA adapters when `use_lora`), or a
        checkpoint (its adapter on the starting model, or its full weights)."""
        ckpt = self.cfg.gradient_checkpointing
        if resume_from is None:
            return Policy.load(self.cfg.model, lora=self.lora_settings(), gradient_checkpointing=ckpt)
        if is_adapter(resume_from):
            return Policy.load(self.cfg.model, adapter=str(resume_from), gradient_checkpointing=ckpt)
        return Policy.load(str(resume_from), gradient_checkpointing=ckpt)

    def frozen(self, model: nn.Module) -> nn.Module:
        """A model that only scores (reference policy, reward model): on the device, eval, no gradients."""
        return model.to(self.accelerator.device).eval().requires_grad_(False)

    def _unwrap(self, model: Any) -> Any:
        if isinstance(model, tuple):
            return type(model)(*map(self.accelerator.unwrap_model, model))
        return self.accelerator.unwrap_model(model)

    def _whole_weights(self, model: Any) -> Any:
        """Every process: the prepared model's whole state dicts (shaped like `model`) when sharded, for the
        main process to save; None when every process holds whole weights (one process, DDP)."""
        if isinstance(model, tuple):
            weights = [whole_state_dict(self.accelerator, m) for m in model]
            return None if weights[0] is None else type(model)(*weights)
        return whole_state_dict(self.accelerator, model)

    def optimizer_state(self, model: Any, optimizer) -> dict[str, Any] | None:
        """Every process: `run.optimizer_state` of everything the run trains. None under DeepSpeed: its
        optimizer state stays partitioned inside its engine."""
        if self.accelerator.distributed_type.value == "DEEPSPEED":
            return None
        return optimizer_state(_as_module(model), optimizer)

    def checkpoint(self, model: Any, step: int, state: dict[str, Any]) -> None:
        """checkpoint-STEP/: the model, then (last, so the folder counts as complete) the trainer state.
        Every process calls it; under sharding they all take part in gathering the weights."""
        acc = self.accelerator
        acc.wait_for_everyone()
        weights = self._whole_weights(model)
        if acc.is_main_process:
            folder = self.run_dir.checkpoint_dir(step)
            folder.mkdir(parents=True, exist_ok=True)
            self.save_model(self._unwrap(model), folder, final=False, weights=weights)
            save_state(folder, {"step": step, **state})
            self.run_dir.prune(self.cfg.save_total_limit)
        acc.wait_for_everyone()

    def restore(self, folder: Path, model: Any, optimizer) -> dict[str, Any]:
        """Load a checkpoint's optimizer state into `optimizer` (each process takes its part of the whole
        state); the rest of the trainer state (step, ...) is returned."""
        state = load_state(folder)
        saved = state.pop("optimizer")
        if saved is None:
            raise ValueError(f"{folder} has no optimizer state (it was written under DeepSpeed, whose partitioned "
                             "optimizer state Redline does not gather): start a new run from its weights instead "
                             f"(model={folder})")
        load_optimizer_state(_as_module(model), optimizer, saved)
        return state

    def save_final(self, model: Any) -> None:
        """OUTPUT/model: adapters merged into the weights. Every process calls it (see `checkpoint`)."""
        weights = self._whole_weights(model)
        if self.accelerator.is_main_process:
            self.save_model(self._unwrap(model), self.run_dir.path / "model", final=True, weights=weights)


def _as_module(model: Any) -> nn.Module:
    """One module over everything a run trains (PPO's policy and value side by side)."""
    return nn.ModuleList(model) if isinstance(model, tuple) else model


class Trainer(TrainingRun):
    outcomes: tuple[str, ...] = ("edited",)

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__(cfg, cfg.gradient_accumulation_steps)
        self.train_items, self.val_items = self.load_data()

    # -- hooks of a kind --

    def load_data(self) -> tuple[list[EncodedPair], list[EncodedPair]]:
        pairs = [p for p in read_export(self.cfg.data, self.outcomes) if self.keep_pair(p)]
        if not pairs:
            raise ValueError(f"{self.cfg.data}: no rows usable by {self.kind} (outcomes {self.outcomes})")
        train, val = split_by_prompt(pairs, lambda p: p.prompt, self.cfg.val_fraction, self.cfg.seed)
        return encode_pairs(train, self.fmt), encode_pairs(val, self.fmt)

    def keep_pair(self, pair: EditPair) -> bool:
        """Pairwise kinds need an actual edit; SFT overrides this."""
        return pair.original != pair.edited

    def build_model(self, resume_from: Path | None) -> nn.Module:
        raise NotImplementedError

    def collate(self, items: list[EncodedPair]) -> dict[str, Tensor]:
        raise NotImplementedError

    def compute_loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module, items: list[EncodedPair]) -> dict[str, float]:
        raise NotImplementedError

    # -- the loop --

    def _dataloader(self) -> tuple[torch.utils.data.DataLoader, EpochSampler]:
        sampler = EpochSampler(len(self.train_items), self.cfg.seed)
        loader = torch.utils.data.DataLoader(
            self.train_items, batch_size=self.cfg.batch_size, sampler=sampler, collate_fn=self.collate
        )
        return loader, sampler

    def _schedule(self, optimizer, total_steps: int):
        from transformers import get_scheduler

        return get_scheduler(self.cfg.lr_scheduler_type, optimizer, num_warmup_steps=self.cfg.warmup_steps,
                             num_training_steps=total_steps)

    def _evaluate(self, model: nn.Module) -> dict[str, float]:
        if not self.val_items:
            return {}
        model.eval()
        result = self.evaluate(self.accelerator.unwrap_model(model), self.val_items)
        model.train()
        return result

    def _checkpoint(self, model, optimizer, scheduler, step: int) -> None:
        self.checkpoint(model, step, {"optimizer": self.optimizer_state(model, optimizer),
                                      "scheduler": scheduler.state_dict()})

    def train(self) -> dict[str, Any]:
        cfg, acc = self.cfg, self.accelerator
        resume_from = self.resume_checkpoint()
        model = self.build_model(resume_from)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = adamw(params, cfg.learning_rate, cfg.weight_decay)
        loader, sampler = self._dataloader()
        model, optimizer, loader = acc.prepare(model, optimizer, loader)

        steps_per_epoch = max(1, math.ceil(len(loader) / cfg.gradient_accumulation_steps))
        total = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.num_train_epochs * steps_per_epoch))
        scheduler = self._schedule(optimizer, total)
        step = 0
        if resume_from is not None:
            state = self.restore(resume_from, model, optimizer)
            scheduler.load_state_dict(state["scheduler"])
            step = state["step"]

        pending: dict[str, list[Tensor]] = defaultdict(list)
        tokens, window_start = 0, time.perf_counter()
        bar = tqdm(total=total, initial=step, desc=self.kind, disable=not acc.is_main_process)
        self.run_dir.progress(step, total)
        while step < total:
            sampler.set_epoch(step // steps_per_epoch)
            skip = (step % steps_per_epoch) * cfg.gradient_accumulation_steps
            batches = acc.skip_first_batches(loader, skip) if skip else loader
            for batch in batches:
                with acc.accumulate(model):
                    loss, metrics = self.compute_loss(model, batch)
                    acc.backward(loss)
                    grad_norm = None
                    if acc.sync_gradients and cfg.max_grad_norm > 0:
                        grad_norm = acc.clip_grad_norm_(params, cfg.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                pending["loss"].append(loss.detach())
                for key, value in metrics.items():
                    pending[key].append(value.detach())
                tokens += int(batch["attention_mask"].sum())
                if not acc.sync_gradients:
                    continue
                scheduler.step()
                step += 1
                bar.update(1)
                self.run_dir.progress(step, total, every_s=1.0)
                if grad_norm is not None:
                    pending["grad_norm"].append(torch.as_tensor(grad_norm, dtype=torch.float32))
                if step % cfg.logging_steps == 0 or step == total:
                    elapsed = time.perf_counter() - window_start
                    logged = {k: acc.reduce(torch.stack(v).float().mean().to(acc.device), "mean").item()
                              for k, v in pending.items()}
                    logged.update({"learning_rate": scheduler.get_last_lr()[0], "epoch": step / steps_per_epoch,
                                   "train/tokens_per_second": tokens * acc.num_processes / elapsed,
                                   "train/step_time": elapsed / cfg.logging_steps})
                    self.run_dir.log(step, total, logged)
                    bar.set_postfix(loss=f"{logged['loss']:.4f}")
                    pending.clear()
                if cfg.eval_steps and step % cfg.eval_steps == 0 and step < total:
                    self.run_dir.log(step, total, {f"eval/{k}": v for k, v in self._evaluate(model).items()})
                if cfg.save_steps and step % cfg.save_steps == 0 and step < total:
                    self._checkpoint(model, optimizer, scheduler, step)
                if step % cfg.logging_steps == 0:
                    tokens, window_start = 0, time.perf_counter()
                if step >= total:
                    break
        bar.close()

        self._checkpoint(model, optimizer, scheduler, step)
        result = self._evaluate(model)
        if result:
            self.run_dir.log(step, total, {f"eval/{k}": v for k, v in result.items()})
        self.save_final(model)
        result = {"step": step, **result}
        self.run_dir.write_eval(result, examples=len(self.val_items))
        self.run_dir.close()
        acc.wait_for_everyone()
        return result
