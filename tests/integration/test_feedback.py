"""Annotator feedback: My work lists submissions with verdicts and comments; revising an unreviewed or
sent-back edit; a project that sends rejected edits back to their annotator; giving one back."""

from __future__ import annotations

import pytest
from factories import next_task, submit
from sqlalchemy import select

from app.db import session_scope
from app.errors import Conflict
from app.models import AuditEvent, Edit, Item, ItemStatus, Outcome, ReviewStatus, Verdict
from app.services import feedback, review


def _submitted(make_user, make_project, add_items, **project_fields):
    ann, rev = make_user("ann"), make_user("rev", "reviewer")
    project = make_project(members=[ann, rev], **project_fields)
    add_items(project, [("Prompt", "The broken answr.")])
    with session_scope() as session:
        lease = next_task(session, project, ann).lease
    with session_scope() as session:
        edit = submit(session, lease.id, ann, Outcome.EDITED, "The broken answer.")
    return ann, rev, edit


def test_revising_an_unreviewed_edit_recomputes_it_until_a_verdict_lands(make_user, make_project, add_items):
    ann, rev, edit = _submitted(make_user, make_project, add_items)
    with session_scope() as session:
        feedback.revise(session, ann, edit.id, "The fixed answer.")
    with session_scope() as session:
        stored = session.get(Edit, edit.id)
        assert stored.edited_text == "The fixed answer." and stored.review_status == ReviewStatus.PENDING
        assert stored.stats["token_edit_distance"] >= 1 and stored.version == 2
        assert session.scalars(select(AuditEvent.action).where(AuditEvent.action == "edit.revise")).one()
    with session_scope() as session:
        review.decide(session, rev, edit.id, Verdict.ACCEPT)
    with pytest.raises(Conflict), session_scope() as session:
        feedback.revise(session, ann, edit.id, "Too late.")
    with pytest.raises(Conflict), session_scope() as session:  # a stale version is refused too
        feedback.revise(session, ann, edit.id, "x", version=1)


def test_a_project_can_send_rejected_edits_back_to_their_annotator(make_user, make_project, add_items):
    ann, rev, edit = _submitted(make_user, make_project, add_items, return_rejected=True)
    with session_scope() as session:
        review.decide(session, rev, edit.id, Verdict.REJECT, comment="Fix the grammar too.")
    with session_scope() as session:
        item = session.get(Item, edit.item_id)
        assert session.get(Edit, edit.id).review_status == ReviewStatus.RETURNED
        assert item.status == ItemStatus.COMPLETE  # not back in the queue: its annotator has it first
        rows = feedback.my_work(session, ann)
    assert rows[0].revisable and rows[0].reviews[0].review.comment == "Fix the grammar too."
    with session_scope() as session:
        feedback.revise(session, ann, edit.id, "The fixed answer.")
    with session_scope() as session:
        assert review.next_pending(session, rev) == edit.id  # waits for review again
        review.decide(session, rev, edit.id, Verdict.REJECT, comment="Still wrong.")
    with session_scope() as session:
        feedback.give_back(session, ann, edit.id)
    with session_scope() as session:
        assert session.get(Edit, edit.id).review_status == ReviewStatus.REJECTED
        assert session.get(Item, edit.item_id).status == ItemStatus.OPEN


def test_my_work_pages(web_client, make_user, make_project, add_items, login_as):
    _ann, rev, edit = _submitted(make_user, make_project, add_items)
    with session_scope() as session:
        review.decide(session, rev, edit.id, Verdict.REJECT, comment="You changed the <meaning>.")
    make_user("bea")
    csrf = login_as(web_client, "ann")
    page = web_client.get("/my-work")
    assert "You changed the &lt;meaning&gt;." in page.text and "rejected" in page.text
    assert f"/my-work/{edit.id}" not in page.text  # a final rejection cannot be revised
    refused = web_client.post(f"/my-work/{edit.id}", data={"csrf_token": csrf, "text": "x"})
    assert refused.status_code == 409
    login_as(web_client, "bea")
    assert web_client.get(f"/my-work/{edit.id}").status_code == 404  # someone else's
    assert web_client.get("/review").status_code == 403
