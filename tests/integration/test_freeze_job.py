"""Freezing dataset versions as jobs (app/services/freeze.py): the worker runs it, progress is reported, the rows
Postgres builds are byte for byte those of the Python builder, a failure leaves no rows, hashes verify."""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from factories import make_corpus, make_edit, make_item, make_project, make_review, make_user
from sqlalchemy import delete, func, select, text, update

from app.cli import main as cli
from app.db import engine_for, session_scope
from app.models import (
    AnnotatorKind,
    DatasetRow,
    DatasetState,
    DatasetVersion,
    Edit,
    Job,
    JobStatus,
    ModelEditor,
    Outcome,
    Review,
    Role,
    Verdict,
    WebhookDelivery,
)
from app.services import export, freeze
from app.services.datasets import DatasetError, DatasetFilter, iter_rows, ready_version, selection
from app.settings import Settings, get_settings
from app.worker.loop import Worker

on_postgres = [pytest.mark.postgres, pytest.mark.parametrize("db_url", ["postgres"], indirect=True)]
EVERYTHING = DatasetFilter(outcomes=["edited", "no_change_needed", "unfixable"],
                           review_statuses=["accepted", "pending", "rejected"])


def _stored(url: str, version_id: int) -> list[bytes]:
    with session_scope(engine_for(url)) as session:
        return list(freeze.stored_lines(session, version_id))


def _version(url: str, version_id: int) -> DatasetVersion:
    with session_scope(engine_for(url)) as session:
        return session.get(DatasetVersion, version_id)


def _request(url: str, flt: DatasetFilter = EVERYTHING, name: str = "v") -> int:
    with session_scope(engine_for(url)) as session:
        return freeze.request_version(session, flt, name, None).id


def _tricky_corpus(session) -> dict:
    """make_corpus plus rows that test the SQL text: quotes, backslashes, control characters, right-to-left text,
    emoji, a model editor's edit with floats Postgres and Python write differently, microseconds, a review's
    fix with its own layers and comment."""
    corpus = make_corpus(session)
    project, reviewer = corpus["project"], corpus["reviewer"]
    model = make_user(session, Role.ANNOTATOR, kind=AnnotatorKind.MODEL)
    editor = ModelEditor(name='smol "v2"', base_url="http://127.0.0.1:9/v1", model="SmolLM2", api_key_encrypted="",
                         temperature=0.0, max_tokens=64, timeout_s=5, max_concurrency=1, requests_per_minute=0,
                         prompt_kind="one_stage", custom_template="", user_id=model.id, created_at=datetime.now(UTC))
    session.add(editor)
    session.flush()
    texts = [
        ('Quote "this" \\ and \t tab', 'He said "no" \\ then\nleft.\x1f', 'He said "yes" \\ then\nleft.\x1f'),
        ("שאלה בעברית?", "התשובה היא לא נכונה.", "התשובה היא נכונה."),
        ("سؤال؟", "الجواب خاطئ.", "الجواب صحيح."),
        ("Emoji 👩‍👩‍👧 test", "I love 🍕 a lot", "I love 🍣 a lot"),
    ]
    stamps = [datetime(2026, 2, 1, 12, 0, 0, 123456, tzinfo=UTC), datetime(2026, 2, 2, tzinfo=UTC),
              datetime(2026, 2, 3, 1, 2, 3, 500000, tzinfo=UTC), datetime(2026, 2, 4, 23, 59, 59, tzinfo=UTC)]
    rates = [1.0, 1e-05, 0.1 + 0.2, None]
    for (prompt, original, edited), stamp, rate in zip(texts, stamps, rates, strict=True):
        item = make_item(session, project, prompt, original)
        edit = make_edit(session, item, model, edited, created_at=stamp)
        edit.editor_id, edit.editor_model, edit.prompt_version = editor.id, "SmolLM2-135M", "cf917141c786"
        edit.suggestion_used, edit.human_vs_suggestion_rate = rate is not None, rate
    session.flush()
    hebrew = session.scalars(select(Edit).where(Edit.edited_text == texts[1][2])).one()
    make_review(session, hebrew, reviewer, Verdict.FIX_AND_ACCEPT, fixed="התשובה, כמובן, נכונה.",
                comment='fixed "it" \\ twice')
    return corpus


def postgres_only(test):
    for mark in reversed(on_postgres):
        test = mark(test)
    return test


@pytest.fixture
def tricky(db_url, settings_env):
    with session_scope(engine_for(db_url)) as session:
        return _tricky_corpus(session)


@postgres_only
@pytest.mark.parametrize("flt", [
    EVERYTHING,
    DatasetFilter(),
    DatasetFilter(review_statuses=["accepted", "pending"], min_edit_rate=0.01, max_edit_rate=0.5),
    DatasetFilter(outcomes=["edited"], review_statuses=["pending", "accepted"], annotator_kinds=["model"],
                  suggestion_used=True),
    DatasetFilter(outcomes=["edited", "no_change_needed"], review_statuses=["accepted", "rejected", "pending"],
                  verdicts=["fix_and_accept", "reject"]),
    DatasetFilter(review_statuses=["pending"], created_after=datetime(2026, 1, 3, tzinfo=UTC),
                  created_before=datetime(2026, 2, 3, 1, 2, 3, 500000, tzinfo=UTC), exclude_not_minimal=True),
], ids=["everything", "default", "rates", "model-suggestions", "verdicts", "dates"])
def test_postgres_builds_the_rows_of_the_python_builder_byte_for_byte(db_url, tricky, flt):
    """The same filter, frozen by SQL (serially and on three connections) and by the Python builder (SQLite's),
    selects the same edits and writes the same bytes."""
    with session_scope(engine_for(db_url)) as session:
        expected = [text for _, text in iter_rows(session, selection(flt))]
        ids = [edit_id for edit_id, _ in iter_rows(session, selection(flt))]
    assert expected, "every filter here selects something"
    with session_scope(engine_for(db_url)) as session:
        serial = freeze.create_version(session, flt, "serial", None, span_ids=3)
    assert _stored(db_url, serial.id) == expected
    assert serial.content_hash == freeze.content_hash(expected, 2)
    with session_scope(engine_for(db_url)) as session:
        frozen_ids = session.scalars(select(DatasetRow.edit_id).where(DatasetRow.dataset_version_id == serial.id)
                                     .order_by(DatasetRow.seq)).all()
    assert frozen_ids == ids
    parallel = _request(db_url, flt)
    freeze._freeze_in_parallel(db_url, parallel, flt, 2, 3, freeze._Progress(None), threading.Event())
    assert _stored(db_url, parallel) == expected
    assert _version(db_url, parallel).content_hash == serial.content_hash
    for line in expected:
        json.loads(line)  # each row is one valid JSON document


@postgres_only
def test_rows_keep_texts_floats_times_and_review_layers_exactly(db_url, tricky):
    with session_scope(engine_for(db_url)) as session:
        version = freeze.create_version(session, EVERYTHING, "tricky", None)
        reviews = {r.edit_id: r for r in session.scalars(select(Review))}
        edits = {f"edit-{e.id}": e for e in session.scalars(select(Edit))}
    rows = [json.loads(line) for line in _stored(db_url, version.id)]
    by_id = {row["id"]: row for row in rows}
    model_rows = [row for row in rows if row["annotator_kind"] == "model"]
    assert [row["human_vs_suggestion_rate"] for row in model_rows] == [1.0, 1e-05, 0.1 + 0.2, None]
    assert [row["created_at"] for row in model_rows] == [
        "2026-02-01T12:00:00.123456+00:00", "2026-02-02T00:00:00+00:00", "2026-02-03T01:02:03.500000+00:00",
        "2026-02-04T23:59:59+00:00"]
    assert model_rows[0]["edited"] == 'He said "yes" \\ then\nleft.\x1f' and model_rows[0]["editor"] == 'smol "v2"'
    fixed = next(row for row in model_rows if row["review"])
    review = reviews[edits[fixed["id"]].id]
    assert fixed["edited"] == review.fixed_text and fixed["token_labels"] == review.token_labels
    assert fixed["review"]["annotator_edited"] == edits[fixed["id"]].edited_text
    assert fixed["review"]["comment"] == 'fixed "it" \\ twice' and fixed["review"]["verdict"] == "fix_and_accept"
    plain = next(row for row in rows if row["review"] is None)
    assert plain["token_labels"] == edits[plain["id"]].token_labels and plain["stats"] == edits[plain["id"]].stats
    assert len(by_id) == len(rows) == version.row_count
    assert version.summary == {"outcomes": {"edited": 9, "no_change_needed": 1, "unfixable": 1}, "reviewed": 5}


@postgres_only
def test_the_worker_freezes_a_requested_version_with_progress_and_its_log(db_url, settings_env, tmp_path,
                                                                             monkeypatch):
    monkeypatch.setenv("REDLINE_FREEZE_CONNECTIONS", "2")
    monkeypatch.setenv("REDLINE_FREEZE_SPAN_IDS", "3")
    with session_scope(engine_for(db_url)) as session:
        corpus = make_corpus(session)
        expected = [text for _, text in iter_rows(session, selection(EVERYTHING))]
        delivery_count = session.scalar(select(func.count()).select_from(WebhookDelivery))
    version_id = _request(db_url)
    version = _version(db_url, version_id)
    assert (version.state, version.row_count, version.content_hash) == (DatasetState.FREEZING, 0, "")
    settings = Settings(data_dir=tmp_path / "data", worker_heartbeat_s=0.1, worker_poll_s=0.05)
    assert Worker(engine_for(db_url), settings).run_once()
    with session_scope(engine_for(db_url)) as session:
        job = session.get(Job, version.job_id)
        log = freeze.jobs.full_log(session, job.id)
    assert (job.kind, job.status, job.progress) == ("freeze", JobStatus.SUCCEEDED, 1.0), log
    assert f"dataset version {version_id} is ready: {len(expected)} rows" in log
    assert "ranges of edit ids" in log and "written" in log
    version = _version(db_url, version_id)
    assert version.state == DatasetState.READY and _stored(db_url, version_id) == expected
    assert version.content_hash == freeze.content_hash(expected, 2) and version.created_by_id is None
    with session_scope(engine_for(db_url)) as session:
        assert session.scalar(select(func.count()).select_from(WebhookDelivery)) == delivery_count  # no hooks here
    assert corpus["admin"].id  # the corpus is the one frozen


@postgres_only
@pytest.mark.parametrize("connections", [1, 3])
def test_a_failure_midway_leaves_no_rows_and_a_failed_version(db_url, settings_env, monkeypatch, connections):
    monkeypatch.setenv("REDLINE_FREEZE_CONNECTIONS", str(connections))
    monkeypatch.setenv("REDLINE_FREEZE_SPAN_IDS", "2")
    get_settings.cache_clear()
    with session_scope(engine_for(db_url)) as session:
        make_corpus(session)
    version_id = _request(db_url)
    seen: list[float] = []

    def crash_after_some_ranges(progress: float, line: str) -> None:
        seen.append(progress)
        if line.startswith("written") and len([p for p in seen if p > 0.1]) == 2:
            with session_scope(engine_for(db_url)) as session:  # some ranges are in the table by now
                assert session.scalar(select(func.count()).select_from(DatasetRow)) > 0 or connections == 1
            raise OSError("disk full (simulated)")

    with pytest.raises(OSError, match="disk full"):
        freeze.freeze_requested(version_id, crash_after_some_ranges)
    version = _version(db_url, version_id)
    assert (version.state, version.error, version.row_count) == (DatasetState.FAILED, "disk full (simulated)", 0)
    with session_scope(engine_for(db_url)) as session:
        assert session.scalar(select(func.count()).select_from(DatasetRow)) == 0
    assert seen == sorted(seen)  # progress only grows


def test_a_stopped_freeze_is_cancelled_and_a_dead_ones_rows_are_swept(db_url, settings_env):
    with session_scope(engine_for(db_url)) as session:
        make_corpus(session)
    version_id = _request(db_url)
    stop = threading.Event()
    stop.set()
    with pytest.raises(freeze.FreezeStopped):
        freeze.freeze_requested(version_id, stop=stop)
    assert (_version(db_url, version_id).state, _version(db_url, version_id).error) == (DatasetState.FAILED,
                                                                                         "cancelled")

    # A freeze whose process was killed: rows written, version still freezing, its job reaped as failed.
    dead = _request(db_url)
    with session_scope(engine_for(db_url)) as session:
        session.add(DatasetRow(dataset_version_id=dead, seq=0, edit_id=None, data="{}"))
        job_id = session.get(DatasetVersion, dead).job_id
        session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.FAILED, error="killed\n..."))
    with session_scope(engine_for(db_url)) as session:
        assert freeze.discard_abandoned(session) == [dead]
        assert freeze.discard_abandoned(session) == []
    version = _version(db_url, dead)
    assert version.state == DatasetState.FAILED and "ended (failed) before the version was complete: killed" in (
        version.error)
    assert _stored(db_url, dead) == []


def test_a_filter_selecting_nothing_fails_with_the_reason_and_writes_nothing(db_url, settings_env):
    with session_scope(engine_for(db_url)) as session:
        make_corpus(session)
    version_id = _request(db_url, DatasetFilter(outcomes=["unfixable"], max_edit_rate=0.0))
    with pytest.raises(DatasetError, match="selects no edits"):
        freeze.freeze_requested(version_id)
    assert _version(db_url, version_id).state == DatasetState.FAILED and _stored(db_url, version_id) == []


def test_the_content_hash_verifies_from_stored_rows_and_a_download_old_and_new(db_url, settings_env, tmp_path):
    with session_scope(engine_for(db_url)) as session:
        make_corpus(session)
        version = freeze.create_version(session, EVERYTHING, "v2", None)
    runner = CliRunner()
    ok = runner.invoke(cli, ["export", "verify", str(version.id)])
    assert ok.exit_code == 0 and f"content hash {version.content_hash} verified" in ok.output
    download = tmp_path / "pairs.jsonl"
    assert runner.invoke(cli, ["export", "download", str(version.id), "-o", str(download)]).exit_code == 0
    assert runner.invoke(cli, ["export", "verify", str(version.id), "--file", str(download)]).exit_code == 0
    lines = download.read_bytes().splitlines()
    download.write_bytes(b"\n".join([lines[0].replace(b"edit-", b"edit-9"), *lines[1:]]) + b"\n")
    tampered = runner.invoke(cli, ["export", "verify", str(version.id), "--file", str(download)])
    assert tampered.exit_code == 1 and "differs from the version's" in tampered.output

    # A version frozen before hash format 2: the SHA-256 of its pairs-jsonl file, still verified as such.
    with session_scope(engine_for(db_url)) as session:
        old = DatasetVersion(name="v1", filter={}, state=DatasetState.READY, row_count=len(lines), hash_format=1,
                             content_hash=hashlib.sha256(b"".join(line + b"\n" for line in lines)).hexdigest())
        session.add(old)
        session.flush()
        session.add_all(DatasetRow(dataset_version_id=old.id, seq=n, data=line.decode())
                        for n, line in enumerate(lines))
    assert runner.invoke(cli, ["export", "verify", str(old.id)]).exit_code == 0
    with session_scope(engine_for(db_url)) as session:
        session.execute(delete(DatasetRow).where(DatasetRow.dataset_version_id == old.id, DatasetRow.seq == 0))
    assert runner.invoke(cli, ["export", "verify", str(old.id)]).exit_code == 1


def test_exports_and_training_take_ready_versions_only(db_url, settings_env):
    with session_scope(engine_for(db_url)) as session:
        make_corpus(session)
    version_id = _request(db_url)

    with pytest.raises(export.VersionNotReady, match="still being frozen"):
        export.open_export(lambda: session_scope(engine_for(db_url)), version_id, "pairs-jsonl")
    with session_scope(engine_for(db_url)) as session:
        assert ready_version(session, version_id) is None
    freeze.freeze_requested(version_id)
    with session_scope(engine_for(db_url)) as session:
        assert ready_version(session, version_id).row_count == _version(db_url, version_id).row_count


def test_the_cards_counts_are_made_while_freezing(db_url, settings_env):
    with session_scope(engine_for(db_url)) as session:
        corpus = make_corpus(session)
        project = make_project(session)
        item = make_item(session, project, "p", "an answer")
        make_edit(session, item, corpus["annotators"][0], "an answer", outcome=Outcome.NO_CHANGE_NEEDED,
                  created_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=30))
        version = freeze.create_version(session, EVERYTHING, "counted", None)
    assert version.summary == {"outcomes": {"edited": 5, "no_change_needed": 2, "unfixable": 1}, "reviewed": 4}
    with session_scope(engine_for(db_url)) as session:
        card = export.card_text(session, session.get(DatasetVersion, version.id), None)
        assert "- edited: 5\n- no_change_needed: 2\n- unfixable: 1" in card and "| Reviewed rows | 4 |" in card


def test_versions_frozen_before_stay_ready_with_their_hash_and_get_their_counts(db_url, settings_env):
    """Migration 0017 on a database holding a version frozen the old way (canonical rows, hash of the file)."""
    from app import migrate

    rows = [{"id": "edit-1", "outcome": "edited", "review": None, "prompt": "p"},
            {"id": "edit-2", "outcome": "no_change_needed", "review": {"verdict": "accept"}, "prompt": "é"}]
    lines = [json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() for row in rows]
    digest = hashlib.sha256(b"".join(line + b"\n" for line in lines)).hexdigest()
    migrate.downgrade(db_url, "0016")
    engine = engine_for(db_url)
    with engine.begin() as conn:
        version_id = conn.execute(text(
            "INSERT INTO dataset_versions (name, filter, row_count, content_hash, created_at) "
            "VALUES ('old', '{}', 2, :h, CURRENT_TIMESTAMP) RETURNING id"), {"h": digest}).scalar_one()
        for seq, line in enumerate(lines):
            conn.execute(text("INSERT INTO dataset_rows (dataset_version_id, seq, data) VALUES (:v, :s, :d)"),
                         {"v": version_id, "s": seq, "d": line.decode()})
    engine.dispose()
    engine_for.cache_clear()
    migrate.upgrade(db_url)
    version = _version(db_url, version_id)
    assert (version.state, version.hash_format, version.content_hash) == (DatasetState.READY, 1, digest)
    assert version.summary == {"outcomes": {"edited": 1, "no_change_needed": 1}, "reviewed": 1}
    assert _stored(db_url, version_id) == lines
    result = CliRunner().invoke(cli, ["export", "verify", str(version_id)])
    assert result.exit_code == 0, result.output
    exported = b"".join(export.stream_export(lambda: session_scope(engine_for(db_url)), version_id, "pairs-jsonl"))
    assert hashlib.sha256(exported).hexdigest() == digest  # still the file's own hash
