"""Sampling responses: the pluggable generator used by PPO rollouts, evaluation and the `generate` kind.

A generator is any callable `prompt_ids -> response_ids` (each response cut after its first EOS,
which it keeps). It returns token ids only: whoever uses the responses recomputes what it needs with
its own model (PPO: `training.ppo.PPOTrainer.bookkeeping`), so every generator yields the same
log-prob bookkeeping. `HFGenerator` uses Hugging Face `generate` (CPU and GPU); `VLLMGenerator` a vLLM
engine colocated with the training on the same GPU (the `gpu` extra).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from training.config import GenerateConfig
from training.data import Formatter, read_prompts
from training.run import RunDir, make_accelerator


class Generator(Protocol):
    def __call__(self, prompt_ids: Sequence[list[int]]) -> list[list[int]]: ...


@dataclass
class HFGenerator:
    model: nn.Module  # anything with Hugging Face's `generate`: a causal LM, or a `models.Policy`
    pad_id: int
    eos_id: int
    max_new_tokens: int = 64
    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    batch_size: int = 16
    min_new_tokens: int = 0
    # Sharded weights (FSDP, ZeRO-3): every rank takes part in every forward, so ranks whose responses
    # ended early keep stepping until all have (transformers' `synced_gpus`).
    synced: bool = False

    @torch.no_grad()
    def __call__(self, prompt_ids: Sequence[list[int]]) -> list[list[int]]:
        out: list[list[int]] = []
        for start in range(0, len(prompt_ids), self.batch_size):
            out.extend(self._batch(prompt_ids[start : start + self.batch_size]))
        return out

    def _batch(self, prompts: Sequence[list[int]]) -> list[list[int]]:
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        # Left padding: every prompt ends where generation starts.
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        sampling = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k or None}
        was_training = self.model.training
        self.model.eval()
        generated = self.model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=self.max_new_tokens,
            min_new_tokens=self.min_new_tokens, do_sample=self.do_sample, pad_token_id=self.pad_id,
            eos_token_id=self.eos_id, use_cache=True, synced_gpus=self.synced,
            **(sampling if self.do_sample else {}),
        )
        self.model.train(was_training)
        return [cut_at_eos(row.tolist(), self.eos_id) for row in generated[:, width:]]


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise RuntimeError(f"generator=vllm needs vLLM, which could not be imported ({exc}): install the gpu "
                           "extra (pip install 'redline[gpu]') on the machines that train") from exc
    return vllm


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def vllm_weights(lm: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The causal LM's whole weights under the names of its Hugging Face checkpoint (what vLLM's
    `load_weights` reads): LoRA adapters merged in, sharded (FSDP2) parameters gathered one at a time.
    Every rank must iterate it to the end: gathering a sharded parameter is a collective. Copy each tensor
    as it comes (vLLM's `load_weights` does): they are the training weights themselves, with the
    adapter merged in only until the iteration ends."""
    adapter = hasattr(lm, "merge_adapter")
    if adapter:
        lm.merge_adapter()  # peft adds B·A·scale into each base weight, and takes it out again below
    try:
        base = lm.get_base_model() if adapter else lm
        for name, tensor in base.state_dict().items():
            if adapter and "lora_" in name:
                continue
            if hasattr(tensor, "full_tensor"):  # a DTensor shard of FSDP2
                tensor = tensor.full_tensor()
            yield name.replace(".base_layer.", "."), tensor
    finally:
        if adapter:
            lm.unmerge_adapter()


class VLLMGenerator:
    """Rollouts from a vLLM engine in this training process, on its GPU (TRL's "colocate" mode, as
    OpenRLHF and verl run it): every process keeps its own engine (`external_launcher`, tensor
    parallel 1) and samples its own prompts. Before each call the policy's current weights are copied
    into the engine with the model's `load_weights` (vLLM's weight-update path for RLHF), so the
    rollouts after an update come from the updated policy.

    `sleep_mode`: between calls the engine sleeps (level 1: KV cache freed, weights moved to CPU memory),
    which leaves the memory to the update; it wakes its weights, takes the new ones, then its cache.
    """

    def __init__(self, lm: nn.Module, model_path: str, eos_id: int, *, max_new_tokens: int, min_new_tokens: int,
                 temperature: float, top_p: float, top_k: int, max_model_len: int, gpu_memory_utilization: float,
                 sleep_mode: bool, dtype: str, seed: int) -> None:
        vllm = _import_vllm()
        if not torch.cuda.is_available():
            raise RuntimeError("generator=vllm needs a CUDA GPU; use generator=hf on this machine")
        # external_launcher: the engine joins this process's torch.distributed world (started by
        # `accelerate launch`) instead of spawning workers, and stays in this process, where its model
        # can take the policy's tensors directly. It reads the usual rendezvous variables; a lone
        # process gets its own.
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                           ("MASTER_PORT", str(_free_port()))):
            os.environ.setdefault(key, value)
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        self.lm = lm
        self.eos_id = eos_id
        self.sleep_mode = sleep_mode
        self.llm = vllm.LLM(model=model_path, dtype=dtype, seed=seed, max_model_len=max_model_len,
                            gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=sleep_mode,
                            distributed_executor_backend="external_launcher", tensor_parallel_size=1)
        # Stop at the policy's EOS only, as HFGenerator does (not at other ids a generation config lists).
        self.sampling = vllm.SamplingParams(n=1, max_tokens=max_new_tokens, min_tokens=min_new_tokens,
                                            temperature=temperature, top_p=top_p, top_k=top_k or -1,
                                            ignore_eos=True, stop_token_ids=[eos_id], detokenize=False)
        if sleep_mode:
            self.llm.sleep(level=1)

    def _engine_model(self) -> nn.Module:
        worker = self.llm.llm_engine.model_executor.driver_worker
        return getattr(worker, "worker", worker).model_runner.model

    @torch.no_grad()
    def sync_weights(self) -> None:
        """Copy the policy's weights into the engine (tensor by tensor: no second full copy in memory)."""
        model = self._engine_model()
        for name, tensor in vllm_weights(self.lm):
            model.load_weights([(name, tensor)])
        self.llm.reset_prefix_cache()  # cached keys and values came from the old weights

    @torch.no_grad()
    def __call__(self, prompt_ids: Sequence[list[int]]) -> list[list[int]]:
        if self.sleep_mode:
            torch.cuda.empty_cache()
            self.llm.wake_up(tags=["weights"])
        self.sync_weights()
        if self.sleep_mode:
            self.llm.wake_up(tags=["kv_cache"])
        with contextlib.ExitStack() as stack:
            if self.sleep_mode:
                stack.callback(self.llm.sleep, level=1)
            outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompt_ids], self.sampling,
                                        use_tqdm=False)
        return [self._response(out.outputs[0]) for out in outputs]

    def _response(self, completion: Any) -> list[int]:
        ids = cut_at_eos(list(completion.token_ids), self.eos_id)
        if completion.finish_reason == "stop" and (not ids or ids[-1] != self.eos_id):
            ids.append(self.eos_id)  # it stopped at its one stop token, which this vLLM left out of the ids
        return ids


def cut_at_eos(ids: list[int], eos_id: int) -> list[int]:
    """Tokens up to and including the first EOS (everything after it is padding)."""
    return ids[: ids.index(eos_id) + 1] if eos_id in ids else ids


def strip_eos(ids: list[int], eos_id: int) -> list[int]:
    return ids[:-1] if ids and ids[-1] == eos_id else ids


def run_generate(cfg: GenerateConfig) -> dict[str, float]:
    """Responses for every prompt of `data`, written to responses.jsonl as {id, prompt, response, model}."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    accelerator = make_accelerator(cfg)
    run = RunDir(cfg, "generate", accelerator.is_main_process)
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    fmt = Formatter(tokenizer, cfg.max_length, cfg.max_prompt_length)
    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32).to(accelerator.device)
    generator = HFGenerator(model, fmt.pad_id, fmt.eos_id, cfg.max_new_tokens, cfg.do_sample, cfg.temperature,
                            cfg.top_p, cfg.top_k, cfg.batch_size)
    prompts = read_prompts(cfg.data)
    jobs = [(pid, prompt, k) for pid, prompt in prompts for k in range(cfg.num_return_sequences)]
    total = len(jobs)
    lengths, eos = [], 0
    with (run.path / "responses.jsonl").open("w", encoding="utf-8") as fh:
        for start in tqdm(range(0, total, cfg.batch_size), desc="generate"):
            chunk = jobs[start : start + cfg.batch_size]
            responses = generator([fmt.prompt_ids(prompt) for _, prompt, _ in chunk])
            for (pid, prompt, k), ids in zip(chunk, responses, strict=True):
                eos += int(bool(ids) and ids[-1] == fmt.eos_id)
                text = tokenizer.decode(strip_eos(ids, fmt.eos_id), skip_special_tokens=True)
                lengths.append(len(ids))
                row_id = pid if cfg.num_return_sequences == 1 else f"{pid}-{k}"
                fh.write(json.dumps({"id": row_id, "prompt": prompt, "response": text, "model": cfg.model}) + "\n")
            done = min(total, start + cfg.batch_size)
            run.log(done, total, {"generated": done})
    result = {"num_prompts": len(prompts), "num_responses": total,
              "mean_length": sum(lengths) / max(1, len(lengths)), "eos_rate": eos / max(1, total)}
    run.write_eval(result)
    run.close()
    return result
