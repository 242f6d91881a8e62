"""Data formatting (chat template, separate tokenisation, labels via the label engine, truncation, split)
and config validation."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from training_fixtures import SMOL, edit_rows, make_row, write_export
from transformers import AutoTokenizer

from labels import label_ids
from training.config import ConfigError, config_schema, load_config, parse_overrides
from training.data import (
    EditPair,
    Formatter,
    collate_pairs,
    encode_pair,
    read_export,
    read_prompts,
    split_by_prompt,
)


@pytest.fixture(scope="module")
def fmt() -> Formatter:
    return Formatter(AutoTokenizer.from_pretrained(SMOL), max_length=512, max_prompt_length=256)


def test_prompt_uses_chat_template_and_response_is_tokenised_alone(fmt: Formatter):
    tok = fmt.tokenizer
    pair = EditPair("1", "Name a colour.", "Red is a colour.", "Blue is a colour.", "edited")
    enc = encode_pair(pair, fmt)
    expected_prompt = tok.apply_chat_template([{"role": "user", "content": "Name a colour."}],
                                              add_generation_prompt=True, return_dict=False)
    assert enc.chosen.prompt_ids == list(expected_prompt)
    assert tok.decode(enc.chosen.prompt_ids).endswith("<|im_start|>assistant\n")
    y1 = tok("Blue is a colour.", add_special_tokens=False)["input_ids"]
    assert enc.chosen.response_ids == [*y1, tok.eos_token_id] and enc.chosen.has_eos
    y0 = tok("Red is a colour.", add_special_tokens=False)["input_ids"]
    codes0, codes1, _ = label_ids(y0, y1)
    assert enc.chosen.codes == [*codes1, 0] and enc.rejected.codes == [*codes0, 0]
    assert 3 in enc.chosen.codes  # "Red" → "Blue" is a replace


def test_recomputed_labels_agree_with_export_labels_for_the_same_tokenizer(fmt: Formatter):
    row = edit_rows(4)[1]
    enc = encode_pair(EditPair(row["id"], row["prompt"], row["original"], row["edited"], "edited"), fmt)
    labels = row["token_labels"]
    assert enc.chosen.response_ids[:-1] == labels["edited_ids"]
    assert enc.chosen.codes[:-1] == labels["edited_labels"]
    assert enc.rejected.codes[:-1] == labels["original_labels"]


def test_plain_prompt_without_chat_template(fmt: Formatter):
    tok = AutoTokenizer.from_pretrained(SMOL)
    tok.chat_template = None
    plain = Formatter(tok)
    assert plain.prompt_ids("Hello there") == tok("Hello there")["input_ids"]


def test_truncation_keeps_prompt_end_and_drops_eos_when_response_is_cut(fmt: Formatter):
    short = Formatter(fmt.tokenizer, max_length=40, max_prompt_length=30)
    prompt = short.prompt_ids("word " * 100)
    assert len(prompt) == 30 and short.tokenizer.decode(prompt).endswith("assistant\n")
    row = short.row(prompt, list(range(100, 120)), [1] * 20)
    assert len(row) == 40 and not row.has_eos and row.codes == [1] * 10


def test_collate_masks_prompt_and_marks_eos(fmt: Formatter):
    pair = EditPair("1", "Hi", "a b", "a c d", "edited")
    enc = encode_pair(pair, fmt)
    batch = collate_pairs([enc], fmt.pad_id)
    n_prompt = len(enc.chosen.prompt_ids)
    assert not batch["response_mask"][:, :n_prompt].any()
    assert batch["response_mask"][0].sum() == len(enc.chosen.response_ids)
    assert batch["is_eos"][0].nonzero().item() == n_prompt + len(enc.chosen.response_ids) - 1
    assert batch["is_revised"].squeeze(1).tolist() == [True, False]
    assert batch["attention_mask"][1].sum() == len(enc.rejected)  # the shorter row is padded, not attended
    assert batch["input_ids"][1, len(enc.rejected):].eq(fmt.pad_id).all()


def test_split_by_prompt_keeps_each_prompt_on_one_side():
    items = [(f"p{i % 7}", i) for i in range(70)]
    train, val = split_by_prompt(items, lambda x: x[0], 0.3, seed=1)
    assert {p for p, _ in train}.isdisjoint({p for p, _ in val}) and val
    assert split_by_prompt(items, lambda x: x[0], 0.3, seed=1) == (train, val)


def test_read_export_filters_outcomes_and_reads_parquet(tmp_path: Path):
    rows = [*edit_rows(3), make_row("n", "P", "same", "same", "no_change_needed"),
            make_row("u", "Q", "bad", "bad", "unfixable")]
    jsonl = write_export(tmp_path / "e.jsonl", rows)
    assert [p.id for p in read_export(jsonl)] == ["r0", "r1", "r2"]
    assert [p.id for p in read_export(jsonl, ("edited", "no_change_needed"))] == ["r0", "r1", "r2", "n"]
    flat = [{k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in r.items()} for r in rows]
    pq.write_table(pa.Table.from_pylist(flat), tmp_path / "e.parquet")
    assert [p.id for p in read_export(tmp_path / "e.parquet")] == ["r0", "r1", "r2"]
    (tmp_path / "p.txt").write_text("one\n\ntwo\n")
    assert read_prompts(tmp_path / "p.txt") == [("0", "one"), ("2", "two")]
    with pytest.raises(ValueError, match="not an edit-pair export"):
        read_export(write_export(tmp_path / "bad.jsonl", [{"prompt": "x"}]))


def test_config_overrides_types_and_errors(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text("alpha: 2\nlearning_rate: 1e-4\noutput_dir: out\n")
    cfg = load_config("figa", path, parse_overrides(["beta=0.25", "gradient_checkpointing=true", "max-steps=7"]))
    assert (cfg.alpha, cfg.beta, cfg.learning_rate, cfg.gradient_checkpointing, cfg.max_steps) == (
        2.0, 0.25, 1e-4, True, 7)
    # Every accepted and refused value: tests/unit/test_config_values.py.
    with pytest.raises(ConfigError, match="did you mean alpha"):
        load_config("figa", None, {"alpah": 1})
    with pytest.raises(ConfigError, match="unknown kind"):
        load_config("rlhf", None, {})


def test_schema_describes_every_field_for_forms():
    schema = {f["name"]: f for f in config_schema("ppo")}
    assert schema["reward"]["choices"] == ["token", "sequence"] and schema["reward"]["default"] == "token"
    assert schema["kl_coef"]["default"] == 0.05 and schema["lam"]["default"] == 0.95
    assert all(f["help"] for f in schema.values())
    assert schema["cliprange"]["type"] == "float" and schema["ppo_epochs"]["type"] == "int"



def test_progress_is_written_from_the_first_step_but_not_on_every_step(tmp_path):
    from training.config import BaseConfig
    from training.run import MIN_EVAL_EXAMPLES, RunDir

    run = RunDir(BaseConfig(output_dir=str(tmp_path)), "token-rm")
    run.progress(0, 100)
    assert json.loads((tmp_path / "progress.json").read_text())["step"] == 0
    run.progress(1, 100, every_s=60)  # a second later would write; within the interval it waits
    assert json.loads((tmp_path / "progress.json").read_text())["step"] == 0
    run.progress(100, 100, every_s=60)  # the last step always lands
    assert json.loads((tmp_path / "progress.json").read_text())["progress"] == 1.0
    run.write_eval({"accuracy": 0.0}, examples=1)
    small = json.loads((tmp_path / "eval.json").read_text())
    assert small["eval_examples"] == 1 and "1 example(s), too few" in small["warning"]
    run.write_eval({"accuracy": 0.9}, examples=MIN_EVAL_EXAMPLES)
    assert "warning" not in json.loads((tmp_path / "eval.json").read_text())
