"""The project setting "model edits count toward N, or come on top of it": rejections and give-backs
release only what counted, changing the setting recounts every item, and the settings page and the API
show it. (That both submit paths obey it: test_submit_rules.py.)"""

from __future__ import annotations

from factories import make_model_account, next_task, submit
from sqlalchemy import select

from app.db import session_scope
from app.models import Item, ItemStatus, Outcome, Project, User, Verdict
from app.services import api_tokens, review
from app.services.projects import ProjectSettings, update_project


def _edit(user: User, project: Project, text: str) -> int:
    """`user` leases their next item of the project and submits `text` for it; the edit's id."""
    with session_scope() as session:
        task = next_task(session, project, user)
        return submit(session, task.lease.id, user, Outcome.EDITED, text).id


def _counts(project: Project) -> list[tuple[int, str]]:
    with session_scope() as session:
        return [(i.completed_count, i.status) for i in session.scalars(
            select(Item).where(Item.project_id == project.id).order_by(Item.id))]


def _set_model_edits_count(project: Project, value: bool) -> None:
    with session_scope() as session:
        row = session.get(Project, project.id)
        update_project(session, row, ProjectSettings(
            name=row.name, tokenizer=row.tokenizer, annotations_per_item=row.annotations_per_item,
            minimality_budget=row.minimality_budget, lease_seconds=row.lease_seconds, model_edits_count=value), None)


def test_rejections_release_only_counted_edits_and_a_changed_setting_recounts(settings_env, make_user, make_project,
                                                                               add_items):
    ann, rev = make_user("ann"), make_user("rev", "reviewer")
    project = make_project(n=2, members=[ann, rev], model_edits_count=False)
    add_items(project, [("P1", "Teh first answer."), ("P2", "Teh second answer.")])
    with session_scope() as session:
        model = make_model_account(session, project.id)
    _edit(ann, project, "The first answer.")
    model_first, model_second = _edit(model, project, "The first answer!"), _edit(model, project, "The second answer.")
    assert _counts(project) == [(1, ItemStatus.OPEN), (0, ItemStatus.OPEN)]  # the model's edits on top

    with session_scope() as session:  # a model edit on top of N is rejected: the item keeps its count
        review.decide(session, session.get(User, rev.id), model_first, Verdict.REJECT, comment="not minimal")
    assert _counts(project) == [(1, ItemStatus.OPEN), (0, ItemStatus.OPEN)]

    _set_model_edits_count(project, True)  # now the model's pending edit counts; its rejected one does not
    assert _counts(project) == [(1, ItemStatus.OPEN), (1, ItemStatus.OPEN)]
    _edit(ann, project, "The second answer.")
    assert _counts(project) == [(1, ItemStatus.OPEN), (2, ItemStatus.COMPLETE)]
    _set_model_edits_count(project, False)  # back on top: the item needs a person's edit again
    assert _counts(project) == [(1, ItemStatus.OPEN), (1, ItemStatus.OPEN)]
    _set_model_edits_count(project, True)
    assert _counts(project) == [(1, ItemStatus.OPEN), (2, ItemStatus.COMPLETE)]

    with session_scope() as session:  # a model edit that counted is rejected: the item needs one more
        review.decide(session, session.get(User, rev.id), model_second, Verdict.REJECT, comment="wrong")
    assert _counts(project) == [(1, ItemStatus.OPEN), (1, ItemStatus.OPEN)]


def test_settings_page_and_api_show_the_setting(web_client, make_user, login_as, make_project, add_items):
    admin = make_user("boss", "admin")
    project = make_project("Counting", n=1, members=[])
    add_items(project, [("P", "Teh answer.")])
    with session_scope() as session:
        model = make_model_account(session, project.id)
    csrf = login_as(web_client, "boss")
    page = web_client.get(f"/admin/projects/{project.id}")
    assert 'name="model_edits_count"' in page.text and '<option value="true" selected>' in page.text

    form = {"csrf_token": csrf, "name": "Counting", "tokenizer": project.tokenizer, "annotations_per_item": "1",
            "minimality_budget": "0.35", "model_edits_count": "false"}
    assert web_client.post(f"/admin/projects/{project.id}", data=form, follow_redirects=False).status_code == 303
    assert '<option value="false" selected>' in web_client.get(f"/admin/projects/{project.id}").text
    _edit(model, project, "The answer.")

    with session_scope() as session:
        _, secret = api_tokens.create_token(session, admin, "t", ["projects:read"])
    body = web_client.get(f"/api/v1/projects/{project.id}", headers={"Authorization": f"Bearer {secret}"}).json()
    assert body["model_edits_count"] is False
    # The model's edit is an edit, but no annotation toward N.
    assert body["progress"]["edits_by_outcome"] == {"edited": 1}
    assert (body["progress"]["annotations_done"], body["progress"]["items_open"]) == (0, 1)

    del form["model_edits_count"]  # a form without the field keeps the default: model edits count
    web_client.post(f"/admin/projects/{project.id}", data=form)
    body = web_client.get(f"/api/v1/projects/{project.id}", headers={"Authorization": f"Bearer {secret}"}).json()
    assert body["model_edits_count"] is True
    assert (body["progress"]["annotations_done"], body["progress"]["items_complete"]) == (1, 1)
