"""Review verdicts: accept, fix & accept as a new layer, reject sends the item back; one verdict per edit."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from app.db import session_scope
from app.errors import DomainError
from app.models import Comment, Edit, Item, ItemStatus, Outcome, Review, ReviewStatus, Verdict
from app.services import annotation, queue, review


def _annotated(make_user, make_project, add_items, text="The fixed answer."):
    ann, rev = make_user("ann"), make_user("rev", "reviewer")
    project = make_project(members=[ann, rev])
    add_items(project, [("Prompt", "The broken answr.")])
    with session_scope() as session:
        lease = queue.next_task(session, project, ann).lease
    with session_scope() as session:
        edit = annotation.submit(session, lease.id, ann, Outcome.EDITED, text)
    return ann, rev, project, edit


def test_fix_and_accept_keeps_the_annotators_edit(make_user, make_project, add_items):
    _ann, rev, _project, edit = _annotated(make_user, make_project, add_items)
    with session_scope() as session:
        review.decide(session, rev, edit.id, Verdict.FIX_AND_ACCEPT, fixed_text="The fixed answer!")
    with session_scope() as session:
        stored = session.get(Edit, edit.id)
        layer = session.scalars(select(Review)).one()
    assert stored.edited_text == "The fixed answer." and stored.review_status == ReviewStatus.ACCEPTED
    assert layer.fixed_text == "The fixed answer!" and layer.stats["token_edit_distance"] >= 1
    with pytest.raises(DomainError, match="already"), session_scope() as session:
        review.decide(session, rev, edit.id, Verdict.ACCEPT)


def test_reject_needs_a_comment_and_reopens_the_item(make_user, make_project, add_items):
    _ann, rev, _project, edit = _annotated(make_user, make_project, add_items)
    with pytest.raises(DomainError, match="comment"), session_scope() as session:
        review.decide(session, rev, edit.id, Verdict.REJECT)
    with session_scope() as session:
        review.decide(session, rev, edit.id, Verdict.REJECT, comment="You changed the meaning.")
    with session_scope() as session:
        item = session.get(Item, edit.item_id)
        assert (item.status, item.completed_count) == (ItemStatus.OPEN, 0)
        assert session.scalars(select(Comment)).one().body == "You changed the meaning."


def test_annotators_cannot_review_their_own_work(make_user, make_project, add_items):
    ann, _rev, _project, edit = _annotated(make_user, make_project, add_items)
    with pytest.raises(DomainError), session_scope() as session:
        review.decide(session, ann, edit.id, Verdict.ACCEPT)


def test_review_pages(web_client, make_user, make_project, add_items, login_as):
    _ann, _rev, _project, edit = _annotated(make_user, make_project, add_items)
    csrf = login_as(web_client, "rev")
    listing = web_client.get("/review")
    assert f"/review/{edit.id}" in listing.text
    page = web_client.get(f"/review/{edit.id}")
    assert "<ins>" in page.text
    version = re.search(r'name="version" value="(\d+)"', page.text).group(1)
    done = web_client.post(f"/review/{edit.id}", data={"csrf_token": csrf, "verdict": "accept", "version": version})
    assert done.status_code == 200 and "Accepted edit" in done.text
    stale = web_client.post(f"/review/{edit.id}", data={"csrf_token": csrf, "verdict": "accept", "version": version})
    assert stale.status_code == 409
