"""Fine-grained PPO and the sequence-level baseline (algorithms.md §4), one loop for both.

Each iteration: sample prompts, roll out with the pluggable generator, score every response token with
the frozen reward model in one forward pass, form per-token rewards r_t = s_t − β·k_t, run GAE with a
separate value model, and take `ppo_epochs` passes of clipped policy and value updates.

Where the sequence score sits (reward=sequence): on the last generated token, which is the EOS when
the policy generated one and the last sampled token when it ran out of `max_new_tokens`.
Alignment: the log-prob and the value of response token y_t read the hidden state of the position
before it (the state (x, y_<t)); the token reward r_φ(x, y_≤t) reads the position of y_t itself.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from training import losses
from training.config import PPOConfig
from training.data import (
    OUTCOMES_WITH_GOOD_RESPONSE,
    Row,
    collate_rows,
    encode_pairs,
    read_export,
    read_prompts,
    read_rows,
    split_by_prompt,
)
from training.evaluate import policy_metrics, score_rows
from training.generate import Generator, HFGenerator, VLLMGenerator
from training.models import Policy, RewardModel, sequence_scores, token_rewards
from training.run import adamw, fsdp_forward_method, is_fsdp2, is_sharded, vllm_dtype
from training.trainers.base import TrainingRun, load_tokenizer

VALUE_DIR = "value_model"


class Models(NamedTuple):
    """What PPO trains: the policy and its value model, saved side by side (value in VALUE_DIR/)."""

    policy: Policy
    value: RewardModel


def response_index(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """[B, L] input positions of each row's response tokens (left-aligned) and the mask of real ones."""
    response = batch["response_mask"]
    starts = response.float().argmax(-1)
    lengths = response.sum(-1)
    offsets = torch.arange(int(lengths.max()), device=response.device)
    index = (starts[:, None] + offsets[None, :]).clamp(max=response.shape[1] - 1)
    return index, offsets[None, :] < lengths[:, None]


def gather(x: Tensor, index: Tensor) -> Tensor:
    return x.gather(1, index)


class PPOTrainer(TrainingRun):
    kind = "ppo"
    cfg: PPOConfig

    def __init__(self, cfg: PPOConfig, generator: Generator | None = None, reward_model: nn.Module | None = None
                 ) -> None:
        """`generator` replaces HF sampling; `reward_model` replaces the one loaded from cfg.reward_model
        (any module mapping (input_ids, attention_mask) to per-position rewards, with a `head_kind`)."""
        if not cfg.reward_model and (reward_model is None or not cfg.value_model):
            raise ValueError("ppo needs reward_model (a trained token-rm or seq-rm folder)")
        super().__init__(cfg)
        if self.accelerator.distributed_type.value == "DEEPSPEED":
            raise ValueError("ppo trains two models (policy and value) with one optimizer, and Accelerate's DeepSpeed "
                             "integration prepares one model per engine: run ppo with sharding fsdp, or none")
        self.train_prompts, self.val_prompts = split_by_prompt(
            [p for _, p in read_prompts(cfg.data)], lambda p: p, cfg.val_fraction, cfg.seed)
        if not self.train_prompts:
            raise ValueError(f"{cfg.data}: no prompts to train on")
        if reward_model is None:
            reward_model = RewardModel.from_pretrained(cfg.reward_model)
            self._check_tokenizer()
        self.reward_model = self.frozen(reward_model)
        if cfg.reward == "token" and self.reward_model.head_kind not in ("token", "tlcr"):
            raise ValueError(f"reward=token needs a token reward model, not a {self.reward_model.head_kind} head")
        self.ref = self.frozen(Policy.load(cfg.ref_model or cfg.model))
        self.kl = losses.AdaptiveKLController(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon)
        self._generator = generator

    def _check_tokenizer(self) -> None:
        rm_vocab = load_tokenizer(self.cfg.reward_model).get_vocab()
        if rm_vocab != self.tokenizer.get_vocab():
            raise ValueError("the reward model's tokenizer differs from the policy's; token rewards would not align")

    # -- models --

    def _build(self, resume_from: Path | None) -> Models:
        """The policy as every policy kind builds it; the value model from `value_model` (default: the
        reward model) at the start, from the checkpoint's VALUE_DIR on resume."""
        ckpt = self.cfg.gradient_checkpointing
        if resume_from is None:
            value = RewardModel.from_pretrained(self.cfg.value_model or self.cfg.reward_model, head_kind="value",
                                                gradient_checkpointing=ckpt)
        else:
            value = RewardModel.from_pretrained(resume_from / VALUE_DIR, gradient_checkpointing=ckpt)
        return Models(self.load_policy(resume_from), value)

    def save_model(self, model: Models, folder: Path, final: bool, weights: Models | None = None) -> None:
        model.policy.save(folder, merge=final, state_dict=weights and weights.policy)
        self.tokenizer.save_pretrained(folder)
        model.value.save(folder / VALUE_DIR, base_model=self.cfg.value_model or self.cfg.reward_model,
                         state_dict=weights and weights.value)

    def _checkpoint(self, models: Models, optimizer, iteration: int) -> None:
        self.checkpoint(models, iteration, {"optimizer": self.optimizer_state(models, optimizer),
                                            "kl_coef": self.kl.value})

    # -- rollout --

    def generator(self, policy: Policy) -> Generator:
        """The rollout engine of `generator` (built once, on the prepared policy)."""
        if self._generator is not None:
            return self._generator
        cfg, acc = self.cfg, self.accelerator
        policy = acc.unwrap_model(policy)
        if cfg.generator == "vllm":
            self._generator = VLLMGenerator(
                policy.lm, cfg.model, self.fmt.eos_id, max_new_tokens=cfg.max_new_tokens,
                min_new_tokens=cfg.min_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                max_model_len=cfg.max_prompt_length + cfg.max_new_tokens,
                gpu_memory_utilization=cfg.vllm_gpu_memory_utilization, sleep_mode=cfg.vllm_sleep_mode,
                dtype=vllm_dtype(acc), seed=cfg.seed + acc.process_index)
        else:
            fsdp_forward_method(policy, "generate")
            self._generator = HFGenerator(policy, self.fmt.pad_id, self.fmt.eos_id, cfg.max_new_tokens, True,
                                          cfg.temperature, cfg.top_p, cfg.top_k, batch_size=cfg.rollout_batch_size,
                                          min_new_tokens=cfg.min_new_tokens,
                                          synced=is_fsdp2(policy) or is_sharded(acc))
        return self._generator

    def sample_prompts(self, iteration: int) -> list[list[int]]:
        """Prompt ids, deterministic per iteration and process, so a resumed run draws the same prompts."""
        rng = random.Random(self.cfg.seed * 1_000_003 + iteration * 1009 + self.accelerator.process_index)
        pool = self.train_prompts
        return [self.fmt.prompt_ids(pool[rng.randrange(len(pool))]) for _ in range(self.cfg.rollout_batch_size)]

    def scores(self, batch: dict[str, Tensor], index: Tensor, mask: Tensor, has_eos: Tensor) -> Tensor:
        """s_t on the response grid: token rewards (fine-grained) or R(x, y) on the last token (sequence)."""
        with self.accelerator.autocast():
            out = self.reward_model(batch["input_ids"], batch["attention_mask"])
        r = token_rewards(out, self.reward_model.head_kind)
        last = (mask.sum(-1) - 1).clamp(min=0)[:, None]
        if self.cfg.reward == "token":
            s = gather(r, index) * mask
        else:
            total = sequence_scores(r, batch["response_mask"], self.reward_model.head_kind)
            s = torch.zeros(mask.shape, device=r.device).scatter(1, last, total[:, None])
        if self.cfg.missing_eos_penalty:
            penalty = (~has_eos).float() * self.cfg.missing_eos_penalty
            s = s.scatter_add(1, last, -penalty[:, None])
        return s

    @torch.no_grad()
    def bookkeeping(self, policy: Policy, value: RewardModel, prompt_ids: list[list[int]],
                    responses: list[list[int]]) -> dict[str, Tensor]:
        """Everything PPO needs of sampled responses, whichever engine sampled them (the generator returns
        token ids only): the training policy's own log-probs and entropy of the sampled tokens (old π),
        the reference's, values, scores, KL-shaped rewards, advantages and returns, on the response grid."""
        cfg, device = self.cfg, self.accelerator.device
        rows = [Row(p, r, [0] * len(r), has_eos=bool(r) and r[-1] == self.fmt.eos_id)
                for p, r in zip(prompt_ids, responses, strict=True)]
        batch = {k: v.to(device) for k, v in collate_rows(rows, self.fmt.pad_id).items()}
        has_eos = torch.tensor([row.has_eos for row in rows], device=device)
        index, mask = response_index(batch)
        args = (batch["input_ids"], batch["attention_mask"])
        logp, entropy = policy(*args, batch["response_mask"], with_entropy=True)
        with self.accelerator.autocast():
            ref_logp, _ = self.ref(*args, batch["response_mask"])
        values = gather(value(*args), index - 1)  # V of y_t reads the state before it
        old_logp, ref_logp = gather(logp, index) * mask, gather(ref_logp, index) * mask
        values = values * mask
        s = self.scores(batch, index, mask, has_eos)
        kl = losses.kl_per_token(old_logp, ref_logp, cfg.kl_estimator) * mask
        non_score = -self.kl.value * kl
        rewards = s + non_score
        if cfg.whiten_rewards:
            rewards = losses.whiten(rewards, mask, shift_mean=False)
        advantages, returns = losses.gae(rewards, values, mask, cfg.gamma, cfg.lam)
        advantages = losses.whiten(advantages, mask)
        return {**batch, "index": index, "mask": mask, "old_logp": old_logp, "values": values,
                "advantages": advantages, "returns": returns, "scores": s, "kl": kl, "non_score": non_score,
                "entropy": gather(entropy, index) * mask, "has_eos": has_eos}

    # -- update --

    def update(self, policy, value, optimizer, params, data: dict[str, Tensor]) -> dict[str, float]:
        cfg, acc = self.cfg, self.accelerator
        n = data["input_ids"].shape[0]
        stats: dict[str, list[float]] = defaultdict(list)
        for _ in range(cfg.ppo_epochs):
            epoch_kl = []
            for rows in torch.randperm(n).chunk(cfg.num_mini_batches):
                mb = {k: v[rows] for k, v in data.items()}
                mask, index = mb["mask"], mb["index"]
                logp, _ = policy(mb["input_ids"], mb["attention_mask"], mb["response_mask"])
                new_values = gather(value(mb["input_ids"], mb["attention_mask"]), index - 1)
                pg_loss, pg = losses.policy_loss(gather(logp, index), mb["old_logp"], mb["advantages"], mask,
                                                 cfg.cliprange)
                vf_loss, vf_clipfrac = losses.value_loss(new_values, mb["values"], mb["returns"], mask,
                                                         cfg.cliprange_value)
                acc.backward(pg_loss + cfg.vf_coef * vf_loss)
                if cfg.max_grad_norm > 0:
                    acc.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                for key, val in (("policy/approxkl_avg", pg["approxkl"]), ("policy/clipfrac_avg", pg["clipfrac"]),
                                 ("loss/policy_avg", pg_loss), ("loss/value_avg", vf_loss),
                                 ("val/clipfrac_avg", vf_clipfrac), ("val/ratio", pg["ratio"])):
                    stats[key].append(float(val.detach()))
                epoch_kl.append(float(pg["approxkl"]))
            if cfg.approx_kl_stop and sum(epoch_kl) / len(epoch_kl) > cfg.approx_kl_stop:
                stats["policy/early_stop"].append(1.0)
                break
        out = {k: sum(v) / len(v) for k, v in stats.items()}
        out.setdefault("policy/early_stop", 0.0)
        return out

    @staticmethod
    def rollout_stats(data: dict[str, Tensor], kl_coef: float) -> dict[str, float]:
        mask = data["mask"]
        scores = data["scores"].sum(-1)
        non_score = data["non_score"].sum(-1)
        task, penalty = data["scores"].abs().sum(), data["non_score"].abs().sum()
        return {
            "objective/kl": float(data["kl"].sum(-1).mean()),
            "objective/entropy": float(data["entropy"].sum(-1).mean()),
            "objective/scores": float(scores.mean()),
            "objective/non_score_reward": float(non_score.mean()),
            "objective/rlhf_reward": float((scores + non_score).mean()),
            "objective/kl_coef": kl_coef,
            "objective/response_length": float(mask.sum(-1).float().mean()),
            "val/num_eos_tokens": float(data["has_eos"].float().sum()),
            "dense/score_mean": float(losses.masked_mean(data["scores"], mask)),
            "dense/score_std": float(losses.masked_var(data["scores"], mask).sqrt()),
            "dense/task_share": float(task / (task + penalty).clamp(min=1e-8)),
        }

    # -- loop --

    def train(self) -> dict[str, Any]:
        cfg, acc = self.cfg, self.accelerator
        resume_from = self.resume_checkpoint()
        models = self._build(resume_from)
        for model in models:
            model.train()
        params = [p for model in models for p in model.parameters() if p.requires_grad]
        optimizer = adamw(params, cfg.learning_rate, cfg.weight_decay)
        policy, value, optimizer = acc.prepare(*models, optimizer)
        models = Models(policy, value)
        iteration = 0
        if resume_from is not None:
            state = self.restore(resume_from, models, optimizer)
            self.kl.value = state["kl_coef"]
            iteration = state["step"]

        bar = tqdm(total=cfg.num_iterations, initial=iteration, desc="ppo", disable=not acc.is_main_process)
        self.run_dir.progress(iteration, cfg.num_iterations)
        while iteration < cfg.num_iterations:
            started = time.perf_counter()
            prompt_ids = self.sample_prompts(iteration)
            responses = self.generator(policy)(prompt_ids)
            generation_time = time.perf_counter() - started
            data = self.bookkeeping(policy, value, prompt_ids, responses)
            logged = self.rollout_stats(data, self.kl.value)
            logged.update(self.update(policy, value, optimizer, params, data))
            if cfg.adaptive_kl:
                self.kl.update(logged["objective/kl"], cfg.rollout_batch_size * acc.num_processes)
            iteration += 1
            bar.update(1)
            self.run_dir.progress(iteration, cfg.num_iterations, every_s=1.0)
            logged.update({"learning_rate": cfg.learning_rate, "iteration_time": time.perf_counter() - started,
                           "generation_time": generation_time,
                           "episode": iteration * cfg.rollout_batch_size * acc.num_processes})
            if iteration % cfg.logging_steps == 0 or iteration == cfg.num_iterations:
                self.run_dir.log(iteration, cfg.num_iterations, logged)
                bar.set_postfix(score=f"{logged['objective/scores']:.3f}")
            if cfg.save_steps and iteration % cfg.save_steps == 0 and iteration < cfg.num_iterations:
                self._checkpoint(models, optimizer, iteration)
        bar.close()

        self._checkpoint(models, optimizer, iteration)
        result = {"step": iteration, **self.evaluate(acc.unwrap_model(policy))}
        self.run_dir.log(iteration, cfg.num_iterations, {f"eval/{k}": v for k, v in result.items() if k != "step"})
        self.save_final(models)
        self.run_dir.write_eval(result, examples=len(self.val_prompts))
        self.run_dir.close()
        return result

    @torch.no_grad()
    def evaluate(self, policy: Policy) -> dict[str, float]:
        """Greedy responses to held-out prompts, judged by the training reward model against the edited
        responses of those prompts (the export's references)."""
        val = set(self.val_prompts)
        rows = read_rows(self.cfg.data) if Path(self.cfg.data).suffix != ".txt" else []
        if not rows or not all("edited" in r for r in rows):
            return {}  # a plain prompt file has no reference responses to compare against
        pairs = [p for p in read_export(self.cfg.data, OUTCOMES_WITH_GOOD_RESPONSE) if p.prompt in val]
        if not pairs:
            return {}
        policy.eval()
        fsdp_forward_method(policy, "generate")
        generator = HFGenerator(policy, self.fmt.pad_id, self.fmt.eos_id, self.cfg.max_new_tokens,
                                do_sample=False, batch_size=self.cfg.batch_size,
                                synced=is_fsdp2(policy) or is_sharded(self.accelerator))

        def judge(prompts: list[str], responses: list[str]) -> list[float]:
            rows = [self.fmt.row(self.fmt.prompt_ids(p), self.fmt.response_ids(r))
                    for p, r in zip(prompts, responses, strict=True)]
            device = self.accelerator.device
            return score_rows(self.reward_model, rows, self.fmt.pad_id, self.cfg.batch_size, device)[0]

        result = policy_metrics(policy, self.ref, self.fmt, encode_pairs(pairs, self.fmt), judge, generator,
                                self.cfg.batch_size, self.accelerator.device)
        policy.train()
        return result
