"""The reproduction pipeline end to end (fast preset: one seed, a few steps) and its report logic."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from reproduce.config import FAST
from reproduce.pipeline import CLI, run_pipeline
from reproduce.report import mean_curve, steps_to, summarise, write_report

REQUIRED = ("token_rm_edit_span_acc", "ppo_steps_ratio_token_vs_sequence", "ppo_win_rate_token",
            "ppo_win_rate_sequence", "figa_gold", "sft_gold", "dpo_gold")


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("reproduce")
    return out, run_pipeline(FAST, out / "run", in_process=True)


def test_fast_pipeline_goes_through_app_and_cli(fast_run):
    out, results = fast_run
    run = out / "run"
    rows = [json.loads(line) for line in (run / "export.jsonl").read_text().splitlines()]
    assert len(rows) == results["annotation"]["exported_rows"] == results["annotation"]["imported"]
    assert {r["outcome"] for r in rows} <= {"edited", "no_change_needed"}
    edited = [r for r in rows if r["outcome"] == "edited"]
    assert edited
    for r in edited:  # labelled by the server: one label per token, at least one of them an edit
        labels = r["token_labels"]
        assert len(labels["original_labels"]) == len(labels["original_ids"])
        assert any(labels["original_labels"] + labels["edited_labels"])
    seed = results["seeds"][0]
    for reward in ("token", "sequence"):
        steps = [s for s, _ in seed["ppo_curves"][reward]]
        assert steps == [0, 1, 2]  # initial policy, checkpoint 1, final model
    for name, policy in seed["policies"].items():
        assert -10 < policy["gold"] <= 1, name
        assert 0 <= policy["win_rate"] <= 1, name
    assert 0 <= seed["token-rm"]["edit_span_accuracy"] <= 1


def test_report_files_and_bench_keys(fast_run, tmp_path):
    _, results = fast_run
    bench = tmp_path / "bench" / "reproduce.json"
    write_report(results, tmp_path / "docs", bench)
    data = json.loads(bench.read_text())
    for key in REQUIRED:
        assert key in data
    assert all(math.isfinite(data[k]) for k in REQUIRED if k != "ppo_steps_ratio_token_vs_sequence")
    for name in ("ppo_gold_vs_step.png", "policies_gold.png", "rm_accuracy.png"):
        assert (tmp_path / "docs" / "reproduction" / name).read_bytes()[:4] == b"\x89PNG"
    text = (tmp_path / "docs" / "reproduction.md").read_text()
    assert "85" in text and '"seeds"' in text


def test_cli_subprocess_runs_a_kind(fast_run, tmp_path):
    out, _ = fast_run
    run = out / "run"
    result = CLI()("generate", tmp_path / "gen", model=run / "build" / "policy", data=run / "prompts_train.jsonl",
                   max_new_tokens=8, num_return_sequences=1)
    assert result["num_responses"] == FAST.train_prompts
    with pytest.raises(RuntimeError, match="failed"):
        CLI()("generate", tmp_path / "bad", model=run / "build" / "policy", data=tmp_path / "missing.jsonl")


def test_steps_to_threshold_interpolates():
    assert steps_to([0, 10, 20], [0.0, 0.5, 1.0], 0.75) == pytest.approx(15.0)
    assert steps_to([0, 10, 20], [0.0, 0.5, 1.0], 0.0) == 0.0
    assert steps_to([0, 10, 20], [0.0, 0.5, 0.6], 0.9) is None


def test_summary_on_known_curves():
    def seed(token, sequence):
        return {"initial_gold": 0.0,
                "ppo_curves": {"token": list(zip([0, 10, 20], token, strict=True)),
                               "sequence": list(zip([0, 10, 20], sequence, strict=True))},
                "policies": {n: {"gold": 0.5, "win_rate": 0.6} for n in
                             ("ppo-token", "ppo-sequence", "figa", "sft", "dpo")},
                "token-rm": {"edit_span_accuracy": 0.8, "full_seq_accuracy": 0.7, "token_auroc": 0.9,
                             "gold_token_auroc": 0.8, "gold_value_auroc": 0.7},
                "seq-rm": {"full_seq_accuracy": 0.75}}
    results = {"seeds": {"0": seed([0, 1.0, 1.0], [0, 0.5, 1.0]), "1": seed([0, 0.8, 1.2], [0, 0.5, 1.0])}}
    s = summarise(results)
    assert s["ppo_threshold_gold"] == pytest.approx(0.9)
    assert s["ppo_steps_to_threshold_sequence"] == pytest.approx(18.0)
    assert s["ppo_steps_to_threshold_token"] == pytest.approx(10.0)
    assert s["ppo_steps_ratio_token_vs_sequence"] == pytest.approx(10 / 18)
    steps, mean, std = mean_curve([[(0, 1.0), (5, 2.0)], [(0, 3.0), (5, 2.0)]])
    assert steps == [0, 5] and mean == [2.0, 2.0] and std[1] == 0.0


def test_rollout_stats_read_only_the_last_run(tmp_path):
    from reproduce.pipeline import rollout_stats

    def line(step, length):
        return json.dumps({"step": step, "objective/response_length": length, "objective/scores": 0.0,
                           "objective/kl": 0.0})

    lines = [line(1, 50.0), line(2, 50.0), line(1, 10.0), line(2, 12.0), line(3, 14.0), '{"step": 3}']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    stats = rollout_stats(tmp_path, window=2)
    assert stats["length_first"] == 11.0 and stats["length_last"] == 13.0


def test_gold_judge_plugs_into_cli_evaluate(fast_run, tmp_path):
    out, _ = fast_run
    run = out / "run"
    policy = run / "build" / "policy"
    result = CLI(in_process=True)("evaluate", tmp_path / "eval", model=run / "seed-0" / "sft" / "model",
                                  ref_model=policy, data=run / "export.jsonl", split="all",
                                  judge="training.sim.world:gold_judge", max_new_tokens=24)
    assert -10 < result["judge_score"] <= 1 and 0 <= result["win_rate"] <= 1
    # The references are the annotator's edits: with 10% missed fixes they score close to, not at, 1.
    assert 0.5 < result["reference_score"] <= 1
