"""The model-editor pages and API: admin only, CSRF, the key never comes back, a test connection that
fails says why, a job starts for the worker."""

from __future__ import annotations

import asyncio
import re

import pytest
from sqlalchemy import select

from app.db import session_scope
from app.editors import bulk
from app.models import Job, ModelEditor, ProjectMember
from app.services import api_tokens

KEY = "sk-page-secret-987"


def _form(csrf: str, **fields) -> dict:
    return {"csrf_token": csrf, "name": "smol", "base_url": "http://127.0.0.1:9/v1", "model": "m",
            "api_key": KEY, "max_tokens": "64", "timeout_s": "5", "max_concurrency": "2", **fields}


def test_admin_adds_an_editor_tests_it_and_starts_a_job(web_client, make_user, login_as, make_project, add_items,
                                                        tmp_path):
    make_user("boss", "admin")
    project = make_project("Editing")
    add_items(project, [("Capital of France?", "It is Lyon.")])
    csrf = login_as(web_client, "boss")
    page = web_client.post("/admin/editors", data=_form(csrf))
    assert page.status_code == 200 and KEY not in page.text
    assert "Model editor smol" in page.text and "set — leave empty to keep" in page.text
    with session_scope() as session:
        editor = session.scalars(select(ModelEditor)).one()
    listing = web_client.get("/admin/editors")
    assert "smol" in listing.text and KEY not in listing.text

    bad = web_client.post("/admin/editors", data=_form(csrf, name="other", base_url="ftp://x"))
    assert bad.status_code == 400 and "base_url" in bad.text

    tried = web_client.post(f"/admin/editors/{editor.id}/test", data={"csrf_token": csrf})
    assert "No answer" in tried.text and "cannot connect" in tried.text and KEY not in tried.text

    saved = web_client.post(f"/admin/editors/{editor.id}", data=_form(csrf, api_key="", model="m2"))
    assert saved.status_code == 200
    with session_scope() as session:
        editor = session.get(ModelEditor, editor.id)
        assert editor.model == "m2" and editor.api_key_encrypted  # an empty key field keeps the key

    started = web_client.post(f"/admin/editors/{editor.id}/jobs", data={
        "csrf_token": csrf, "project_id": str(project.id), "mode": "annotate", "limit": ""}, follow_redirects=False)
    assert started.status_code == 303
    job_id = int(re.search(r"/jobs/(\d+)", started.headers["location"]).group(1))
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert (job.kind, job.config["editor_id"], job.config["mode"]) == ("editor", editor.id, "annotate")
        assert session.get(ProjectMember, (project.id, editor.user_id))  # the account joined the project
    # The job (as the worker runs it) meets a refused connection: it stops, and the job page says why.
    with pytest.raises(bulk.EndpointDown):
        asyncio.run(bulk.run_job(job.config, tmp_path / "out"))
    page = web_client.get(f"/jobs/{job_id}")
    assert "0 done, 1 failed" in page.text and "cannot connect to the endpoint" in page.text


def test_editor_pages_are_admin_only_and_need_csrf(web_client, make_user, login_as):
    make_user("ann", "annotator")
    csrf = login_as(web_client, "ann")
    assert web_client.get("/admin/editors").status_code == 403
    assert web_client.post("/admin/editors", data=_form(csrf)).status_code == 403
    web_client.post("/logout", data={"csrf_token": csrf})
    make_user("boss", "admin")
    login_as(web_client, "boss")
    assert web_client.post("/admin/editors", data=_form("wrong")).status_code == 403


def test_api_creates_and_lists_editors_without_keys(web_client, make_user):
    admin = make_user("boss", "admin")
    with session_scope() as session:
        _, secret = api_tokens.create_token(session, admin, "t", ["editors:admin"])
    headers = {"Authorization": f"Bearer {secret}"}
    body = {"name": "api-ed", "base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key": KEY}
    created = web_client.post("/api/v1/editors", json=body, headers=headers)
    assert created.status_code == 201 and created.json()["api_key_set"] and KEY not in created.text
    listed = web_client.get("/api/v1/editors", headers=headers)
    assert [e["name"] for e in listed.json()] == ["api-ed"] and KEY not in listed.text
    bad = web_client.post("/api/v1/editors", json={**body, "name": "x y"}, headers=headers)
    assert bad.status_code == 400 and "name" in bad.json()["detail"]
    unknown = web_client.post("/api/v1/editors", json={**body, "name": "api-ed2", "temprature": 1}, headers=headers)
    assert unknown.status_code == 422 and "temprature" in unknown.text
    editor_id = created.json()["id"]
    changed = web_client.put(f"/api/v1/editors/{editor_id}", json={k: v for k, v in body.items() if k != "api_key"}
                             | {"max_tokens": 64}, headers=headers)
    assert changed.status_code == 200 and changed.json()["max_tokens"] == 64 and changed.json()["api_key_set"]
