"""Run configurations: one dataclass per kind, TRL-style names, and the one set of rules that checks them.

Every field carries `metadata={"help": ..., and optionally "min", "max", "choices"}`. This module is
torch-free on purpose (an import-linter contract in pyproject.toml keeps it so): the training CLI and
the web app's new-job form both import it, so a value gets the same verdict wherever it is typed —
`--set key=value`, a YAML config file, or a form field. `config_fields(kind)` describes the fields,
`check_values` types and checks a mapping of raw values field by field, and `load_config` builds a
kind's dataclass from a YAML file plus `key=value` overrides.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

# The run folder's layout that the web app relies on too (it imports this module, never torch): a
# checkpoint's optimizer and scheduler state, kept for `resume` and left out of downloads.
RESUME_STATE_FILE = "trainer_state.pt"

DEFAULT_MODEL = "var/models/SmolLM2-135M-Instruct"
# The optional extra that brings CUDA-only engines (vLLM, DeepSpeed); CPU machines never install it.
GPU_EXTRA = "pip install 'redline[gpu]'"


def missing_package(package: str) -> str:
    """"" when `package` is installed here, else what to do about it. Looks without importing: vLLM and
    DeepSpeed load CUDA at import, and the web app must never import them."""
    if importlib.util.find_spec(package) is not None:
        return ""
    return f"{package} is not installed: install the gpu extra ({GPU_EXTRA})"


class ConfigError(ValueError):
    """A config file or override that does not fit the kind's dataclass."""


class FieldError(ConfigError):
    """One value that does not fit its field; the message reads on its own under the field."""


def _f(default: Any, help: str, **limits: Any) -> Any:
    return field(default=default, metadata={"help": help, **limits})


@dataclass
class BaseConfig:
    """Keys shared by every kind."""

    output_dir: str = _f("", "Folder for config.yaml, metrics.jsonl, TensorBoard events, checkpoints, eval.json.")
    model: str = _f(DEFAULT_MODEL, "Local Hugging Face folder (causal LM, or a reward model for score/evaluate).")
    data: str = _f("", "Edit-pair export (.jsonl or .parquet); prompt file for `generate`.")
    seed: int = _f(0, "Random seed (shuffling, initialisation, sampling).", min=0)
    val_fraction: float = _f(0.1, "Share of prompts held out for evaluation (split by prompt).", min=0.0, max=0.9)
    max_length: int = _f(512, "Maximum tokens of prompt + response; responses are truncated on the right.", min=8)
    max_prompt_length: int = _f(256, "Maximum prompt tokens; prompts are truncated on the left.", min=1)
    batch_size: int = _f(8, "Rows (pairs for pairwise kinds) per device per micro-batch.", min=1)
    mixed_precision: str = _f(
        "auto", "auto = bf16 where the device supports it, else fp32.", choices=["auto", "no", "bf16", "fp16"]
    )
    num_threads: int = _f(0, "CPU threads for torch; 0 = all cores shared among local processes.", min=0)


@dataclass
class TrainConfig(BaseConfig):
    """Keys of every kind that updates weights."""

    learning_rate: float = _f(1e-5, "Peak learning rate (AdamW).", min=0.0, max=1.0)
    lr_scheduler_type: str = _f("constant", "Learning-rate schedule.", choices=["constant", "linear", "cosine"])
    warmup_steps: int = _f(0, "Linear warm-up optimizer steps.", min=0)
    weight_decay: float = _f(0.0, "AdamW weight decay.", min=0.0, max=1.0)
    max_grad_norm: float = _f(1.0, "Gradient clipping norm; 0 disables clipping.", min=0.0)
    num_train_epochs: float = _f(1.0, "Passes over the training split (ignored when max_steps > 0).", min=0.0)
    max_steps: int = _f(-1, "Optimizer steps to run; -1 = derive from num_train_epochs.", min=-1)
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step.", min=1)
    gradient_checkpointing: bool = _f(False, "Recompute activations in backward to save memory.")
    use_lora: bool = _f(False, "Train LoRA adapters (peft) instead of all weights; merged on the final save.")
    lora_r: int = _f(16, "LoRA rank.", min=1)
    lora_alpha: int = _f(32, "LoRA scaling alpha.", min=1)
    lora_dropout: float = _f(0.05, "LoRA dropout.", min=0.0, max=1.0)
    logging_steps: int = _f(10, "Log metrics every N optimizer steps.", min=1)
    eval_steps: int = _f(0, "Evaluate every N optimizer steps; 0 = only at the end.", min=0)
    save_steps: int = _f(0, "Write a checkpoint every N optimizer steps; 0 = only at the end.", min=0)
    save_total_limit: int = _f(2, "Keep at most this many checkpoints (oldest removed).", min=1)
    resume: bool = _f(False, "Continue from the last checkpoint in output_dir.")


@dataclass
class TokenRMConfig(TrainConfig):
    """Token-level reward model (algorithms.md §3)."""

    loss: str = _f("edit_span", "edit_span: BT on edited tokens; tlcr: 2-class soft-target token head.",
                   choices=["edit_span", "tlcr"])
    edit_span_weight: float = _f(1.0, "Weight of the edited-span BT loss (edit_span only).", min=0.0)
    span_reduce: str = _f("mean", "How the BT terms reduce token rewards: mean (our default: a pair's gradient "
                          "stays bounded on long edit spans) or sum (the paper's Σ over the span).",
                          choices=["mean", "sum"])
    full_seq_weight: float = _f(1.0, "Weight of the full-sequence BT loss (our choice; 0 = off).", min=0.0)
    keep_l2_weight: float = _f(0.1, "λ_keep: L2 pull of keep tokens' rewards (a keep EOS included) toward 0 "
                               "(our choice; 0 = off).", min=0.0)
    head_init: str = _f("zero", "Initial reward head: zero (every r_t starts at 0) or normal (std 1/√hidden).",
                        choices=["zero", "normal"])


@dataclass
class FigaConfig(TrainConfig):
    """FIGA (algorithms.md §2). Reference recipe: lr 1e-5 constant, 5 epochs, 128 pairs per optimizer step
    (batch_size × gradient_accumulation_steps × processes)."""

    num_train_epochs: float = _f(5.0, "Passes over the training split (reference recipe: 5).", min=0.0)
    alpha: float = _f(1.0, "Weight of inserted/replaced y1 tokens and the EOS of the revised row.", min=0.0)
    beta: float = _f(0.5, "Weight (negated) of deleted/replaced y0 tokens while CE ≤ τ.", min=0.0)
    gamma: float = _f(0.0, "Weight of kept y1 tokens (0 = reference recipe; >0 interpolates to SFT).", min=0.0)
    tau: float = _f(0.6, "CE gate of the negative term: push down only while CE ≤ τ.", min=0.0)
    tau_upper: float = _f(0.0, "When > 0, the gate is the band τ ≤ CE ≤ tau_upper instead (an earlier version "
                          "of the official code: 0.6 ≤ CE ≤ 1.0); 0 = off.", min=0.0)
    include_unchanged: bool = _f(False, "Also train on no_change_needed rows: their revised row carries keep "
                                 "tokens (weight γ) and its EOS (α), so with γ > 0 they train like SFT.")
    normalize: str = _f("token", "token: Σ w·CE / #non-zero weights in the micro-batch; sequence: mean "
                        "over rows of each row's token mean.", choices=["token", "sequence"])


@dataclass
class SFTConfig(TrainConfig):
    """SFT on prompt ⊕ edited response (algorithms.md §5)."""

    include_unchanged: bool = _f(True, "Also train on rows marked no_change_needed (their response is good).")


@dataclass
class SeqRMConfig(TrainConfig):
    """Sequence reward model: BT on (y1 chosen, y0 rejected), last-token scalar head."""


@dataclass
class DPOConfig(TrainConfig):
    """DPO on (y1 chosen, y0 rejected)."""

    beta: float = _f(0.1, "DPO temperature β.", min=0.0)
    ref_model: str = _f("", "Frozen reference policy folder; empty = the starting model.")


@dataclass
class DenseDPOConfig(DPOConfig):
    """Dense DPO (RLHF-V): replace tokens weighted γ_d in every log-prob sum."""

    gamma_d: float = _f(1.1, "Weight of replace tokens in the log-prob sums.", min=0.0)
    reduce: str = _f("sum", "sum, or weighted mean (our option) of the token log-probs.", choices=["sum", "mean"])


@dataclass
class PPOConfig(TrainConfig):
    """Fine-grained PPO and its sequence-level baseline (algorithms.md §4)."""

    learning_rate: float = _f(1e-6, "Peak learning rate (AdamW) of policy and value model.", min=0.0, max=1.0)
    reward: str = _f("token", "token: s_t = r_t on every token; sequence: R(x,y) on the last generated token.",
                     choices=["token", "sequence"])
    reward_model: str = _f("", "Trained reward model folder (token RM; a sequence RM for reward=sequence).")
    value_model: str = _f("", "Value model init folder; empty = the reward model's backbone (and head).")
    ref_model: str = _f("", "Frozen reference policy folder; empty = the starting model.")
    num_iterations: int = _f(100, "Rollout + update iterations.", min=1)
    rollout_batch_size: int = _f(8, "Prompts sampled per iteration (per process).", min=1)
    num_mini_batches: int = _f(1, "Minibatches per PPO epoch.", min=1)
    ppo_epochs: int = _f(4, "Passes over each rollout batch.", min=1)
    max_new_tokens: int = _f(64, "Maximum generated tokens per response.", min=1)
    min_new_tokens: int = _f(0, "Minimum generated tokens (EOS suppressed before); fixed lengths for timing.",
                             min=0)
    temperature: float = _f(1.0, "Sampling temperature of rollouts.", min=0.01)
    top_p: float = _f(1.0, "Nucleus sampling of rollouts.", min=0.0, max=1.0)
    top_k: int = _f(0, "Top-k sampling of rollouts (0 = off).", min=0)
    generator: str = _f("hf", "Rollout engine: hf (Hugging Face generate, also on CPU) or vllm (a vLLM engine "
                        "beside the training on each GPU, the policy's weights synced into it after every update; "
                        "needs the gpu extra).", choices=["hf", "vllm"], requires={"vllm": "vllm"})
    vllm_gpu_memory_utilization: float = _f(0.3, "generator=vllm: share of the GPU's memory vLLM may take for its "
                                            "weights and KV cache; the rest stays for training.", min=0.05, max=0.95)
    vllm_sleep_mode: bool = _f(False, "generator=vllm: put vLLM to sleep during each update (its KV cache freed, "
                               "its weights moved to CPU memory), for models that need the memory to train.")
    kl_coef: float = _f(0.05, "β of the per-token KL penalty r_t = s_t − β·k_t.", min=0.0)
    kl_estimator: str = _f("k1", "k1 = log π − log π_ref; k3 = (ρ−1) − log ρ with ρ = π_ref/π.",
                           choices=["k1", "k3"])
    adaptive_kl: bool = _f(False, "Adapt β toward target_kl (Ziegler et al. proportional controller).")
    target_kl: float = _f(6.0, "Target sequence KL of the adaptive controller.", min=0.0)
    kl_horizon: int = _f(10000, "Horizon of the adaptive controller.", min=1)
    whiten_rewards: bool = _f(False, "Scale per-token rewards to unit variance (no mean shift).")
    missing_eos_penalty: float = _f(0.0, "Subtracted from the last token's score when no EOS was generated.",
                                    min=0.0)
    approx_kl_stop: float = _f(0.0, "Stop an update's remaining epochs when approx-KL exceeds this (0 = off).",
                               min=0.0)
    gamma: float = _f(1.0, "GAE discount γ.", min=0.0, max=1.0)
    lam: float = _f(0.95, "GAE λ.", min=0.0, max=1.0)
    cliprange: float = _f(0.2, "Clip ε of the policy ratio.", min=0.0)
    cliprange_value: float = _f(0.2, "Clip of the value prediction around its rollout value.", min=0.0)
    vf_coef: float = _f(0.1, "Coefficient of the value loss.", min=0.0)
    logging_steps: int = _f(1, "Log metrics every N iterations.", min=1)


@dataclass
class GenerateConfig(BaseConfig):
    """Initial responses for a prompt file (FIGA's first step)."""

    max_new_tokens: int = _f(256, "Maximum generated tokens per response.", min=1)
    do_sample: bool = _f(True, "Sample (true) or greedy decode (false).")
    temperature: float = _f(0.7, "Sampling temperature.", min=0.01)
    top_p: float = _f(0.95, "Nucleus sampling.", min=0.0, max=1.0)
    top_k: int = _f(0, "Top-k sampling (0 = off).", min=0)
    num_return_sequences: int = _f(1, "Responses per prompt.", min=1)


@dataclass
class ScoreConfig(BaseConfig):
    """Reward-model scores for a file of (prompt, response) rows or edit pairs."""


@dataclass
class EvaluateConfig(BaseConfig):
    """Reward-model accuracies, or a policy's judge score / win rate / KL / length."""

    split: str = _f("val", "val: the held-out split of `data` (same seed and val_fraction as training); all.",
                    choices=["val", "all"])
    judge: str = _f("", "Policies: a reward model folder, or `module:function` taking (prompts, responses).")
    ref_model: str = _f("", "Policies: reference for the KL; empty = the default model.")
    max_new_tokens: int = _f(128, "Policies: maximum generated tokens.", min=1)
    do_sample: bool = _f(False, "Policies: sample (true) or greedy decode (false).")
    temperature: float = _f(1.0, "Policies: sampling temperature when do_sample.", min=0.01)


KINDS: dict[str, type[BaseConfig]] = {
    "token-rm": TokenRMConfig,
    "figa": FigaConfig,
    "ppo": PPOConfig,
    "sft": SFTConfig,
    "seq-rm": SeqRMConfig,
    "dpo": DPOConfig,
    "dense-dpo": DenseDPOConfig,
    "generate": GenerateConfig,
    "score": ScoreConfig,
    "evaluate": EvaluateConfig,
}

# Booleans as people type them: a CLI flag, a YAML file, an HTML checkbox ("on").
TRUE_WORDS = frozenset({"true", "on", "yes", "1"})
FALSE_WORDS = frozenset({"false", "off", "no", "0"})


@dataclass(frozen=True)
class FieldSpec:
    """One config key: its type name ("int", "float", "bool" or "str"), default, help and limits;
    `requires` maps a choice to the package it needs beyond the `train` extra."""

    name: str
    type: str
    default: Any
    help: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    requires: tuple[tuple[str, str], ...] | None = None

    def parse(self, raw: Any) -> Any:
        """The typed, checked value of `raw` (text, or a YAML scalar); raises FieldError."""
        value = _PARSERS[self.type](None if raw is None else raw.strip() if isinstance(raw, str) else raw)
        if self.choices is not None and value not in self.choices:
            raise FieldError(f"must be one of: {', '.join(self.choices)}")
        package = dict(self.requires or ()).get(value)
        if package and (problem := missing_package(package)):
            raise FieldError(problem)
        if self.min is not None and value < self.min:
            raise FieldError(f"must be at least {self.min:g}")
        if self.max is not None and value > self.max:
            raise FieldError(f"must be at most {self.max:g}")
        return value


def _parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if raw is None or raw == "":
        raise FieldError("true or false is required")
    text = str(raw).lower() if isinstance(raw, str | int) else ""
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise FieldError(f"{raw!r} is not true or false (also on/off, yes/no, 1/0)")


def _parse_int(raw: Any) -> int:
    if raw is None or raw == "":
        raise FieldError("a whole number is required")
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        try:
            return int(raw)
        except ValueError:
            pass
    number = _number(raw, f"{raw!r} is not a whole number")
    if not number.is_integer():
        raise FieldError(f"{raw!r} is not a whole number")
    return int(number)  # "1e3" and 3.0 are whole numbers too


def _parse_float(raw: Any) -> float:
    if raw is None or raw == "":
        raise FieldError("a number is required")
    return _number(raw, f"{raw!r} is not a number")


def _number(raw: Any, problem: str) -> float:
    """A finite float from text or a number; booleans are not numbers."""
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise FieldError(problem)
    try:
        value = float(raw)
    except ValueError:
        raise FieldError(problem) from None
    if not math.isfinite(value):
        raise FieldError("must be a finite number")
    return value


def _parse_str(raw: Any) -> str:
    if raw is None:
        return ""
    if isinstance(raw, bool):
        return str(raw).lower()  # YAML's `true` reads as the text the CLI would have passed
    if not isinstance(raw, str | int | float):
        raise FieldError(f"{raw!r} is not text")
    return str(raw)


_PARSERS = {"bool": _parse_bool, "int": _parse_int, "float": _parse_float, "str": _parse_str}


def _config_class(kind: str) -> type[BaseConfig]:
    if kind not in KINDS:
        raise ConfigError(f"unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
    return KINDS[kind]


@cache
def config_fields(kind: str) -> tuple[FieldSpec, ...]:
    """The fields of `kind`'s dataclass, in declaration order."""
    cls = _config_class(kind)
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        choices, requires = meta.get("choices"), meta.get("requires")
        out.append(FieldSpec(f.name, hints[f.name].__name__, f.default, meta.get("help", ""), meta.get("min"),
                             meta.get("max"), tuple(choices) if choices else None,
                             tuple(requires.items()) if requires else None))
    return tuple(out)


def config_schema(kind: str) -> list[dict[str, Any]]:
    """`config_fields` as JSON-ready dicts (`python -m training schema`); absent limits are left out."""
    def plain(key: str, value: Any) -> Any:
        if key == "requires":
            return dict(value)
        return list(value) if isinstance(value, tuple) else value

    return [{k: plain(k, v) for k, v in dataclasses.asdict(spec).items() if v is not None or k == "default"}
            for spec in config_fields(kind)]


def check_values(kind: str, values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(typed values, errors by key) for a mapping of raw values; every bad key gets its own message.

    Keys absent from `values` are absent from the result too (the dataclass default applies).
    """
    fields = {spec.name: spec for spec in config_fields(kind)}
    typed: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for key, raw in values.items():
        spec = fields.get(key)
        if spec is None:
            close = difflib.get_close_matches(key, fields, n=1)
            errors[key] = f"unknown key for {kind}" + (f" (did you mean {close[0]}?)" if close else "")
            continue
        try:
            typed[key] = spec.parse(raw)
        except FieldError as exc:
            errors[key] = str(exc)
    return typed, errors


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """`key=value` strings as {key: text}; the field's type decides how the text reads."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {pair!r} is not key=value")
        out[key.strip().replace("-", "_")] = raw
    return out


def build_config(kind: str, values: Mapping[str, Any]) -> BaseConfig:
    """The kind's dataclass from raw values; one ConfigError naming every bad key."""
    typed, errors = check_values(kind, values)
    if errors:
        raise ConfigError("; ".join(f"{key}: {problem}" for key, problem in errors.items()))
    return _config_class(kind)(**typed)


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. `mixed_precision: no` stays the text "no"; a bool field
    reads yes/no/on/off itself, like every other entry point."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_config(kind: str, path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> BaseConfig:
    """Config of `kind` from an optional YAML file plus overrides (which win)."""
    values: dict[str, Any] = {}
    if path:
        try:
            loaded = yaml.load(Path(path).read_text(), Loader=_YamlLoader) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of keys to values")
        values.update(loaded)
    values.update(overrides or {})
    return build_config(kind, values)


def config_dict(cfg: BaseConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
