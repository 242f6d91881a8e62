"""`redline export` and `redline webhooks` through click, against the real database."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from factories import make_corpus

from app.cli import main
from app.db import session_scope


@pytest.fixture
def corpus(settings_env):
    with session_scope() as session:
        return make_corpus(session)


def _run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_create_list_download_and_all(corpus, tmp_path):
    project = str(corpus["project"].id)
    created = _run("export", "create", "--name", "cli", "--project", project, "--review-status", "accepted",
                   "--review-status", "pending", "--as", corpus["admin"].username)
    assert created.exit_code == 0, created.output
    assert created.output.splitlines()[-1].startswith("dataset version 1: 4 rows, sha256 ")  # after the progress
    assert "cli" in _run("export", "list").output

    out = tmp_path / "pairs.jsonl"
    done = _run("export", "download", "1", "--format", "pairs-jsonl", "-o", str(out))
    assert done.exit_code == 0 and f"wrote {out}" in done.output
    assert len(out.read_text().splitlines()) == 4
    stdout = _run("export", "download", "1", "-f", "sft-jsonl", "-o", "-")
    sft = [json.loads(line) for line in stdout.output.splitlines()]
    assert len(sft) == 4 and all(row["completion"] for row in sft)

    folder = tmp_path / "all"
    assert _run("export", "all", "1", "--dir", str(folder)).exit_code == 0
    names = sorted(p.name for p in folder.iterdir())
    assert "README.md" in names and "dataset-1-pairs-parquet.parquet" in names and len(names) == 7
    assert pq.read_table(folder / "dataset-1-pairs-parquet.parquet").num_rows == 4
    assert not [p for p in folder.iterdir() if p.name.endswith(".part")]


def test_bad_input_is_reported_and_writes_nothing(corpus, tmp_path):
    bad = _run("export", "create", "--name", "x", "--min-edit-rate", "0.9", "--max-edit-rate", "0.1")
    assert bad.exit_code == 2 and "min_edit_rate 0.9 is above max_edit_rate 0.1" in bad.output
    not_json = _run("export", "create", "--name", "x", "--filter", "{nope")
    assert not_json.exit_code == 2 and "not JSON" in not_json.output
    unknown_key = _run("export", "create", "--name", "x", "--filter", '{"colour": "red"}')
    assert unknown_key.exit_code == 2 and "filter.colour: Extra inputs are not permitted" in unknown_key.output
    empty = _run("export", "create", "--name", "x", "--outcome", "unfixable")
    assert empty.exit_code == 1 and "selects no edits" in empty.output
    missing = _run("export", "download", "7", "-o", str(tmp_path / "x.jsonl"))
    assert missing.exit_code == 1 and "dataset version 7 does not exist" in missing.output
    assert not list(tmp_path.glob("x.jsonl*"))


def test_webhook_commands(corpus):
    added = _run("webhooks", "add", "https://example.org/h", "--event", "item.completed")
    assert added.exit_code == 0 and "signing secret (shown once): " in added.output
    assert "https://example.org/h" in _run("webhooks", "list").output
    refused = _run("webhooks", "add", "file:///etc/passwd", "--event", "item.completed")
    assert refused.exit_code == 1 and "http(s)" in refused.output
    assert _run("webhooks", "deliver").output.strip() == "delivered 0"
