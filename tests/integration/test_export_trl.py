"""The TRL preference export goes through DPOTrainer's own dataset preparation (tokenisation) unchanged."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
from factories import make_corpus

from app.db import engine_for, session_scope
from app.services.datasets import DatasetFilter
from app.services.export import stream_export
from app.services.freeze import create_version

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
trl = pytest.importorskip("trl")


def _tiny_model(tokenizer) -> transformers.PreTrainedModel:
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["preference-jsonl", "preference-conversational-jsonl"])
def test_dpo_trainer_tokenises_the_preference_export(
    db_url, settings_env, tmp_path: Path, default_tokenizer_path: Path, fmt: str
):
    with session_scope(engine_for(db_url)) as session:
        make_corpus(session)
    with session_scope(engine_for(db_url)) as session:
        version = create_version(session, DatasetFilter(review_statuses=["accepted", "pending"]), "dpo", None)
    path = tmp_path / "pref.jsonl"
    with path.open("wb") as out:
        for piece in stream_export(lambda: session_scope(engine_for(db_url)), version.id, fmt):
            out.write(piece)
    dataset = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf"))

    tokenizer = transformers.AutoTokenizer.from_pretrained(default_tokenizer_path)
    args = trl.DPOConfig(output_dir=str(tmp_path / "out"), report_to=[], per_device_train_batch_size=2,
                         max_steps=1, use_cpu=True, dataset_num_proc=None)
    trainer = trl.DPOTrainer(
        model=_tiny_model(tokenizer), ref_model=_tiny_model(tokenizer), args=args, train_dataset=dataset,
        processing_class=tokenizer,
    )
    prepared = trainer.train_dataset
    assert prepared.num_rows == dataset.num_rows == 4
    for source, row in zip(dataset, prepared, strict=True):
        assert row["chosen_ids"] and row["rejected_ids"] and row["prompt_ids"]
        chosen = source["chosen"] if fmt == "preference-jsonl" else source["chosen"][0]["content"]
        assert chosen.strip() in tokenizer.decode(row["chosen_ids"])
    trainer.train()  # one real optimisation step on the tokenised export
