"""Fixtures of the training tests: a tiny random Llama with the real SmolLM2 tokenizer, and export files
in the server's edit-pair format (helpers in training_fixtures.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from training_fixtures import SMOL, edit_rows, make_row, write_export


@pytest.fixture
def export_file(tmp_path: Path) -> Path:
    rows = edit_rows(12)
    rows.append(make_row("same", "Say hi.", "Hi there!", "Hi there!", "no_change_needed"))
    rows.append(make_row("bad", "Say bye.", "Blah.", "Blah.", "unfixable"))
    return write_export(tmp_path / "export.jsonl", rows)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Llama (hidden 32) saved with SmolLM2's tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(SMOL)
    config = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64, vocab_size=len(tokenizer), tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, max_position_embeddings=512)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    shutil.copy(SMOL / "generation_config.json", folder / "generation_config.json")
    return folder
