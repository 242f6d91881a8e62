"""One table of accepted and refused config values, checked at every entry point: the CLI's
`--set key=value`, a YAML config file, and the web app's new-job form get the same verdict."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from app.services import job_config
from training.cli import main as training_cli
from training.config import ConfigError, build_config, config_fields, load_config, parse_overrides

REFUSED = object()

# (kind, key, typed text, the value it gives, or REFUSED)
TABLE = [
    # booleans: the words people type, a checkbox's "on", and nothing else
    ("sft", "use_lora", "true", True),
    ("sft", "use_lora", "on", True),
    ("sft", "use_lora", "YES", True),
    ("sft", "use_lora", "1", True),
    ("sft", "use_lora", "false", False),
    ("sft", "use_lora", "off", False),
    ("sft", "use_lora", "no", False),
    ("sft", "use_lora", "0", False),
    ("sft", "use_lora", "maybe", REFUSED),
    ("sft", "use_lora", "2", REFUSED),
    ("sft", "use_lora", "", REFUSED),
    # whole numbers: integral numbers in any notation, within the limits
    ("sft", "batch_size", "7", 7),
    ("sft", "max_steps", "-1", -1),
    ("sft", "max_steps", "3.0", 3),
    ("sft", "max_steps", "1e3", 1000),
    ("sft", "max_steps", "2.5", REFUSED),
    ("sft", "max_steps", "seven", REFUSED),
    ("sft", "max_steps", "inf", REFUSED),
    ("sft", "max_steps", "true", REFUSED),
    ("sft", "max_steps", "", REFUSED),
    ("sft", "max_steps", "-2", REFUSED),
    ("sft", "batch_size", "0", REFUSED),
    # numbers: finite only
    ("ppo", "kl_coef", "0.2", 0.2),
    ("sft", "learning_rate", "1e-5", 1e-5),
    ("sft", "max_grad_norm", "3", 3.0),
    ("ppo", "kl_coef", "inf", REFUSED),
    ("ppo", "kl_coef", ".inf", REFUSED),
    ("ppo", "kl_coef", "nan", REFUSED),
    ("ppo", "kl_coef", "fast", REFUSED),
    ("ppo", "kl_coef", "true", REFUSED),
    ("ppo", "kl_coef", "", REFUSED),
    ("ppo", "kl_coef", "-0.1", REFUSED),
    ("sft", "learning_rate", "1.5", REFUSED),
    # text: as written; choices where the field has them
    ("sft", "mixed_precision", "no", "no"),
    ("sft", "mixed_precision", "bf16", "bf16"),
    ("sft", "mixed_precision", "fp8", REFUSED),
    ("sft", "mixed_precision", "true", REFUSED),
    ("ppo", "reward", "sequence", "sequence"),
    ("ppo", "reward", "dense", REFUSED),
    ("ppo", "generator", "hf", "hf"),
    ("ppo", "generator", "tgi", REFUSED),
    ("ppo", "vllm_gpu_memory_utilization", "0.99", REFUSED),
    ("dpo", "ref_model", "runs/sft/model", "runs/sft/model"),
    ("dpo", "ref_model", "on", "on"),
    ("dpo", "ref_model", "true", "true"),
    ("dpo", "ref_model", "", ""),
]


def _cli(kind: str, key: str, text: str, tmp_path: Path):
    return getattr(load_config(kind, None, parse_overrides([f"{key}={text}"])), key)


def _yaml(kind: str, key: str, text: str, tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text(f"{key}: {text}\n")
    return getattr(load_config(kind, path), key)


def _web(kind: str, key: str, text: str, tmp_path: Path):
    config, errors = job_config.validate_hyperparameters(kind, {key: text})
    if errors:
        raise ConfigError(f"{key}: {errors[key]}")
    return config[key]


@pytest.mark.parametrize("entry", [_cli, _yaml, _web], ids=["cli", "yaml", "web"])
@pytest.mark.parametrize(("kind", "key", "text", "expected"), TABLE, ids=[f"{k}={t!r}" for _, k, t, _ in TABLE])
def test_every_entry_point_gives_the_same_verdict(entry, kind, key, text, expected, tmp_path):
    if expected is REFUSED:
        with pytest.raises(ConfigError, match=f"^{key}: "):
            entry(kind, key, text, tmp_path)
    else:
        value = entry(kind, key, text, tmp_path)
        assert value == expected and type(value) is type(expected)


def test_the_table_covers_every_field_type():
    types = {spec.type for kind, key, _, _ in TABLE for spec in config_fields(kind) if spec.name == key}
    assert types == {spec.type for kind in ("sft", "ppo") for spec in config_fields(kind)}


def test_every_bad_key_is_named_in_one_error():
    with pytest.raises(ConfigError) as caught:
        build_config("ppo", {"batch_size": "0", "reward": "dense", "kl_cof": "0.1"})
    message = str(caught.value)
    assert "batch_size: must be at least 1" in message
    assert "reward: must be one of: token, sequence" in message
    assert "kl_cof: unknown key for ppo (did you mean kl_coef?)" in message


def test_the_form_fills_defaults_and_reads_an_absent_checkbox_as_false():
    config, errors = job_config.validate_hyperparameters("sft", {"batch_size": "4"})
    assert errors == {}
    assert config["batch_size"] == 4 and config["learning_rate"] == 1e-5  # absent: the default
    assert config["include_unchanged"] is False  # default true, but an unticked box sends nothing
    assert not set(config) & job_config.JOB_SET_KEYS


def test_a_yaml_file_that_is_not_a_mapping_or_not_yaml_is_an_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config("sft", bad)
    bad.write_text("batch_size: [1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        load_config("sft", bad)
    with pytest.raises(ConfigError, match="missing"):
        load_config("sft", tmp_path / "missing.yaml")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_asking_for_vllm_without_the_gpu_extra_is_refused_everywhere(tmp_path, capsys):
    problem = "vllm is not installed: install the gpu extra (pip install 'redline[gpu]')"
    for entry in (_cli, _yaml, _web):
        with pytest.raises(ConfigError, match=r"generator: vllm is not installed: install the gpu extra"):
            entry("ppo", "generator", "vllm", tmp_path)
    # The CLI stops before loading anything, with the field's message.
    assert training_cli(["ppo", "--set", f"output_dir={tmp_path}", "--generator", "vllm"]) == 2
    assert f"error: generator: {problem}" in capsys.readouterr().err
