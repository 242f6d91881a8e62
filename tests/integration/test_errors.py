"""One answer to a refused request (app.errors, app.deps): a page for a browser, a fragment for htmx, JSON
for the API, each with the refusal's own status code and message; and the settings behind the vocabulary."""

from __future__ import annotations

import pytest

from app.db import session_scope
from app.errors import Conflict, DomainError, NotFound
from app.models import User
from app.services import api_tokens, datasets, export, jobs, review, webhooks

on_sqlite = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@on_sqlite
def test_a_browser_gets_a_page_htmx_a_fragment_and_the_api_json(web_client, login_as, make_user):
    make_user("rev", "reviewer")
    admin = make_user("boss", "admin")
    csrf = login_as(web_client, "rev")

    page = web_client.get("/review/999", headers={"Accept": "text/html"})
    assert page.status_code == 404
    assert "<html" in page.text and "This edit does not exist or is not yours to review." in page.text

    fragment = web_client.post("/review/999/diff", data={"fixed_text": "x"},
                               headers={"HX-Request": "true", "X-CSRF-Token": csrf})
    assert fragment.status_code == 404
    assert "<html" not in fragment.text and 'role="alert"' in fragment.text
    assert "This edit does not exist" in fragment.text

    with session_scope() as session:
        _, secret = api_tokens.create_token(session, session.get(User, admin.id), "t", ["datasets:read"])
    answer = web_client.get("/api/v1/datasets/999", headers={"Authorization": f"Bearer {secret}"})
    assert answer.status_code == 404 and answer.json() == {"detail": "dataset version 999 not found"}


@on_sqlite
def test_an_unknown_review_verdict_is_a_400_that_names_the_field(web_client, login_as, make_user):
    make_user("rev", "reviewer")
    csrf = login_as(web_client, "rev")
    answer = web_client.post("/review/1", data={"csrf_token": csrf, "verdict": "maybe"})
    assert answer.status_code == 400 and "verdict: unknown value &#39;maybe&#39;" in answer.text


@on_sqlite
def test_a_malformed_api_body_or_query_is_a_422_that_names_the_field_in_the_validators_words(web_client, make_user):
    admin = make_user("boss", "admin")
    with session_scope() as session:
        _, secret = api_tokens.create_token(session, session.get(User, admin.id), "t",
                                            ["datasets:read", "datasets:write"])
    headers = {"Authorization": f"Bearer {secret}"}
    body = {"name": "v", "filter": {"min_edit_rate": 0.5, "max_edit_rate": 0.1}}
    answer = web_client.post("/api/v1/datasets", json=body, headers=headers)
    assert answer.status_code == 422 and "Value error" not in answer.text
    assert answer.json()["detail"] == [{"loc": ["body", "filter"], "field": "filter", "type": "value_error",
                                        "msg": "min_edit_rate 0.5 is above max_edit_rate 0.1"}]
    body = {"name": "v", "filter": {"outcomes": ["great"]}}
    [error] = web_client.post("/api/v1/datasets", json=body, headers=headers).json()["detail"]
    assert error["field"] == "filter.outcomes.0" and error["msg"].startswith("Input should be 'edited'")
    query = web_client.get("/api/v1/datasets", params={"project_id": "x"}, headers=headers)
    assert query.status_code == 422
    assert [(e["field"], e["loc"]) for e in query.json()["detail"]] == [("project_id", ["query", "project_id"])]


@on_sqlite
def test_a_malformed_query_on_a_page_is_an_error_page_naming_the_field(web_client, login_as, make_user):
    make_user("boss", "admin")
    login_as(web_client, "boss")
    page = web_client.get("/datasets/x", headers={"Accept": "text/html"})
    assert page.status_code == 422 and "<html" in page.text
    assert "version_id: Input should be a valid integer" in page.text


def test_every_domain_refusal_shares_the_base_and_has_a_status():
    refusals = [NotFound, Conflict, review.DomainError, datasets.DatasetError, export.ExportError,
                export.VersionNotFound, jobs.JobError, webhooks.WebhookError, api_tokens.TokenError]
    assert all(issubclass(cls, DomainError) for cls in refusals)
    assert {cls("x").status_code for cls in refusals} == {400, 404, 409, 422}
    assert not issubclass(DomainError, ValueError)  # a programming error's ValueError is never shown to a user


@on_sqlite
def test_the_lease_default_setting_is_what_a_new_project_gets(settings_env, monkeypatch, web_client, login_as,
                                                               make_user, default_tokenizer_path):
    from app.services import projects
    from app.settings import get_settings

    monkeypatch.setenv("REDLINE_LEASE_SECONDS_DEFAULT", "600")
    get_settings.cache_clear()
    admin = make_user("boss", "admin")
    login_as(web_client, "boss")
    form = web_client.get("/admin/projects").text
    assert 'name="lease_minutes" type="number" step="0.5" min="0.5" value="10.0"' in form
    with session_scope() as session:
        made = projects.create_project(session, projects.ProjectSettings("p", str(default_tokenizer_path)), admin)
        assert made.lease_seconds == 600
