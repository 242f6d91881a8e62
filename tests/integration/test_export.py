"""Exports of a dataset version, read back with `datasets.load_dataset` and checked against the database."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from factories import SAMPLE_PAIRS, make_corpus
from sqlalchemy import select
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from app.db import engine_for, session_scope
from app.models import DatasetRow, Edit, Review, Verdict
from app.services import export
from app.services.datasets import DatasetFilter
from app.services.export import EXPORT_FORMATS, ExportError, open_export, stream_export
from app.services.freeze import create_version
from labels import load_tokenizer

EVERYTHING = DatasetFilter(
    outcomes=["edited", "no_change_needed", "unfixable"], review_statuses=["accepted", "pending"]
)


@pytest.fixture
def version(db_url: str, settings_env):
    with session_scope(engine_for(db_url)) as session:
        corpus = make_corpus(session)
    with session_scope(engine_for(db_url)) as session:
        made = create_version(session, EVERYTHING, "everything", corpus["admin"])
    return made


def _write(db_url: str, version_id: int, fmt: str, path: Path, **kwargs) -> Path:
    with path.open("wb") as out:
        for piece in stream_export(lambda: session_scope(engine_for(db_url)), version_id, fmt, **kwargs):
            out.write(piece)
    return path


def _load(path: Path, fmt: str) -> datasets.Dataset:
    builder = "parquet" if fmt.endswith("parquet") else "json"
    return datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=str(path.parent / "hf"))


def _db_rows(db_url: str, version_id: int) -> list[dict]:
    with session_scope(engine_for(db_url)) as session:
        return [json.loads(text) for text in session.scalars(
            select(DatasetRow.data).where(DatasetRow.dataset_version_id == version_id).order_by(DatasetRow.seq)
        )]


def _as_utc(value: str | datetime) -> datetime:
    # The JSON loader turns ISO strings into naive UTC timestamps; Parquet keeps the string.
    return value.replace(tzinfo=UTC) if isinstance(value, datetime) else datetime.fromisoformat(value)


def _char_diff(exported: dict, path: Path, fmt: str) -> list[tuple[int, str]]:
    if fmt == "pairs-parquet":
        return [(d["op"], d["text"]) for d in exported["char_diff"]]
    # datasets' Json feature decodes mixed-type list entries, so a segment "4" would come back as the
    # number 4: the JSONL file itself is checked (docs/datasets.md says to read char_diff that way).
    lines = (json.loads(line) for line in path.read_text().splitlines())
    row = next(line for line in lines if line["id"] == exported["id"])
    return [tuple(d) for d in row["char_diff"]]


def _labels_of(db_url: str, edit_id: int) -> dict:
    """Token labels as the database holds them: the reviewer's fix layer when there is one."""
    with session_scope(engine_for(db_url)) as session:
        fix = session.scalars(
            select(Review).where(Review.edit_id == edit_id, Review.verdict == Verdict.FIX_AND_ACCEPT)
        ).first()
        return fix.token_labels if fix else session.get(Edit, edit_id).token_labels


@pytest.mark.parametrize("fmt", ["pairs-jsonl", "pairs-parquet"])
def test_edit_pairs_load_with_datasets_and_match_the_database(db_url, version, tmp_path, fmt):
    path = _write(db_url, version.id, fmt, tmp_path / f"pairs.{EXPORT_FORMATS[fmt].extension}")
    loaded = _load(path, fmt)
    rows = _db_rows(db_url, version.id)
    assert loaded.num_rows == version.row_count == len(rows) == 6
    assert set(loaded.column_names) == {
        "id", "item_id", "project", "prompt", "original", "edited", "outcome", "token_labels", "char_diff",
        "stats", "annotator_id", "review", "created_at", "annotator_kind", "editor", "editor_model", "prompt_version",
        "suggestion_used", "human_vs_suggestion_rate",
    }
    for exported, frozen in zip(loaded, rows, strict=True):
        edit_id = int(exported["id"].removeprefix("edit-"))
        labels = exported["token_labels"]
        assert labels == _labels_of(db_url, edit_id)
        assert len(labels["original_labels"]) == len(labels["original_ids"]) == exported["stats"]["original_tokens"]
        assert len(labels["edited_labels"]) == len(labels["edited_ids"]) == exported["stats"]["edited_tokens"]
        for key in ("id", "prompt", "original", "edited", "outcome", "annotator_id"):
            assert exported[key] == frozen[key]
        assert _as_utc(exported["created_at"]) == datetime.fromisoformat(frozen["created_at"])
        pairs = _char_diff(exported, path, fmt)
        assert pairs == [tuple(d) for d in frozen["char_diff"]]
        assert "".join(t for op, t in pairs if op != 1) == exported["original"]
        assert "".join(t for op, t in pairs if op != -1) == exported["edited"]
        assert (exported["review"] is None) == (frozen["review"] is None)


@pytest.mark.parametrize("conversational", [False, True])
def test_preference_rows_skip_unedited_and_unfixable(db_url, version, tmp_path, conversational):
    fmt = "preference-conversational-jsonl" if conversational else "preference-jsonl"
    loaded = _load(_write(db_url, version.id, fmt, tmp_path / "pref.jsonl"), fmt)
    frozen = {r["id"]: r for r in _db_rows(db_url, version.id)}
    wanted = [r for r in frozen.values() if r["outcome"] != "unfixable" and r["edited"] != r["original"]]
    assert loaded.num_rows == len(wanted) == 4
    assert set(loaded.column_names) == {"id", "prompt", "chosen", "rejected"}
    for row in loaded:
        source = frozen[row["id"]]
        if conversational:
            assert row["prompt"] == [{"role": "user", "content": source["prompt"]}]
            assert row["chosen"] == [{"role": "assistant", "content": source["edited"]}]
            assert row["rejected"] == [{"role": "assistant", "content": source["original"]}]
        else:
            assert (row["prompt"], row["chosen"], row["rejected"]) == (
                source["prompt"], source["edited"], source["original"]
            )


@pytest.mark.parametrize("conversational", [False, True])
def test_sft_rows_are_prompt_completion_without_unfixable(db_url, version, tmp_path, conversational):
    fmt = "sft-conversational-jsonl" if conversational else "sft-jsonl"
    loaded = _load(_write(db_url, version.id, fmt, tmp_path / "sft.jsonl"), fmt)
    frozen = {r["id"]: r for r in _db_rows(db_url, version.id)}
    assert loaded.num_rows == sum(r["outcome"] != "unfixable" for r in frozen.values()) == 5
    assert set(loaded.column_names) == {"id", "prompt", "completion"}
    for row in loaded:
        completion = row["completion"][0]["content"] if conversational else row["completion"]
        assert completion == frozen[row["id"]]["edited"]


def test_card_describes_counts_filter_hash_and_label_scheme(db_url, version, tmp_path):
    text = _write(db_url, version.id, "card", tmp_path / "README.md").read_text()
    assert f"| Rows | {version.row_count} |" in text
    assert version.content_hash in text
    assert "- edited: 4" in text and "- no_change_needed: 1" in text and "- unfixable: 1" in text
    assert "| Reviewed rows | 3 |" in text
    assert json.dumps(version.filter, indent=2, sort_keys=True) in text
    assert "`0` keep, `1` insert, `2` delete, `3` replace" in text


def test_card_escapes_names_and_names_a_local_tokenizer_by_its_folder(db_url, version, tmp_path):
    with session_scope(engine_for(db_url)) as session:
        row = session.get(type(version), version.id)
        row.name = "<img src=x onerror=alert(1)> **v1** | x"
    model = str(Path(__file__).resolve().parents[2] / "var/models/SmolLM2-135M-Instruct")
    text = _write(db_url, version.id, "card", tmp_path / "README.md", tokenizer=model).read_text()
    front_matter, body = text.split("\n---\n", 1)
    assert 'pretty_name: "<img src=x onerror=alert(1)> **v1** | x"' in front_matter  # YAML data, quoted
    assert "<img" not in body and "# &lt;img src=x onerror=alert(1)&gt; \\*\\*v1\\*\\* \\| x" in body
    tokenizer_row = next(line for line in text.splitlines() if line.startswith("| Tokenizer of the labels"))
    assert "SmolLM2-135M-Instruct (a local copy)" in tokenizer_row and "/" not in tokenizer_row
    assert f"vocabulary hash {load_tokenizer(model).vocab_hash[:16]}" in tokenizer_row
    assert export.tokenizer_label("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def _train_tiny_tokenizer(folder: Path) -> str:
    texts = [text for pair in SAMPLE_PAIRS for text in pair] * 3
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]"]))
    folder.mkdir()
    tokenizer.save(str(folder / "tokenizer.json"))
    return str(folder)


def test_export_time_tokenizer_recomputes_labels(db_url, version, tmp_path):
    other = _train_tiny_tokenizer(tmp_path / "tiny-tokenizer")
    tok = load_tokenizer(other)
    for fmt in ("pairs-jsonl", "pairs-parquet"):
        loaded = _load(_write(db_url, version.id, fmt, tmp_path / f"relabelled.{fmt}", tokenizer=other), fmt)
        for row in loaded:
            labels = row["token_labels"]
            assert labels["tokenizer"] == other and labels["tokenizer_hash"] == tok.vocab_hash
            assert labels["original_ids"] == tok.encode(row["original"])[0]
            assert labels["edited_ids"] == tok.encode(row["edited"])[0]
            assert len(labels["edited_labels"]) == len(labels["edited_ids"])
    # The frozen snapshot itself is untouched by an export with another tokenizer.
    assert all(r["token_labels"]["tokenizer_hash"] != tok.vocab_hash for r in _db_rows(db_url, version.id))


@pytest.mark.parametrize("relabel", [False, True])
def test_parquet_is_written_in_row_groups_as_it_streams(db_url, version, tmp_path, monkeypatch, relabel):
    # Row groups close at PARQUET_GROUP_BYTES of Arrow data: one byte makes every read range (fast path) or
    # Arrow batch (relabelled path) a row group of its own.
    monkeypatch.setattr(export, "PARQUET_GROUP_BYTES", 1)
    monkeypatch.setattr(export, "PARQUET_FETCH_ROWS", 2)
    monkeypatch.setattr(export, "ARROW_BATCH_ROWS", 2)
    tokenizer = _train_tiny_tokenizer(tmp_path / "tiny-tokenizer") if relabel else None
    pieces = list(
        stream_export(lambda: session_scope(engine_for(db_url)), version.id, "pairs-parquet", tokenizer=tokenizer)
    )
    assert len(pieces) == 4  # one piece per row group of two, then the footer
    path = tmp_path / "grouped.parquet"
    path.write_bytes(b"".join(pieces))
    parquet = pq.ParquetFile(path)
    assert parquet.metadata.num_row_groups == 3
    assert parquet.schema_arrow == export.PAIRS_SCHEMA
    assert [g for g in range(3) if parquet.metadata.row_group(g).num_rows != 2] == []


def test_parquet_fast_path_matches_the_parsed_rows(db_url, version, tmp_path):
    """The Parquet file (rows parsed by Arrow's JSON reader) holds exactly the frozen rows as orjson reads them."""
    table = pq.read_table(_write(db_url, version.id, "pairs-parquet", tmp_path / "pairs.parquet"))
    rows = _db_rows(db_url, version.id)
    assert table.schema == export.PAIRS_SCHEMA
    assert table.equals(pa.Table.from_batches([export.pairs_record_batch(rows)]))


def test_unknown_format_version_or_tokenizer_is_reported(db_url, version, tmp_path):
    factory = lambda: session_scope(engine_for(db_url))  # noqa: E731
    with pytest.raises(ExportError, match="unknown export format 'csv'; choose one of: pairs-jsonl"):
        open_export(factory, version.id, "csv")
    with pytest.raises(ExportError, match="dataset version 999 does not exist"):
        open_export(factory, 999, "pairs-jsonl")
    with pytest.raises(ExportError, match="cannot be loaded"):
        open_export(factory, version.id, "pairs-jsonl", tokenizer=str(tmp_path / "missing"))
    found, stream = open_export(factory, version.id, "card")
    assert found.id == version.id and b"# everything" in b"".join(stream)


def test_pairs_jsonl_file_hashes_to_the_version_content_hash(db_url, version, tmp_path):
    path = _write(db_url, version.id, "pairs-jsonl", tmp_path / "pairs.jsonl")
    lines = path.read_bytes().splitlines()
    assert version.hash_format == 2 and len(lines) == version.row_count
    outer = hashlib.sha256(b"".join(hashlib.sha256(line).digest() for line in lines))  # as docs/datasets.md says
    assert outer.hexdigest() == version.content_hash
