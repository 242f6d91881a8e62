"""Every CLI kind end to end from an export file, with the run folder contract checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from training_fixtures import ROOT

from training.cli import main
from training.models import RewardModel

KINDS_TRAINED = ["seq-rm", "figa", "sft", "dpo", "dense-dpo"]


def length_judge(prompts: list[str], responses: list[str]) -> list[float]:
    """A simulated gold function for the `module:function` judge: longer is better."""
    return [float(len(r)) for r in responses]


def read_metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def assert_run_folder(folder: Path, kind: str) -> dict:
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["kind"] == kind
    metrics = read_metrics(folder)
    assert metrics and all(isinstance(m["step"], int) for m in metrics)
    progress = json.loads((folder / "progress.json").read_text())
    assert progress["step"] == progress["total_steps"]
    assert list((folder / "tensorboard").glob("events.out.tfevents.*"))
    return json.loads((folder / "eval.json").read_text())


def common(tiny_model: Path, data: Path, out: Path) -> list[str]:
    return ["--set", f"model={tiny_model}", "--set", f"data={data}", "--set", f"output_dir={out}",
            "--set", "batch_size=4", "--set", "logging_steps=1"]


@pytest.fixture(scope="module")
def token_rm(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A token RM trained through `python -m training` in a subprocess (the entry point the app uses)."""
    from training_fixtures import edit_rows, make_row, write_export

    tmp = tmp_path_factory.mktemp("cli")
    rows = [*edit_rows(12), make_row("same", "Say hi.", "Hi there!", "Hi there!", "no_change_needed")]
    data = write_export(tmp / "export.jsonl", rows)
    config = tmp / "run.yaml"
    config.write_text(yaml.safe_dump({"max_steps": 3, "learning_rate": 1e-3, "full_seq_weight": 0.5}))
    out = tmp / "token-rm"
    subprocess.run([sys.executable, "-m", "training", "token-rm", "--config", str(config),
                    *common(tiny_model, data, out), "--keep_l2_weight", "0.1"], check=True, cwd=ROOT)
    return data, out


def test_token_rm_run_folder(token_rm: tuple[Path, Path]):
    _, out = token_rm
    result = assert_run_folder(out, "token-rm")
    assert {"edit_span_accuracy", "full_seq_accuracy", "token_auroc", "accuracy"} <= set(result)
    names = set().union(*read_metrics(out))
    assert {"loss", "learning_rate", "epoch", "grad_norm", "accuracy", "eval/accuracy"} <= names
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["keep_l2_weight"] == 0.1 and config["full_seq_weight"] == 0.5 and config["max_steps"] == 3
    assert (out / "checkpoint-3" / "model.safetensors").is_file()
    assert RewardModel.from_pretrained(out / "model").head_kind == "token"


@pytest.mark.parametrize("kind", KINDS_TRAINED)
def test_trained_kinds(kind: str, tiny_model: Path, token_rm: tuple[Path, Path], tmp_path: Path):
    data, _ = token_rm
    out = tmp_path / kind
    assert main([kind, *common(tiny_model, data, out), "--max_steps", "2"]) == 0
    result = assert_run_folder(out, kind)
    assert result["step"] == 2
    assert (out / "model" / "model.safetensors").is_file()
    names = set().union(*read_metrics(out))
    if kind in ("dpo", "dense-dpo"):
        assert {"rewards/chosen", "rewards/accuracies", "logps/rejected", "eval/rewards/margins"} <= names
    if kind == "figa":
        assert {"logp_inserted", "logp_deleted"} <= set(result)


def test_tlcr_and_lora_options(tiny_model: Path, token_rm: tuple[Path, Path], tmp_path: Path):
    data, _ = token_rm
    out = tmp_path / "tlcr"
    assert main(["token-rm", *common(tiny_model, data, out), "--max_steps", "2", "--loss", "tlcr",
                 "--use_lora", "--lora_r", "4", "--gradient_checkpointing"]) == 0
    assert (out / "checkpoint-2" / "adapter_config.json").is_file()  # checkpoints keep the adapter
    loaded = RewardModel.from_pretrained(out / "model")  # the final folder is merged, standalone
    assert loaded.head_kind == "tlcr" and not (out / "model" / "adapter_config.json").exists()


def test_resume_continues_from_last_checkpoint(tiny_model: Path, token_rm: tuple[Path, Path], tmp_path: Path):
    data, _ = token_rm
    out = tmp_path / "sft"
    assert main(["sft", *common(tiny_model, data, out), "--max_steps", "2", "--save_steps", "1"]) == 0
    assert main(["sft", *common(tiny_model, data, out), "--max_steps", "4", "--resume", "true"]) == 0
    steps = [m["step"] for m in read_metrics(out) if "loss" in m]
    assert steps == [1, 2, 3, 4]  # the second run started at step 3
    assert json.loads((out / "eval.json").read_text())["step"] == 4


@pytest.mark.slow
@pytest.mark.parametrize("reward", ["token", "sequence"])
def test_ppo(reward: str, tiny_model: Path, token_rm: tuple[Path, Path], tmp_path: Path):
    data, rm = token_rm
    out = tmp_path / f"ppo-{reward}"
    args = ["ppo", *common(tiny_model, data, out), "--reward", reward, "--set", f"reward_model={rm / 'model'}",
            "--num_iterations", "2", "--rollout_batch_size", "4", "--max_new_tokens", "6",
            "--missing_eos_penalty", "1.0", "--adaptive_kl", "--whiten_rewards", "--kl_estimator", "k3"]
    assert main(args) == 0
    result = assert_run_folder(out, "ppo")
    assert {"judge_score", "win_rate", "kl", "response_length"} <= set(result)
    names = set().union(*read_metrics(out))
    expected = {"objective/kl", "objective/scores", "objective/rlhf_reward", "objective/non_score_reward",
                "objective/entropy", "policy/approxkl_avg", "policy/clipfrac_avg", "loss/policy_avg",
                "loss/value_avg", "val/clipfrac_avg", "val/ratio", "dense/score_mean", "dense/score_std",
                "dense/task_share"}
    assert expected <= names
    assert (out / "model" / "value_model" / "reward_head.safetensors").is_file()


@pytest.mark.slow
def test_ppo_shares_the_lora_checkpoint_and_resume_plumbing(tiny_model: Path, token_rm: tuple[Path, Path],
                                                             tmp_path: Path):
    data, rm = token_rm
    out = tmp_path / "ppo-lora"
    args = ["ppo", *common(tiny_model, data, out), "--set", f"reward_model={rm / 'model'}", "--rollout_batch_size",
            "2", "--max_new_tokens", "4", "--ppo_epochs", "1", "--use_lora", "--lora_r", "4", "--save_steps", "1",
            "--adaptive_kl"]
    assert main([*args, "--num_iterations", "2"]) == 0
    checkpoint = out / "checkpoint-1"
    assert (checkpoint / "adapter_config.json").is_file()  # the policy's adapter, as the other kinds keep it
    assert (checkpoint / "value_model" / "reward_head.safetensors").is_file()
    assert not (out / "model" / "adapter_config.json").exists()  # the final policy is merged
    assert main([*args, "--num_iterations", "3", "--resume", "true"]) == 0
    logged = [m for m in read_metrics(out) if "objective/kl_coef" in m]
    assert [m["step"] for m in logged] == [1, 2, 3]  # the second run started at iteration 3
    assert logged[2]["objective/kl_coef"] != 0.05  # the adaptive β came back from the checkpoint


def test_generate_score_evaluate(tiny_model: Path, token_rm: tuple[Path, Path], tmp_path: Path):
    data, rm = token_rm
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Tell me about tea.\nTell me about owls.\n")
    gen = tmp_path / "gen"
    assert main(["generate", "--set", f"model={tiny_model}", "--set", f"data={prompts}", "--set",
                 f"output_dir={gen}", "--max_new_tokens", "5", "--num_return_sequences", "2"]) == 0
    rows = [json.loads(line) for line in (gen / "responses.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {r["prompt"] for r in rows} == {"Tell me about tea.", "Tell me about owls."}
    assert_run_folder(gen, "generate")

    score = tmp_path / "score"
    assert main(["score", "--set", f"model={rm / 'model'}", "--set", f"data={data}",
                 "--set", f"output_dir={score}"]) == 0
    scored = [json.loads(line) for line in (score / "scores.jsonl").read_text().splitlines()]
    assert len(scored) == 13 and len(scored[0]["token_scores_edited"]) > 0
    summary = assert_run_folder(score, "score")
    assert 0.0 <= summary["edited_preferred"] <= 1.0
    gen_scores = tmp_path / "score-gen"
    assert main(["score", "--set", f"model={rm / 'model'}", "--set", f"data={gen / 'responses.jsonl'}",
                 "--set", f"output_dir={gen_scores}"]) == 0
    assert "mean_score_response" in json.loads((gen_scores / "eval.json").read_text())

    rm_eval = tmp_path / "eval-rm"
    assert main(["evaluate", "--set", f"model={rm / 'model'}", "--set", f"data={data}",
                 "--set", f"output_dir={rm_eval}", "--split", "all"]) == 0
    result = assert_run_folder(rm_eval, "evaluate")
    assert result["num_pairs"] == 12 and 0 <= result["token_auroc"] <= 1

    for judge in (str(rm / "model"), "test_training_cli:length_judge"):
        policy_eval = tmp_path / f"eval-policy-{judge[-5:]}"
        assert main(["evaluate", "--set", f"model={tiny_model}", "--set", f"data={data}", "--set",
                     f"output_dir={policy_eval}", "--judge", judge, "--ref_model", str(tiny_model),
                     "--max_new_tokens", "4", "--split", "all"]) == 0
        result = assert_run_folder(policy_eval, "evaluate")
        assert 0 <= result["win_rate"] <= 1 and result["kl"] == pytest.approx(0.0, abs=1e-4)


def test_cli_errors_schema_and_prepare_model(tmp_path: Path, capsys: pytest.CaptureFixture):
    assert main(["figa", "--set", "alpah=1"]) == 2
    assert "did you mean alpha" in capsys.readouterr().err
    assert main(["schema", "figa"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert {f["name"] for f in schema} >= {"alpha", "beta", "gamma", "tau", "normalize"}
    assert main(["schema"]) == 0
    every = json.loads(capsys.readouterr().out)
    assert set(every) == {"token-rm", "figa", "ppo", "sft", "seq-rm", "dpo", "dense-dpo", "generate", "score",
                          "evaluate"}
    prepared = tmp_path / "model"
    prepared.mkdir()
    (prepared / "redline-prepared.txt").write_text("already converted\n")  # present: returns at once
    assert main(["prepare-model", "--out", str(prepared)]) == 0
    assert str(prepared) in capsys.readouterr().out
