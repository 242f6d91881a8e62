"""The item browser: phrase search, filters on what happened to items, keyset pages, roles, one item's
history; on SQLite and Postgres (where the phrase goes through the full-text index)."""

from __future__ import annotations

import pytest
from factories import make_edit, make_item, make_project, make_review
from sqlalchemy import select, text

from app.db import get_engine, session_scope
from app.errors import DomainError, NotFound
from app.models import Item, Outcome, Verdict
from app.services import item_browser, projects
from app.services.item_browser import ItemQuery


@pytest.fixture
def world(settings_env, make_user):
    ann, bea, rev, admin = make_user("ann"), make_user("bea"), make_user("rev", "reviewer"), make_user("boss", "admin")
    with session_scope() as session:
        project, other = make_project(session, name="Browse"), make_project(session, name="Elsewhere")
        projects.set_members(session, project, {ann.id, bea.id, rev.id}, None)
        items = [make_item(session, project, f"Question {i}", f"The answer number {i} flows like rivers.")
                 for i in range(1, 8)]
        make_item(session, other, "Hidden", "The answer number 9 flows like rivers.")
        edited = make_edit(session, items[0], ann, "The answer number 1 flows like lakes.")
        make_review(session, edited, rev, Verdict.REJECT, comment="Rivers were right.")
        make_edit(session, items[1], bea, items[1].original, outcome=Outcome.NO_CHANGE_NEEDED)
        make_edit(session, items[2], bea, "The answer number 3 flows like rivers, mostly, in spring and autumn.")
        return {"admin": admin, "rev": rev, "items": [i.id for i in items], "edit": edited.id}


def found(user, **filters) -> list[int]:
    with session_scope() as session:
        page = item_browser.search(session, user, ItemQuery.model_validate(filters))
        return [row.item.id for row in page.rows]


def test_phrase_and_filters(world):
    admin, rev, ids = world["admin"], world["rev"], world["items"]
    assert found(admin, q="answer number 3 flows") == [ids[2]]
    assert found(admin, q="ANSWER NUMBER 3") == [ids[2]]  # case does not matter
    assert found(admin, q="number 3 answer") == []  # a phrase, not a bag of words
    assert found(admin, q="100% rivers_") == []  # LIKE's wildcards are plain characters
    assert len(found(admin, q="flows like rivers")) == 8  # every project for an admin
    assert len(found(rev, q="flows like rivers")) == 7  # a reviewer sees only their projects
    assert found(admin, annotator="bea") == [ids[2], ids[1]]  # newest first
    assert found(admin, annotator="bea", outcome="no_change_needed") == [ids[1]]
    assert found(admin, min_rate=0.1) == [ids[2], ids[0]]
    assert found(admin, min_rate=0.1, max_rate=0.2) in ([ids[0]], [ids[2]])
    assert found(admin, review="reject") == [ids[0]]
    assert found(admin, review="pending") == [ids[2], ids[1]]
    assert found(admin, status="open", q="number 5") == [ids[4]]
    with pytest.raises(DomainError, match="nobody is called 'zed'"), session_scope() as session:
        item_browser.search(session, admin, ItemQuery(annotator="zed"))


def test_keyset_pages_cover_everything_once(world):
    admin = world["admin"]
    seen, before = [], None
    while True:
        with session_scope() as session:
            page = item_browser.search(session, admin, ItemQuery(before=before), limit=3)
        seen += [row.item.id for row in page.rows]
        if page.next_before is None:
            break
        before = page.next_before
    with session_scope() as session:
        assert seen == sorted(session.scalars(select(Item.id)), reverse=True)


def test_history_and_pages(world, web_client, login_as):
    with session_scope() as session:
        history = item_browser.history(session, world["admin"], world["items"][0])
    assert [e.kind for e in history.events] == ["edit", "review"]
    assert history.events[1].text == "Rivers were right." and history.events[1].who == "rev"
    hidden = world["items"][-1] + 1
    with pytest.raises(NotFound), session_scope() as session:
        item_browser.history(session, world["rev"], hidden)  # not one of the reviewer's projects

    login_as(web_client, "rev")
    page = web_client.get("/items", params={"q": "answer number 3"})
    assert page.status_code == 200 and f'href="/items/{world["items"][2]}"' in page.text
    bad = web_client.get("/items", params={"min_rate": "0.5", "max_rate": "0.1"})
    assert bad.status_code == 422 and "min_rate 0.5 is above max_rate 0.1" in bad.text
    detail = web_client.get(f"/items/{world['items'][0]}")
    assert "Rivers were right." in detail.text and "event-review" in detail.text
    assert web_client.get(f"/items/{hidden}").status_code == 404


def test_annotators_cannot_browse(world, web_client, login_as):
    login_as(web_client, "ann")
    assert web_client.get("/items").status_code == 403


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_the_phrase_goes_through_the_full_text_index(world):
    with session_scope() as session:
        statement = select(Item.id).where(item_browser._phrase(session, "answer number 3"))
        compiled = statement.compile(get_engine(), compile_kwargs={"literal_binds": True})
        with get_engine().connect() as conn:
            conn.execute(text("SET enable_seqscan = off"))
            plan = "\n".join(row[0] for row in conn.execute(text(f"EXPLAIN {compiled}")))
    assert "ix_items_search" in plan, plan
