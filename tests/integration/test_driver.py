"""The hot routes' driver path (app.driver) on the real Postgres: the queue's guarantees hold there too, it
stores what the Session path stores, and its pool survives a lost connection."""

from __future__ import annotations

import asyncio
import re

import pytest
from factories import next_task, submit
from queue_checks import assert_exactly_n_annotations
from sqlalchemy import func, select, text

from app import driver
from app.db import get_engine, session_scope
from app.errors import DomainError, NotFound
from app.models import Edit, Item, Lease, LeaseState, Outcome
from app.services import annotation, queue
from app.services.webhooks import create_webhook

pytestmark = [pytest.mark.postgres, pytest.mark.parametrize("db_url", ["postgres"], indirect=True)]


def _dsn() -> str:
    return get_engine().url.set(drivername="postgresql").render_as_string(hide_password=False)


def _on_pool(work, size: int = 10):
    """Run `work(pool)` on a fresh driver pool, in a fresh event loop."""
    async def main():
        pool = await driver.open_pool(_dsn(), size)
        try:
            return await work(pool)
        finally:
            await pool.close()

    return asyncio.run(main())


async def _next(pool, project_id, user):
    return await queue.next_task(driver.DriverDatabase(pool), project_id, user)


async def _submit(pool, lease_id, user, text, outcome=Outcome.EDITED, **options):
    return await annotation.submit(driver.DriverDatabase(pool), lease_id, user, outcome, text, **options)


def test_fifty_concurrent_annotators_on_the_driver_give_exactly_n(settings_env, make_user, make_project, add_items):
    annotators = [make_user(f"ann{i:02d}") for i in range(50)]
    project = make_project(n=3, members=annotators)
    item_ids = add_items(project, [(f"Prompt {i}", f"Response number {i}, with a typo: teh.") for i in range(200)])

    async def annotate(pool, user) -> int:
        done = 0
        while (task := (await _next(pool, project.id, user))[1]) is not None:
            assert await _submit(pool, task.lease.id, user, f"Response, fixed by {user.username}: the.") is not None
            done += 1
        return done

    async def everyone(pool):
        return await asyncio.gather(*(annotate(pool, user) for user in annotators))

    assert sum(_on_pool(everyone)) == 3 * len(item_ids)
    assert_exactly_n_annotations(item_ids, 3)


def test_concurrent_next_clicks_on_the_driver_give_one_lease(settings_env, make_user, make_project, add_items):
    ann, outsider = make_user("ann"), make_user("out")
    project = make_project(n=1, members=[ann])
    add_items(project, [(f"Prompt {i}", f"Response {i}.") for i in range(10)])

    async def clicks(pool):
        tasks = await asyncio.gather(*(_next(pool, project.id, ann) for _ in range(8)))
        return {task.lease.id for _, task in tasks}, await _next(pool, project.id, outsider)

    leases, refused = _on_pool(clicks)
    assert len(leases) == 1  # the annotator's row lock made the later clicks resume the first one's lease
    assert refused == (None, None)  # not a member: no project, no task


def test_concurrent_double_submit_on_the_driver_gives_one_edit(settings_env, make_user, make_project, add_items):
    ann = make_user("ann")
    project = make_project(members=[ann])
    add_items(project, [("P", "The original answer.")])

    async def double_submit(pool):
        _, task = await _next(pool, project.id, ann)
        return task, await asyncio.gather(*(_submit(pool, task.lease.id, ann, "The edited answer.") for _ in range(8)))

    task, edits = _on_pool(double_submit)
    assert len({edit.id for edit in edits}) == 1  # one stored it; the locking path answered the others with it
    with session_scope() as session:
        assert submit(session, task.lease.id, ann, Outcome.EDITED, "Another text").id == edits[0].id
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Edit)) == 1
        assert session.get(Item, task.item.id).completed_count == 1
        assert session.get(Lease, task.lease.id).state == LeaseState.SUBMITTED


def _stored(edit_id: int) -> tuple[dict, list[tuple[str, dict]]]:
    from app.models import WebhookDelivery

    with session_scope() as session:
        edit = session.get(Edit, edit_id)
        columns = {c.key: getattr(edit, c.key) for c in Edit.__table__.c
                   if c.key not in ("id", "item_id", "lease_id", "created_at", "annotator_id")}
        deliveries = [(d.event, {k: v for k, v in d.payload.items() if k not in ("edit_id", "item_id")})
                      for d in session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id))
                      if d.payload["item_id"] == edit.item_id]
    return columns, deliveries


def test_the_driver_stores_what_the_session_stores(settings_env, make_user, make_project, add_items):
    on_driver, in_session = make_user("ann"), make_user("bob")
    project = make_project(n=1, members=[on_driver, in_session])
    add_items(project, [("P1", "Teh same original."), ("P2", "Teh same original.")])
    with session_scope() as session:
        create_webhook(session, "https://hooks.example/all", ["*"], None)

    async def lease_and_submit(pool):
        _, task = await _next(pool, project.id, on_driver)
        return task, await _submit(pool, task.lease.id, on_driver, "The same original.")

    task, edit = _on_pool(lease_and_submit)
    assert task.lease.state == LeaseState.ACTIVE and task.item.prompt == "P1" and task.project.id == project.id
    with session_scope() as session:
        lease = next_task(session, project, in_session).lease
    with session_scope() as session:
        other = submit(session, lease.id, in_session, Outcome.EDITED, "The same original.")
    assert _stored(edit.id) == _stored(other.id)
    assert _stored(edit.id)[1] == [("edit.submitted", {"project_id": project.id, "outcome": "edited",
                                                       "edit_rate": edit.edit_rate, "not_minimal": edit.not_minimal}),
                                   ("item.completed", {"project_id": project.id, "completed_count": 1})]


def test_skips_and_others_tasks_take_the_locking_path_on_the_driver(settings_env, make_user, make_project,
                                                                     add_items):
    ann, other = make_user("ann"), make_user("other")
    project = make_project(members=[ann, other])
    add_items(project, [("P", "The original answer.")])

    async def attempts(pool):
        _, task = await _next(pool, project.id, ann)
        with pytest.raises(NotFound):
            await _submit(pool, task.lease.id, other, "Not my task.")
        with pytest.raises(DomainError, match="Say why"):
            await _submit(pool, task.lease.id, ann, "", Outcome.SKIPPED, skip_reason=" ")
        return task, await _submit(pool, task.lease.id, ann, "", Outcome.SKIPPED, skip_reason="Off topic")

    task, skipped = _on_pool(attempts)
    assert skipped.outcome == Outcome.SKIPPED and skipped.skip_reason == "Off topic"
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Edit)) == 1
        assert session.get(Lease, task.lease.id).state == LeaseState.SKIPPED


def test_the_pool_replaces_a_connection_the_server_dropped(settings_env, make_user, make_project, add_items,
                                                            monkeypatch):
    ann = make_user("ann")
    project = make_project(n=1, members=[ann])
    add_items(project, [("P1", "One."), ("P2", "Two.")])
    monkeypatch.setattr(driver, "IDLE_PING_S", 0.0)  # every checkout pings

    async def after_a_restart(pool):
        _, first = await _next(pool, project.id, ann)
        await _submit(pool, first.lease.id, ann, "Uno.")
        with session_scope() as session:  # what a server restart does to idle connections
            dropped = session.scalar(text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                          "WHERE application_name = :name AND datname = current_database()"),
                                     {"name": driver.APPLICATION_NAME})
        return dropped, (await _next(pool, project.id, ann))[1]

    dropped, second = _on_pool(after_a_restart, size=1)
    assert dropped >= 1 and second is not None and second.item.prompt == "P2"


def test_the_hot_statements_compile_for_the_driver_as_for_sqlalchemy(settings_env):
    """One SQL either way: the driver runs exactly what SQLAlchemy would send for the same statement."""
    from app.services import webhooks
    from app.services.annotation import (
        _AT_ONCE,
        _AT_ONCE_READ,
        _CLOSE_LEASE,
        _COUNT_ANNOTATION,
        _EDIT_OF_LEASE,
        _INSERT_EDIT,
        _ITEM_PROJECT,
    )
    from app.services.queue import (
        _CANDIDATE,
        _CURRENT_TASK,
        _ENTER,
        _LEASE_IF_SLOT_FREE,
        _SWEEP,
        _TASK,
        LOCKED_TASK,
        OTHER_LEASES,
    )

    with get_engine().connect() as conn:  # the engine's dialect, initialised by a real server
        dialect = conn.dialect
    for statement in (_AT_ONCE, _AT_ONCE_READ, _ITEM_PROJECT, _CANDIDATE["postgresql"], _CURRENT_TASK,
                      *(enter["postgresql"] for enter in _ENTER.values()), _LEASE_IF_SLOT_FREE, _SWEEP["postgresql"],
                      _TASK, LOCKED_TASK["postgresql"], OTHER_LEASES, _EDIT_OF_LEASE, _COUNT_ANNOTATION,
                      *_CLOSE_LEASE.values(), _INSERT_EDIT, webhooks.SUBSCRIPTIONS["postgresql"],
                      webhooks.QUEUE_DELIVERY):
        compiled = driver.compiled_for_driver(statement)
        # `$n` back to the engine's `%(name)s`: otherwise the very SQL SQLAlchemy sends
        named = re.sub(r"\$(\d+)", lambda n, order=compiled.order: f"%({order[int(n.group(1)) - 1]})s", compiled.sql)
        assert named == str(statement.compile(dialect=dialect))


def test_expanding_parameters_are_refused_on_the_driver(settings_env):
    with pytest.raises(ValueError, match="ANY"):
        driver.compiled_for_driver(select(Item.id).where(Item.id.in_([1, 2])))
