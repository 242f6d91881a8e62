"""Each rule of a submit is written once (queue.holds_slot, annotation._counting with models.counted_kinds,
webhooks.subscribers) and obeyed by both of its paths: the one statement (Postgres, a lease that holds its
slot beyond the margin) and the locking path (everything else, and every submit on SQLite); on the driver
(DriverDatabase) and in a Session (SessionDatabase)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from factories import make_model_account
from sqlalchemy import select, update

from app import driver
from app.db import get_engine, session_scope
from app.errors import Conflict, DomainError
from app.models import (
    Edit,
    Item,
    ItemStatus,
    Lease,
    LeaseState,
    ModelEditor,
    Outcome,
    Suggestion,
    WebhookDelivery,
    utcnow,
)
from app.services import annotation, queue, webhooks

PG = pytest.mark.postgres
# (database, how the steps run, which submit path): the one statement only exists on Postgres.
WAYS = [
    pytest.param("sqlite", "session", "locking", id="sqlite-session"),
    pytest.param("postgres", "session", "one-statement", marks=PG, id="pg-session-one-statement"),
    pytest.param("postgres", "session", "locking", marks=PG, id="pg-session-locking"),
    pytest.param("postgres", "driver", "one-statement", marks=PG, id="pg-driver-one-statement"),
    pytest.param("postgres", "driver", "locking", marks=PG, id="pg-driver-locking"),
]
every_way = pytest.mark.parametrize(("db_url", "runner", "path"), WAYS, indirect=["db_url"])
every_runner = pytest.mark.parametrize(("db_url", "runner"), [
    pytest.param("sqlite", "session", id="sqlite-session"),
    pytest.param("postgres", "session", marks=PG, id="pg-session"),
    pytest.param("postgres", "driver", marks=PG, id="pg-driver"),
], indirect=["db_url"])


def _on(runner: str, work):
    """`await work(db)` on a fresh event loop, with a Database of the `runner` kind."""
    async def main():
        if runner == "session":
            return await work(driver.SessionDatabase())
        dsn = get_engine().url.set(drivername="postgresql").render_as_string(hide_password=False)
        pool = await driver.open_pool(dsn, 2)
        try:
            return await work(driver.DriverDatabase(pool))
        finally:
            await pool.close()

    return asyncio.run(main())


def _expire_at(lease_id: int, when) -> None:
    with session_scope() as session:
        session.execute(update(Lease).where(Lease.id == lease_id).values(expires_at=when))


def _lease(runner, project, user, path) -> queue.Task:
    """A lease that takes `path` when submitted: a fresh one for the one statement, one inside the margin
    (still live, but too close to expiry to skip the locks) for the locking path."""
    task = _on(runner, lambda db: queue.next_task(db, project.id, user))[1]
    if path == "locking":
        _expire_at(task.lease.id, utcnow() + annotation.AT_ONCE_MARGIN / 3)
    return task


def _submit(runner, task, user, path, text="The edited answer.", suggestion_id=None):
    """Submit `task` along `path`: the one statement itself (and it must store the edit), or `submit`, which
    the lease inside the margin sends down the locking path."""
    if path == "one-statement":
        edit = _on(runner, lambda db: db.run(annotation._at_once(
            task.lease.id, user, Outcome.EDITED, text, annotation.EditorMetrics(), suggestion_id=suggestion_id)))
        assert edit is not None
        return edit
    return _on(runner, lambda db: annotation.submit(db, task.lease.id, user, Outcome.EDITED, text,
                                                    suggestion_id=suggestion_id))


@every_way
def test_completion_the_item_is_complete_at_its_nth_annotation(runner, path, make_user, make_project, add_items):
    a, b, c = make_user("ann_a"), make_user("ann_b"), make_user("ann_c")
    project = make_project(n=2, members=[a, b, c])
    [item_id] = add_items(project, [("P", "Teh original answer.")])
    first, second = _lease(runner, project, a, path), _lease(runner, project, b, path)
    _submit(runner, first, a, path)
    with session_scope() as session:
        item = session.get(Item, item_id)
        assert (item.completed_count, item.status) == (1, ItemStatus.OPEN)
    _submit(runner, second, b, path)
    with session_scope() as session:
        item = session.get(Item, item_id)
        assert (item.completed_count, item.status) == (2, ItemStatus.COMPLETE)
        assert session.get(Lease, second.lease.id).state == LeaseState.SUBMITTED
    assert _on(runner, lambda db: queue.next_task(db, project.id, c))[1] is None  # nothing left for a third


@every_way
@pytest.mark.parametrize("model_edits_count", [True, False], ids=["model-counts", "model-on-top"])
def test_completion_model_edits_count_toward_n_or_come_on_top(runner, path, model_edits_count, make_user,
                                                               make_project, add_items):
    ann = make_user("ann")
    project = make_project(n=1, members=[ann], model_edits_count=model_edits_count)
    [item_id] = add_items(project, [("P", "Teh original answer.")])
    with session_scope() as session:
        model = make_model_account(session, project.id)
    with session_scope() as session:
        webhooks.create_webhook(session, "https://hooks.example/all", ["*"], None)

    def state() -> tuple:
        with session_scope() as session:
            item = session.get(Item, item_id)
            events = session.scalars(select(WebhookDelivery.event).order_by(WebhookDelivery.id)).all()
            return item.completed_count, item.status, events

    _submit(runner, _lease(runner, project, model, path), model, path, "The original answer.")
    person = _on(runner, lambda db: queue.next_task(db, project.id, ann))[1]
    if model_edits_count:
        assert state() == (1, ItemStatus.COMPLETE, ["edit.submitted", "item.completed"])
        assert person is None  # nothing left for the person
        return
    assert state() == (0, ItemStatus.OPEN, ["edit.submitted"])
    assert person is not None and person.item.id == item_id  # the item still needs its N people's edits
    _submit(runner, person, ann, path)
    assert state() == (1, ItemStatus.COMPLETE, ["edit.submitted", "edit.submitted", "item.completed"])


@every_way
def test_suggestion_used_the_persons_edit_rate_relative_to_the_suggestion(runner, path, make_user, make_project,
                                                                          add_items):
    ann = make_user("ann")
    project = make_project(n=1, members=[ann])
    first, second = add_items(project, [("P1", "Teh capital of France is Lyon."), ("P2", "Another answer.")])
    with session_scope() as session:
        editor_id = session.scalar(select(ModelEditor.id).where(
            ModelEditor.user_id == make_model_account(session, project.id).id))
        ours = Suggestion(item_id=first, editor_id=editor_id, text="The capital of France is Lyon.",
                          editor_model="m-135m", prompt_version="v1")
        theirs = Suggestion(item_id=second, editor_id=editor_id, text="Another answer!", editor_model="m-135m",
                            prompt_version="v1")
        session.add_all([ours, theirs])
    task = _lease(runner, project, ann, path)
    assert task.item.id == first
    with pytest.raises(DomainError, match=f"suggestion_id: {theirs.id} is not a suggestion for this item"):
        _submit(runner, task, ann, path, "The capital of France is Paris.", suggestion_id=theirs.id)
    edit = _submit(runner, task, ann, path, "The capital of France is Paris.", suggestion_id=ours.id)
    expected = annotation.analyse(project.tokenizer, ours.text, "The capital of France is Paris.").stats.edit_rate
    assert 0 < expected < edit.edit_rate  # closer to the suggestion than to the original
    with session_scope() as session:
        stored = session.get(Edit, edit.id)
        assert (stored.suggestion_used, stored.human_vs_suggestion_rate) == (True, expected)
        # A person's edit that carries the suggestion's editor, model and prompt version.
        assert (stored.annotator_id, stored.editor_id, stored.editor_model, stored.prompt_version) == (
            ann.id, editor_id, "m-135m", "v1")


@every_runner
def test_lease_validity_a_lease_counts_while_it_holds_its_slot(runner, make_user, make_project, add_items):
    a, b = make_user("ann_a"), make_user("ann_b")
    project = make_project(n=1, members=[a, b])
    add_items(project, [("P1", "The first original."), ("P2", "The second original.")])

    # Run out, slot still free: the late submit is kept.
    late = _lease(runner, project, a, "locking")
    _expire_at(late.lease.id, utcnow() - timedelta(seconds=1))
    assert _on(runner, lambda db: annotation.submit(db, late.lease.id, a, Outcome.EDITED, "Late, kept.")).id

    # Run out and the slot handed to someone else: refused, and the other's lease is the one that counts.
    lost = _lease(runner, project, a, "locking")
    _expire_at(lost.lease.id, utcnow() - timedelta(seconds=1))
    taken = _on(runner, lambda db: queue.next_task(db, project.id, b))[1]
    assert taken.item.id == lost.item.id  # the expired lease stopped holding the slot at once
    with pytest.raises(Conflict, match="given to someone else"):
        _on(runner, lambda db: annotation.submit(db, lost.lease.id, a, Outcome.EDITED, "Too late."))
    assert _on(runner, lambda db: annotation.submit(db, taken.lease.id, b, Outcome.EDITED, "Mine.")).id


@pytest.mark.parametrize(("db_url", "runner"), [pytest.param("postgres", "session", marks=PG, id="pg-session"),
                                               pytest.param("postgres", "driver", marks=PG, id="pg-driver")],
                         indirect=["db_url"])
def test_lease_validity_the_one_statement_asks_for_the_margin(runner, make_user, make_project, add_items):
    """A lease inside the margin still holds its slot; the one statement leaves it to the locking path, which
    stores it (the item locked, no margin needed)."""
    ann = make_user("ann")
    project = make_project(n=1, members=[ann])
    add_items(project, [("P", "The original.")])
    task = _lease(runner, project, ann, "locking")
    declined = _on(runner, lambda db: db.run(annotation._at_once(task.lease.id, ann, Outcome.EDITED, "The edit.",
                                                                 annotation.EditorMetrics())))
    assert declined is None
    assert _on(runner, lambda db: annotation.submit(db, task.lease.id, ann, Outcome.EDITED, "The edit.")).id


@every_way
def test_webhook_matching_each_event_reaches_its_subscribers(runner, path, make_user, make_project, add_items):
    ann = make_user("ann")
    project = make_project(n=1, members=[ann])
    add_items(project, [("P", "The original.")])
    with session_scope() as session:
        hooks = {name: webhooks.create_webhook(session, f"https://hooks.example/{name}", events, None)
                 for name, events in (("all", ["*"]), ("edits", ["edit.submitted"]), ("items", ["item.completed"]),
                                      ("datasets", ["dataset_version.created"]), ("off", ["*"]))}
        hooks["off"].active = False
        ids = {name: hook.id for name, hook in hooks.items()}
    task = _lease(runner, project, ann, path)
    edit = _submit(runner, task, ann, path, "The original edited.")
    with session_scope() as session:
        queued = [(d.event, d.webhook_id, d.payload) for d in session.scalars(
            select(WebhookDelivery).order_by(WebhookDelivery.id))]
    assert [(event, hook) for event, hook, _ in queued] == [
        ("edit.submitted", ids["all"]), ("edit.submitted", ids["edits"]),
        ("item.completed", ids["all"]), ("item.completed", ids["items"])]
    assert queued[0][2] == {"edit_id": edit.id, "item_id": task.item.id, "project_id": project.id,
                            "outcome": "edited", "edit_rate": edit.edit_rate, "not_minimal": edit.not_minimal}
    assert queued[2][2] == {"item_id": task.item.id, "project_id": project.id, "completed_count": 1}


def test_webhook_matching_rule():
    subscriptions = [(3, ["*"]), (1, ["edit.submitted", "item.completed"]), (2, ["item.completed"])]
    assert webhooks.subscribers(subscriptions, "edit.submitted") == [1, 3]
    assert webhooks.subscribers(subscriptions, "item.completed") == [1, 2, 3]
    assert webhooks.subscribers(subscriptions, "dataset_version.created") == [3]
    assert webhooks.subscribers([], "edit.submitted") == []
