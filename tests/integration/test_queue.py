"""The queue's guarantees: exactly N completed annotations, never the same item twice, expiry, idempotent submit."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from factories import next_task, submit
from queue_checks import assert_exactly_n_annotations
from sqlalchemy import func, select, update

from app.db import session_scope
from app.driver import SessionDatabase, run
from app.errors import DomainError
from app.models import Edit, Item, ItemStatus, Lease, LeaseState, Outcome, Project, User, utcnow
from app.services import annotation, queue


def _lease(project, user):
    with session_scope() as session:
        task = next_task(session, project, user)
        return task.lease if task else None


def _submit(lease_id, user, text="An edited answer.", outcome=Outcome.EDITED):
    with session_scope() as session:
        return submit(session, lease_id, user, outcome, text)


def test_next_resumes_then_n_annotations_complete_the_item(make_user, make_project, add_items):
    a, b, c = (make_user(name) for name in ("ann_a", "ann_b", "ann_c"))
    project = make_project(n=2, members=[a, b, c])
    [item_id] = add_items(project, [("Prompt", "An original answer.")])
    first = _lease(project, a)
    assert first.item_id == item_id and _lease(project, a).id == first.id  # "Next" again resumes
    second = _lease(project, b)
    assert second.item_id == item_id
    assert _lease(project, c) is None  # two active leases fill N = 2
    _submit(first.id, a)
    _submit(second.id, b, outcome=Outcome.NO_CHANGE_NEEDED)
    with session_scope() as session:
        item = session.get(Item, item_id)
        assert (item.completed_count, item.status) == (2, ItemStatus.COMPLETE)
    assert _lease(project, c) is None and _lease(project, a) is None


def test_submit_recomputes_labels_and_double_submit_gives_one_edit(make_user, make_project, add_items):
    ann = make_user("ann")
    project = make_project(members=[ann])
    add_items(project, [("Say hi", "Hello wrld, how are you?")])
    lease = _lease(project, ann)
    edit = _submit(lease.id, ann, "Hello world, how are you?")
    again = _submit(lease.id, ann, "Something else entirely")
    assert again.id == edit.id
    with session_scope() as session:
        stored = session.get(Edit, edit.id)
        assert session.scalar(select(func.count()).select_from(Edit)) == 1
    assert stored.edited_text == "Hello world, how are you?"
    assert stored.stats["token_edit_distance"] >= 1 and 0 < stored.edit_rate < 1
    assert len(stored.token_labels["original_labels"]) == len(stored.token_labels["original_ids"])
    assert [op for op, _ in stored.char_diff].count(1) >= 1


def test_skip_frees_the_item_for_others_but_not_for_the_skipper(make_user, make_project, add_items):
    a, b = make_user("ann_a"), make_user("ann_b")
    project = make_project(members=[a, b])
    add_items(project, [("P", "R")])
    lease = _lease(project, a)
    with pytest.raises(DomainError), session_scope() as session:
        submit(session, lease.id, a, Outcome.SKIPPED, skip_reason=" ")
    with session_scope() as session:
        submit(session, lease.id, a, Outcome.SKIPPED, skip_reason="I don't know the topic")
    assert _lease(project, a) is None
    assert _lease(project, b) is not None


def _expire(lease_id: int) -> None:
    with session_scope() as session:
        session.execute(update(Lease).where(Lease.id == lease_id).values(expires_at=utcnow() - timedelta(seconds=1)))


def test_expired_lease_returns_the_item(make_user, make_project, add_items):
    a, b = make_user("ann_a"), make_user("ann_b")
    project = make_project(members=[a, b])
    add_items(project, [("P", "The original.")])
    stale = _lease(project, a)
    assert _lease(project, b) is None
    _expire(stale.id)
    fresh = _lease(project, b)
    assert fresh is not None and fresh.item_id == stale.item_id
    with session_scope() as session:  # the sweep marks it (it stopped counting when it expired)
        run(session, queue.sweeping(utcnow()))
    with session_scope() as session:
        assert session.get(Lease, stale.id).state == LeaseState.EXPIRED
    with pytest.raises(DomainError, match="given to someone else"):
        _submit(stale.id, a)
    _submit(fresh.id, b)


def test_late_submit_is_kept_when_the_slot_is_still_free(make_user, make_project, add_items):
    ann = make_user("ann")
    project = make_project(members=[ann])
    add_items(project, [("P", "The original.")])
    lease = _lease(project, ann)
    _expire(lease.id)
    edit = _submit(lease.id, ann, "The edited.")
    assert edit.id is not None


def test_upcoming_lists_what_next_offers_in_its_order(make_user, make_project, add_items):
    a, b = make_user("ann_a"), make_user("ann_b")
    project = make_project(members=[a, b])
    ids = add_items(project, [(f"P{i}", f"R{i}") for i in range(5)])

    def upcoming(after: int = 0, window: int = 10) -> list[int]:
        with session_scope() as session:
            return [item.id for item in run(session, queue.upcoming(project, a, after, window))]

    assert upcoming() == ids
    held = _lease(project, b)  # its one slot held by someone else: not offered to a while the lease lives
    _submit(_lease(project, a).id, a)  # done by a: never offered to a again
    assert upcoming() == ids[2:] and upcoming(after=ids[2], window=1) == [ids[3]]
    with session_scope() as session:
        [first] = run(session, queue.upcoming(project, a, ids[1], 1))
        assert (first.prompt, first.original) == ("P2", "R2")
    offered = []
    while (lease := _lease(project, a)) is not None:
        offered.append(lease.item_id)
        _submit(lease.id, a)
    assert offered == ids[2:] and upcoming() == []
    _expire(held.id)  # the slot is free again
    assert upcoming() == [ids[0]]


def test_an_annotator_only_sees_their_own_lease(make_user, make_project, add_items):
    a, b = make_user("ann_a"), make_user("ann_b")
    project = make_project(members=[a, b])
    add_items(project, [("P", "R")])
    lease = _lease(project, a)
    with pytest.raises(DomainError):
        _submit(lease.id, b)


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_fifty_concurrent_annotators_give_exactly_n(settings_env, make_user, make_project, add_items):
    annotators = [make_user(f"ann{i:02d}") for i in range(50)]
    project = make_project(n=3, members=annotators)
    item_ids = add_items(project, [(f"Prompt {i}", f"Response number {i}, with a typo: teh.") for i in range(200)])
    barrier = threading.Barrier(len(annotators))

    def work(user: User) -> int:
        barrier.wait()
        done = 0
        while (lease := _lease(project, user)) is not None:
            _submit(lease.id, user, f"Response, fixed by {user.username}: the.")
            done += 1
        return done

    with ThreadPoolExecutor(len(annotators)) as pool:
        total = sum(pool.map(work, annotators))
    assert total == 3 * len(item_ids)
    assert_exactly_n_annotations(item_ids, 3)


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_concurrent_next_clicks_of_one_annotator_give_one_lease(settings_env, make_user, make_project, add_items):
    ann = make_user("ann")
    project = make_project(n=1, members=[ann])
    add_items(project, [(f"Prompt {i}", f"Response {i}.") for i in range(10)])
    barrier = threading.Barrier(8)

    def click(_: int) -> int:
        barrier.wait()
        return _lease(project, ann).id

    with ThreadPoolExecutor(8) as pool:
        leases = set(pool.map(click, range(8)))
    assert len(leases) == 1  # the annotator's lock made the later clicks resume the first one's lease


def test_only_a_member_of_the_project_gets_a_task(make_user, make_project, add_items):
    ann, other = make_user("ann"), make_user("other")
    project = make_project(members=[ann])
    add_items(project, [("Prompt", "Response.")])
    with session_scope() as session:
        assert asyncio.run(queue.next_task(SessionDatabase(session), project.id, other)) == (None, None)
        entered, task = asyncio.run(queue.next_task(SessionDatabase(session), project.id, ann))
        assert entered.id == project.id and task.item.prompt == "Prompt"


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_concurrent_double_submit_gives_one_edit(settings_env, make_user, make_project, add_items):
    ann = make_user("ann")
    project = make_project(members=[ann])
    add_items(project, [("P", "The original answer.")])
    lease = _lease(project, ann)
    barrier = threading.Barrier(8)

    def submit_once(_):
        barrier.wait()
        return _submit(lease.id, ann, "The edited answer.").id

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(submit_once, range(8)))
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Edit)) == 1
        assert session.get(Item, lease.item_id).completed_count == 1
    assert len(ids) == 1


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_concurrent_annotators_on_sqlite_give_exactly_n(settings_env, make_user, make_project, add_items):
    annotators = [make_user(f"ann{i:02d}") for i in range(8)]
    project = make_project(n=2, members=annotators)
    item_ids = add_items(project, [(f"Prompt {i}", f"Response {i}, teh end.") for i in range(30)])

    def work(user: User) -> None:
        while (lease := _lease(project, user)) is not None:
            _submit(lease.id, user, "Response, the end.")

    with ThreadPoolExecutor(len(annotators)) as pool:
        list(pool.map(work, annotators))
    assert_exactly_n_annotations(item_ids, 2)


def test_submit_queues_webhook_deliveries(make_user, make_project, add_items):
    from app.models import WebhookDelivery
    from app.services.webhooks import create_webhook

    ann = make_user("ann")
    project = make_project(members=[ann])
    add_items(project, [("P", "The original.")])
    with session_scope() as session:
        create_webhook(session, "https://hooks.example/redline", ["*"], None)
    lease = _lease(project, ann)
    edit = _submit(lease.id, ann, "The edited.")
    _submit(lease.id, ann, "The edited.")  # a double submit queues nothing more
    with session_scope() as session:
        events = sorted((d.event, d.payload["item_id"]) for d in session.scalars(select(WebhookDelivery)))
    assert events == [("edit.submitted", edit.item_id), ("item.completed", edit.item_id)]


def test_next_through_the_pages_and_membership(web_client, make_user, make_project, add_items, login_as):
    member = make_user("ann")
    make_user("out")
    project = make_project(members=[member])
    add_items(project, [("P", "The original answer.")])
    csrf = login_as(web_client, "out")
    assert web_client.post(f"/annotate/{project.id}/next", headers={"X-CSRF-Token": csrf}).status_code == 403
    web_client.post("/logout", headers={"X-CSRF-Token": csrf})
    csrf = login_as(web_client, "ann")
    leased = web_client.post(f"/annotate/{project.id}/next", headers={"X-CSRF-Token": csrf}, follow_redirects=False)
    task_url = leased.headers["location"]
    assert task_url.startswith("/annotate/task/")
    assert "The original answer." in web_client.get(task_url).text
    diff = web_client.post(f"{task_url}/diff", data={"text": "The original answer, fixed."},
                           headers={"X-CSRF-Token": csrf, "HX-Request": "true"})
    assert "<ins>" in diff.text and "Edit rate" in diff.text
    form = {"text": "The original answer, fixed.", "outcome": "edited", "keystrokes": "7", "csrf_token": csrf}
    first = web_client.post(f"{task_url}/submit", data=form, follow_redirects=False)
    again = web_client.post(f"{task_url}/submit", data=form, follow_redirects=False)
    assert first.status_code == again.status_code == 303
    with session_scope() as session:
        [edit] = session.scalars(select(Edit)).all()
    assert edit.keystrokes == 7 and edit.annotator_id == member.id
    web_client.post("/logout", headers={"X-CSRF-Token": csrf})
    csrf = login_as(web_client, "out")  # someone else's task: not found, whichever way it is asked for
    assert web_client.get(task_url).status_code == 404
    assert web_client.post(f"{task_url}/diff", data={"text": "x"}, headers={"X-CSRF-Token": csrf}).status_code == 404
    assert web_client.post(f"{task_url}/submit", data={**form, "csrf_token": csrf}).status_code == 404


def test_htmx_next_answers_with_the_editor_and_submit_advances_to_the_next_one(
    web_client, make_user, make_project, add_items, login_as
):
    ann = make_user("ann")
    project = make_project(members=[ann])
    add_items(project, [("P1", "First original."), ("P2", "Second original.")])
    csrf = login_as(web_client, "ann")
    htmx = {"X-CSRF-Token": csrf, "HX-Request": "true"}
    page = web_client.post(f"/annotate/{project.id}/next", headers=htmx)
    assert page.status_code == 200 and "First original." in page.text  # no redirect, no second request
    task_url = page.headers["HX-Push-Url"]
    again = web_client.post(f"/annotate/{project.id}/next", headers=htmx)
    assert again.headers["HX-Push-Url"] == task_url  # resumes the same lease
    form = {"text": "First original, fixed.", "outcome": "edited", "advance": "true"}
    following = web_client.post(f"{task_url}/submit", data=form, headers=htmx)
    assert following.status_code == 200 and "Second original." in following.text
    assert following.headers["HX-Push-Url"] != task_url
    with session_scope() as session:
        [edit] = session.scalars(select(Edit)).all()
        item = session.get(Item, edit.item_id)
    assert edit.edited_text == "First original, fixed." and item.completed_count == 1


def test_changing_n_reopens_and_completes_items(make_user, make_project, add_items):
    from app.services.projects import ProjectSettings, update_project

    ann = make_user("ann")
    project = make_project(members=[ann])
    [item_id] = add_items(project, [("P", "The original.")])
    _submit(_lease(project, ann).id, ann, "The edited.")

    def set_n(n: int) -> str:
        with session_scope() as session:
            stored = session.get(type(project), project.id)
            update_project(session, stored, ProjectSettings(name=stored.name, tokenizer=stored.tokenizer,
                                                            annotations_per_item=n), None)
        with session_scope() as session:
            return session.get(Item, item_id).status

    assert set_n(2) == ItemStatus.OPEN
    assert set_n(1) == ItemStatus.COMPLETE


def _stored(edit_id: int) -> tuple[dict, list[tuple[str, int, dict]]]:
    """An edit's columns (less ids and time) and its webhook deliveries (event, webhook, payload less ids)."""
    from app.models import WebhookDelivery

    with session_scope() as session:
        edit = session.get(Edit, edit_id)
        columns = {c.key: getattr(edit, c.key) for c in Edit.__table__.c
                   if c.key not in ("id", "item_id", "lease_id", "created_at")}
        deliveries = session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)).all()
        ours = [(d.event, d.webhook_id, {k: v for k, v in d.payload.items() if k not in ("edit_id", "item_id")})
                for d in deliveries if d.payload["item_id"] == edit.item_id]
        assert all(d.payload.get("edit_id", edit.id) == edit.id
                   for d in deliveries if d.payload["item_id"] == edit.item_id)
        assert all((d.status, d.attempts, d.last_error) == ("pending", 0, "") for d in deliveries)
    return columns, ours


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_one_statement_submit_stores_what_the_locking_path_stores(make_user, make_project, add_items):
    """A live lease is submitted in one statement; one about to expire takes the locking path. Both must
    leave the same edit, item, lease and webhook deliveries behind."""
    from app.services.webhooks import create_webhook

    ann = make_user("ann")
    project = make_project(n=1, members=[ann])
    add_items(project, [("P1", "Teh first original."), ("P2", "Teh first original.")])
    with session_scope() as session:  # every event; one event; an inactive hook, which gets nothing
        every, completed, inactive = (create_webhook(session, f"https://hooks.example/{events[0]}", events, None)
                                      for events in (["*"], ["item.completed"], ["edit.submitted"]))
        inactive.active = False
        every, completed = every.id, completed.id
    results = []
    for near_expiry in (False, True):
        lease = _lease(project, ann)
        if near_expiry:  # inside the margin: the one-statement path declines
            with session_scope() as session:
                session.execute(update(Lease).where(Lease.id == lease.id).values(
                    expires_at=utcnow() + annotation.AT_ONCE_MARGIN / 2))
        edit = _submit(lease.id, ann, "The first original.")
        with session_scope() as session:
            item, closed = session.get(Item, lease.item_id), session.get(Lease, lease.id)
            assert (item.completed_count, item.status, closed.state) == (1, ItemStatus.COMPLETE, LeaseState.SUBMITTED)
        results.append(_stored(edit.id))
    one_statement, locking = results
    assert one_statement == locking
    assert [(event, hook) for event, hook, _ in one_statement[1]] == [
        ("edit.submitted", every), ("item.completed", every), ("item.completed", completed)]


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_submit_inside_an_open_transaction_uses_it(make_user, make_project, add_items):
    """Next and submit in one unit of work: the submit runs in that transaction (a separate connection
    would wait forever on the item row Next locked) and commits with it."""
    ann = make_user("ann")
    project = make_project(members=[ann])
    add_items(project, [("P", "The original.")])
    with session_scope() as session:
        task = next_task(session, project, ann)
        item_id = task.item.id
        edit_id = submit(session, task.lease.id, ann, Outcome.EDITED, "The edited.").id
        session.rollback()  # so nothing of it may remain
    with session_scope() as session:
        assert session.get(Edit, edit_id) is None
        assert session.get(Item, item_id).completed_count == 0


def test_the_web_app_loads_the_active_projects_tokenizers_at_startup(make_user, make_project, settings_env) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from labels import load_tokenizer

    make_project(members=[make_user("ann")])
    missing = make_project(name="Missing tokenizer")
    with session_scope() as session:  # its requests report it; it must not stop the app from starting
        session.execute(update(Project).where(Project.id == missing.id).values(tokenizer="no-such-org/none"))
    load_tokenizer.cache_clear()
    with TestClient(create_app()):
        assert load_tokenizer.cache_info().currsize == 1  # the first submit will not wait for it
