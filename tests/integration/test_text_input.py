"""The NUL rule where text enters over HTTP (forms, JSON bodies, query strings), and the favicon."""

from __future__ import annotations

import re

from sqlalchemy import func, select

from app.db import session_scope
from app.models import Edit
from app.services import api_tokens


def test_nul_in_a_form_json_body_or_query_is_refused_naming_the_field(
    web_client, make_user, make_project, add_items, login_as
):
    ann = make_user("ann", "annotator")
    admin = make_user("boss", "admin")
    project = make_project(members=[ann])
    add_items(project, [("Prompt", "An answer.")])
    csrf = login_as(web_client, "ann")
    editor = web_client.post(f"/annotate/{project.id}/next", data={"csrf_token": csrf})
    lease = re.search(r"/annotate/task/(\d+)/submit", editor.text).group(1)
    submit = web_client.post(f"/annotate/task/{lease}/submit", data={
        "csrf_token": csrf, "text": "An\x00answer.", "outcome": "edited"})
    assert submit.status_code == 422
    assert "Field 'text' contains a NUL character (U+0000) at character 3" in submit.text
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Edit)) == 0
    assert web_client.get("/review?project=1%00").status_code == 422

    with session_scope() as session:
        _, secret = api_tokens.create_token(session, session.merge(admin), "t", ["items:write"])
    web_client.cookies.clear()  # a token holder, not the browser session
    api = web_client.post(f"/api/v1/projects/{project.id}/items", headers={"Authorization": f"Bearer {secret}"},
                          json={"filename": "x.json", "records": [{"prompt": "p", "response": "r\u0000"}]})
    assert api.status_code == 422
    assert api.json()["detail"].startswith("Field 'records[0].response' contains a NUL character")


def test_favicon_is_linked_and_served(web_client):
    assert '<link rel="icon" href="/static/favicon.svg"' in web_client.get("/login").text
    for path in ("/static/favicon.svg", "/favicon.ico"):
        response = web_client.get(path)
        assert response.status_code == 200 and response.headers["content-type"].startswith("image/svg+xml")
