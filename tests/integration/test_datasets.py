"""Dataset versions on SQLite and Postgres: filters, frozen rows, content hash, errors, side effects."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
from factories import make_corpus, make_edit, make_item, make_review
from pydantic import ValidationError
from sqlalchemy import select

from app.db import engine_for, session_scope
from app.models import AuditEvent, DatasetRow, DatasetVersion, Outcome, Verdict, Webhook, WebhookDelivery
from app.services.datasets import DatasetError, DatasetFilter, matching_count, pseudonym
from app.services.freeze import create_version
from labels import analyse_edit, load_tokenizer


@pytest.fixture
def corpus(db_url: str, settings_env):
    with session_scope(engine_for(db_url)) as session:
        made = make_corpus(session)
    return made


def _rows(session, version_id: int) -> list[dict]:
    return [json.loads(text) for text in session.scalars(
        select(DatasetRow.data).where(DatasetRow.dataset_version_id == version_id).order_by(DatasetRow.seq))]


def _version(db_url: str, flt: DatasetFilter, name: str = "v"):
    with session_scope(engine_for(db_url)) as session:
        version = create_version(session, flt, name, actor=None)
        rows = _rows(session, version.id)
    return version, rows


def test_default_filter_exports_accepted_edits_with_reviewer_fix_layered(db_url, corpus):
    version, rows = _version(db_url, DatasetFilter(project_id=corpus["project"].id))
    edits = corpus["edits"]
    assert [r["id"] for r in rows] == [f"edit-{edits[0].id}", f"edit-{edits[1].id}"]
    assert version.row_count == 2 and len(version.content_hash) == 64

    accepted, fixed = rows
    assert accepted["edited"] == edits[0].edited_text
    assert accepted["token_labels"] == edits[0].token_labels
    assert accepted["review"]["verdict"] == "accept" and accepted["review"]["annotator_edited"] is None

    fix_text = corpus["reviews"]["fix"].fixed_text
    assert fixed["edited"] == fix_text
    assert fixed["review"]["annotator_edited"] == edits[1].edited_text
    expected = analyse_edit(fixed["original"], fix_text, load_tokenizer(corpus["project"].tokenizer)).to_record()
    assert fixed["token_labels"] == expected["token_labels"]
    assert fixed["stats"] == expected["stats"]

    annotator = corpus["annotators"][0]
    assert accepted["annotator_id"] == pseudonym("ann", annotator.id)
    assert accepted["annotator_id"] != f"ann_{annotator.id}" and annotator.username not in str(accepted)
    assert set(accepted) == {
        "id", "item_id", "project", "prompt", "original", "edited", "outcome", "token_labels", "char_diff",
        "stats", "annotator_id", "review", "created_at", "annotator_kind", "editor", "editor_model", "prompt_version",
        "suggestion_used", "human_vs_suggestion_rate",
    }
    assert (accepted["annotator_kind"], accepted["editor"], accepted["suggestion_used"]) == ("human", None, False)


def test_pending_and_all_outcomes_can_be_included_but_skips_never(db_url, corpus):
    flt = DatasetFilter(
        outcomes=["edited", "no_change_needed", "unfixable"], review_statuses=["accepted", "pending"]
    )
    _, rows = _version(db_url, flt)
    ids = {r["id"] for r in rows}
    edits = corpus["edits"]
    expected = {edits[i].id for i in (0, 1, 2, 4, 5)} | {corpus["unfixable"].id}
    assert ids == {f"edit-{i}" for i in expected}
    assert f"edit-{corpus['skipped'].id}" not in ids
    assert {r["outcome"] for r in rows} == {"edited", "no_change_needed", "unfixable"}
    with pytest.raises(ValidationError, match="skipped"):
        DatasetFilter(outcomes=["skipped"])


def test_same_filter_same_hash_and_snapshot_survives_later_changes(db_url, corpus):
    flt = DatasetFilter(review_statuses=["accepted", "pending"])
    first, first_rows = _version(db_url, flt, "first")
    second, _ = _version(db_url, flt, "second")
    assert first.content_hash == second.content_hash and first.id != second.id

    with session_scope(engine_for(db_url)) as session:
        edit = session.get(type(corpus["edits"][4]), corpus["edits"][4].id)
        make_review(session, edit, corpus["reviewer"], Verdict.REJECT)
        item = make_item(session, corpus["project"], "New prompt", "A new answer that is wrong.")
        make_edit(session, item, corpus["annotators"][1], "A new answer that is right.")

    third, _ = _version(db_url, flt, "third")
    assert third.content_hash != first.content_hash
    with session_scope(engine_for(db_url)) as session:
        again = _rows(session, first.id)
        assert again == first_rows
        assert session.get(DatasetVersion, first.id).row_count == len(first_rows)


def test_filters_by_rate_annotator_date_and_verdict(db_url, corpus):
    everything = {"review_statuses": ["accepted", "pending", "rejected"],
                  "outcomes": ["edited", "no_change_needed"]}
    edits = corpus["edits"]
    with session_scope(engine_for(db_url)) as session:
        def ids(**extra):
            flt = DatasetFilter(**everything, **extra)
            return {r["id"] for r in _version(db_url, flt)[1]} if matching_count(session, flt) else set()

        assert ids(max_edit_rate=0.0) == {f"edit-{edits[2].id}"}
        assert ids(min_edit_rate=0.01) == {f"edit-{e.id}" for e in edits if e.edit_rate >= 0.01}
        first = corpus["annotators"][0]
        assert ids(annotator_ids=[first.id]) == {f"edit-{e.id}" for e in edits if e.annotator_id == first.id}
        start = datetime(2026, 1, 1, tzinfo=UTC)
        window = ids(created_after=start + timedelta(days=1), created_before=start + timedelta(days=3))
        assert window == {f"edit-{edits[1].id}", f"edit-{edits[2].id}"}
        assert ids(verdicts=["fix_and_accept"]) == {f"edit-{edits[1].id}"}
        assert ids(verdicts=["reject"]) == {f"edit-{edits[3].id}"}
        assert ids(exclude_not_minimal=True) == {f"edit-{e.id}" for e in edits if not e.not_minimal}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"min_edit_rate": 0.5, "max_edit_rate": 0.1}, "min_edit_rate 0.5 is above max_edit_rate"),
        ({"outcomes": ["great"]}, "outcomes"),
        ({"review_statuses": []}, "review_statuses"),
        ({"project": 3}, "Extra inputs are not permitted"),
        ({"created_after": "2026-02-01", "created_before": "2026-01-01"}, "created_after must be before"),
        ({"min_edit_rate": -1}, "greater than or equal to 0"),
    ],
)
def test_malformed_filters_are_rejected_with_the_reason(raw, message):
    with pytest.raises(ValidationError, match=message):
        DatasetFilter.model_validate(raw)


def test_unknown_targets_and_empty_selection_are_errors_and_write_nothing(db_url, corpus):
    with pytest.raises(DatasetError, match="project 999 does not exist"):
        _version(db_url, DatasetFilter(project_id=999))
    with pytest.raises(DatasetError, match=r"no user with id \[4242\]"):
        _version(db_url, DatasetFilter(annotator_ids=[4242]))
    with pytest.raises(DatasetError, match="selects no edits"):
        _version(db_url, DatasetFilter(max_edit_rate=0.0, outcomes=["unfixable"]))
    with pytest.raises(DatasetError, match="name"):
        _version(db_url, DatasetFilter(), name="  ")
    with session_scope(engine_for(db_url)) as session:
        assert session.scalars(select(DatasetVersion)).all() == []
        assert session.scalars(select(DatasetRow)).all() == []


def test_version_creation_is_audited_and_announced_by_webhook(db_url, corpus):
    with session_scope(engine_for(db_url)) as session:
        session.add(Webhook(url="http://127.0.0.1:9/hook", secret="s", events=["dataset_version.created"]))
        session.add(Webhook(url="http://127.0.0.1:9/other", secret="s", events=["edit.submitted"]))
    version, _ = _version(db_url, DatasetFilter(), "announced")
    with session_scope(engine_for(db_url)) as session:
        deliveries = session.scalars(select(WebhookDelivery)).all()
        assert [(d.event, d.payload["id"], d.payload["row_count"]) for d in deliveries] == [
            ("dataset_version.created", version.id, 2)
        ]
        audit = session.scalars(select(AuditEvent).where(AuditEvent.action == "dataset_version.create")).one()
        assert audit.object_id == str(version.id) and audit.after["content_hash"] == version.content_hash


def test_large_version_is_built_in_chunks_with_rows_in_edit_order(db_url, settings_env):
    with session_scope(engine_for(db_url)) as session:
        from factories import make_project, make_user

        annotator = make_user(session)
        project = make_project(session)
        for n in range(25):
            item = make_item(session, project, f"prompt {n}", f"answer number {n} is wrong")
            make_edit(session, item, annotator, f"answer number {n} is right", outcome=Outcome.EDITED)
    with session_scope(engine_for(db_url)) as session:
        version = create_version(session, DatasetFilter(review_statuses=["pending"]), "chunked", None,
                                 span_ids=4)
        rows = session.execute(
            select(DatasetRow.seq, DatasetRow.edit_id).where(DatasetRow.dataset_version_id == version.id)
            .order_by(DatasetRow.seq)
        ).all()
    assert version.row_count == 25
    assert [seq for seq, _ in rows] == list(range(25))
    assert [edit_id for _, edit_id in rows] == sorted(edit_id for _, edit_id in rows)


@pytest.mark.postgres
def test_concurrent_freezes_of_the_same_filter_agree(pg_url, settings_env):
    with session_scope(engine_for(pg_url)) as session:
        make_corpus(session)
    flt = DatasetFilter(review_statuses=["accepted", "pending"])
    results: list[tuple[int, int, str]] = []

    def freeze(name: str) -> None:
        with session_scope(engine_for(pg_url)) as session:
            version = create_version(session, flt, name, None, span_ids=2)
            results.append((version.id, version.row_count, version.content_hash))

    threads = [threading.Thread(target=freeze, args=(f"v{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and len({(count, digest) for _, count, digest in results}) == 1
    with session_scope(engine_for(pg_url)) as session:
        for version_id, count, _ in results:
            seqs = session.scalars(select(DatasetRow.seq).where(DatasetRow.dataset_version_id == version_id)).all()
            assert sorted(seqs) == list(range(count))
