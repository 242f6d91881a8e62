"""Review verdicts: accept, fix & accept as a new layer, reject sends the item back; one verdict per edit."""

from __future__ import annotations

import re

import pytest
from factories import make_model_account, next_task, submit
from sqlalchemy import select

from app.db import session_scope
from app.errors import DomainError
from app.models import AuditEvent, Comment, Edit, Item, ItemStatus, ModelEditor, Outcome, Review, ReviewStatus, Verdict
from app.services import review
from app.services.annotation import HUMAN, Provenance


def _annotated(make_user, make_project, add_items, text="The fixed answer."):
    ann, rev = make_user("ann"), make_user("rev", "reviewer")
    project = make_project(members=[ann, rev])
    add_items(project, [("Prompt", "The broken answr.")])
    with session_scope() as session:
        lease = next_task(session, project, ann).lease
    with session_scope() as session:
        edit = submit(session, lease.id, ann, Outcome.EDITED, text)
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


def _many_edits(make_user, make_project, add_items, texts):
    """One annotator's edits of len(texts) items (the originals say "answr"), each fixed as given."""
    ann, rev = make_user("ann"), make_user("rev", "reviewer")
    project = make_project(members=[ann, rev])
    add_items(project, [(f"Prompt {i}", f"The broken answr number {i}.") for i in range(len(texts))])
    edits = []
    for text in texts:
        with session_scope() as session:
            lease = next_task(session, project, ann).lease
        with session_scope() as session:
            edits.append(submit(session, lease.id, ann, Outcome.EDITED, text(lease.item_id)))
    return ann, rev, project, edits


def test_a_verdict_opens_the_next_pending_edit_and_the_fix_shows_its_diff_and_reviewer(
    web_client, make_user, make_project, add_items, login_as
):
    _ann, _rev, project, edits = _many_edits(make_user, make_project, add_items, [
        lambda _i: "The broken answer number 0.", lambda _i: "The broken answer number 1.",
        lambda _i: "The broken answer number 2."])
    csrf = login_as(web_client, "rev")
    start = web_client.get("/review/next", params={"project": project.id}, follow_redirects=False)
    assert start.headers["location"] == f"/review/{edits[0].id}?msg=&project={project.id}"
    skipped = web_client.get("/review/next", params={"after": edits[0].id}, follow_redirects=False)
    assert skipped.headers["location"].startswith(f"/review/{edits[1].id}?")
    done = web_client.post(f"/review/{edits[0].id}", follow_redirects=False, data={
        "csrf_token": csrf, "verdict": "fix_and_accept", "fixed_text": "The fixed answer number 0.",
        "project": str(project.id)})
    assert done.headers["location"].startswith(f"/review/{edits[1].id}?msg=Fixed+and+accepted+edit+%23")
    reviewed = web_client.get(f"/review/{edits[0].id}").text
    assert 'class="reviewer">rev</bdi>' in reviewed and "Original → reviewer's fix" in reviewed
    assert re.search(r'class="text diff fix-diff".*?<ins>', reviewed, re.S)
    for edit in edits[1:]:
        last = web_client.post(f"/review/{edit.id}", follow_redirects=False,
                               data={"csrf_token": csrf, "verdict": "accept"})
    assert last.headers["location"].startswith("/review?msg=Accepted+edit")
    assert "Nothing+else+waits+for+review" in last.headers["location"]


def test_bulk_accept_takes_what_the_filter_selects_and_nothing_reviewed_meanwhile(
    web_client, make_user, make_project, add_items, login_as
):
    texts = [lambda _i: "The broken answer number 0.", lambda _i: "A completely different reply, rewritten.",
             lambda _i: "The broken answer number 2.", lambda _i: "The broken answer number 3."]
    _ann, rev, project, edits = _many_edits(make_user, make_project, add_items, texts)
    with session_scope() as session:  # someone reviews one edit first
        review.decide(session, rev, edits[3].id, Verdict.REJECT, comment="No.")
    csrf = login_as(web_client, "rev")
    form = {"csrf_token": csrf, "project_id": str(project.id), "outcomes": ["edited"], "max_rate": "0.3",
            "exclude_not_minimal": "true"}
    preview = web_client.post("/review/bulk-accept", data={**form, "preview": "1"})
    assert "2 pending edit(s) match" in preview.text
    bad = web_client.post("/review/bulk-accept", data={**form, "min_rate": "0.5"})
    assert bad.status_code == 422 and "min_rate 0.5 is above max_rate 0.3" in bad.text
    done = web_client.post("/review/bulk-accept", data=form, follow_redirects=False)
    assert "Accepted+2+edit" in done.headers["location"]
    with session_scope() as session:
        statuses = {e.id: session.get(Edit, e.id).review_status for e in edits}
        layers = session.scalars(select(Review).where(Review.verdict == "accept")).all()
    assert statuses == {edits[0].id: "accepted", edits[1].id: "pending", edits[2].id: "accepted",
                        edits[3].id: "rejected"}
    assert sorted(r.edit_id for r in layers) == [edits[0].id, edits[2].id]
    assert web_client.post("/review/bulk-accept", data=form, follow_redirects=False).headers["location"].count(
        "Accepted+0+edit") == 1


def test_bulk_accept_of_model_edits_leaves_peoples_edits_alone(web_client, make_user, make_project, add_items,
                                                                login_as):
    ann, rev = make_user("ann"), make_user("rev", "reviewer")
    project = make_project(n=2, members=[ann, rev])
    add_items(project, [("Prompt 0", "The broken answr number 0."), ("Prompt 1", "The broken answr number 1.")])
    with session_scope() as session:
        model = make_model_account(session, project.id, model="smol-1")
        editor_id = session.scalar(select(ModelEditor.id).where(ModelEditor.user_id == model.id))
    by_kind = {}
    for who in (ann, ann, model, model):
        with session_scope() as session:
            task = next_task(session, project, who)
        with session_scope() as session:
            edit = submit(session, task.lease.id, who, Outcome.EDITED, task.item.original.replace("answr", "answer"),
                          provenance=Provenance(editor_id=editor_id, editor_model="smol-1") if who is model else HUMAN)
            by_kind.setdefault(who.kind, []).append(edit.id)
    csrf = login_as(web_client, "rev")
    queue = web_client.get("/review").text
    assert queue.count('<span class="badge kind-model">model</span>') == 2 and 'id="bulk-kind-model"' in queue
    form = {"csrf_token": csrf, "project_id": str(project.id), "outcomes": ["edited"], "exclude_not_minimal": "true",
            "annotator_kinds": ["model"]}
    assert "2 pending edit(s) match" in web_client.post("/review/bulk-accept", data={**form, "preview": "1"}).text
    bad = web_client.post("/review/bulk-accept", data={**form, "annotator_kinds": ["robot"]})
    assert bad.status_code == 422 and "annotator_kinds" in bad.text
    done = web_client.post("/review/bulk-accept", data=form, follow_redirects=False)
    assert "Accepted+2+edit" in done.headers["location"]
    with session_scope() as session:
        statuses = {kind: {session.get(Edit, i).review_status for i in ids} for kind, ids in by_kind.items()}
        audit = session.scalars(select(AuditEvent).where(AuditEvent.action == "review.bulk_accept")).one()
    assert statuses == {"human": {"pending"}, "model": {"accepted"}}
    assert audit.after["filter"]["annotator_kinds"] == ["model"]
    page = web_client.get(f"/review/{by_kind['model'][0]}").text
    assert 'id="annotator-kind">model</span>' in page and "smol-1" in page
