"""The dataset pages and the API-token settings page, through the real app with a logged-in browser session."""

from __future__ import annotations

import re

import pytest
from factories import make_corpus

from app.db import session_scope
from app.services import freeze
from app.services.datasets import DatasetError


@pytest.fixture
def corpus(settings_env):
    with session_scope() as session:
        return make_corpus(session)


@pytest.fixture
def researcher(web_client, corpus, make_user, login_as) -> str:
    make_user("rita", "researcher")
    return login_as(web_client, "rita")


def test_pages_need_a_login_and_the_right_role(web_client, corpus, make_user, login_as):
    anonymous = web_client.get("/datasets", headers={"Accept": "text/html"}, follow_redirects=False)
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login")
    make_user("ann", "annotator")
    login_as(web_client, "ann")
    assert web_client.get("/datasets", headers={"Accept": "text/html"}).status_code == 403
    tokens = web_client.get("/settings/tokens")
    assert tokens.status_code == 200 and "has no API access" in tokens.text


def test_preview_create_and_download_a_version(web_client, corpus, researcher):
    page = web_client.get("/datasets")
    assert page.status_code == 200 and "Freeze version" in page.text
    form = {"csrf_token": researcher, "name": "from the page", "project_id": str(corpus["project"].id),
            "outcomes": ["edited"], "review_statuses": ["accepted", "pending"]}
    preview = web_client.post("/datasets/preview", data=form, headers={"HX-Request": "true"})
    assert "4 matching edits" in preview.text
    bad_preview = web_client.post("/datasets/preview", data={**form, "min_edit_rate": "2", "max_edit_rate": "1"})
    assert "filter: min_edit_rate 2.0 is above max_edit_rate 1.0" in bad_preview.text
    assert "Value error" not in bad_preview.text  # the filter's own words, not pydantic's prefix

    created = web_client.post("/datasets", data=form, follow_redirects=False)
    assert created.status_code == 303  # at once: a worker freezes it
    version_id = int(created.headers["location"].rsplit("/", 1)[1])
    freezing = web_client.get(created.headers["location"])
    assert 'data-state="freezing"' in freezing.text and "waiting for a worker" in freezing.text
    assert f'hx-get="/datasets/{version_id}/progress"' in freezing.text and "/download" not in freezing.text
    job_id = re.search(r'href="/jobs/(\d+)">Freeze job', freezing.text).group(1)
    assert web_client.get(f"/api/v1/datasets/{version_id}/download").status_code == 409
    still = web_client.get(f"/datasets/{version_id}/progress", headers={"HX-Request": "true"})
    assert 'data-state="freezing"' in still.text and "hx-refresh" not in still.headers

    freeze.freeze_requested(version_id)  # what the worker's job process does (tests/integration/test_freeze_job.py)
    done = web_client.get(f"/datasets/{version_id}/progress", headers={"HX-Request": "true"})
    assert done.headers["hx-refresh"] == "true"
    job_page = web_client.get(f"/jobs/{job_id}")
    assert f'<a href="/datasets/{version_id}">dataset version #{version_id}' in job_page.text
    assert "Run again" not in job_page.text  # a freeze is asked for again from the datasets page
    detail = web_client.get(created.headers["location"])
    hash_ = re.search(r"<code>([0-9a-f]{64})</code>", detail.text).group(1)
    assert "from the page" in detail.text and "redline export download" in detail.text
    link = re.search(r'href="(/api/v1/datasets/\d+/download\?format=pairs-jsonl)"', detail.text).group(1)
    download = web_client.get(link)
    assert download.status_code == 200 and len(download.text.splitlines()) == 4
    assert download.headers["x-content-hash"] == hash_
    listing = web_client.get("/datasets")
    assert "from the page" in listing.text and hash_[:12] in listing.text


def test_bad_form_is_shown_with_reasons_escaped_and_writes_nothing(web_client, corpus, researcher):
    form = {"csrf_token": researcher, "name": "<script>alert(1)</script>", "min_edit_rate": "0.9",
            "max_edit_rate": "0.1"}
    response = web_client.post("/datasets", data=form)
    assert response.status_code == 422
    assert "min_edit_rate 0.9 is above max_edit_rate 0.1" in response.text and "Value error" not in response.text
    assert "<script>alert(1)</script>" not in response.text and "&lt;script&gt;" in response.text
    unknown = web_client.post("/datasets", data={"csrf_token": researcher, "name": "x", "project_id": "999"})
    assert unknown.status_code == 422 and "project 999 does not exist" in unknown.text
    assert web_client.post("/datasets", data={"name": "no csrf"}).status_code == 403
    assert "No dataset versions yet" in web_client.get("/datasets").text
    assert web_client.get("/datasets/99999").status_code == 404


def test_a_filter_that_selects_nothing_gives_a_failed_version_that_says_why(web_client, corpus, researcher):
    empty = web_client.post("/datasets", data={"csrf_token": researcher, "name": "x", "outcomes": ["unfixable"],
                                               "max_edit_rate": "0"}, follow_redirects=False)
    version_id = int(empty.headers["location"].rsplit("/", 1)[1])
    with pytest.raises(DatasetError, match="selects no edits"):
        freeze.freeze_requested(version_id)
    page = web_client.get(f"/datasets/{version_id}")
    assert 'data-state="failed"' in page.text and "selects no edits" in page.text and "hx-get" not in page.text
    listing = web_client.get("/datasets")
    assert f'<a href="/datasets/{version_id}" class="badge bad" data-state="failed">failed</a>' in listing.text
    assert web_client.get(f"/api/v1/datasets/{version_id}/download").status_code == 409


def test_token_is_shown_once_works_and_can_be_revoked(web_client, corpus, researcher):
    created = web_client.post(
        "/settings/tokens",
        data={"csrf_token": researcher, "name": "<b>cluster</b>", "scopes": ["datasets:read", "projects:read"]},
    )
    assert created.status_code == 201
    secret = re.search(r'<code id="new-token" class="secret">(rl_[^<]+)</code>', created.text).group(1)
    assert "&lt;b&gt;cluster&lt;/b&gt;" in created.text
    later = web_client.get("/settings/tokens")
    assert secret not in later.text and secret[:10] in later.text

    api = web_client.__class__(web_client.app, base_url="http://testserver")  # no session cookie
    assert api.get("/api/v1/datasets", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    beyond = web_client.post("/settings/tokens", data={"csrf_token": researcher, "name": "x",
                                                       "scopes": ["webhooks:admin"]})
    assert beyond.status_code == 422 and "cannot grant" in beyond.text

    token_id = re.search(r'action="/settings/tokens/(\d+)/revoke"', later.text).group(1)
    revoked = web_client.post(f"/settings/tokens/{token_id}/revoke", data={"csrf_token": researcher},
                              follow_redirects=False)
    assert revoked.status_code == 303
    assert api.get("/api/v1/datasets", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    assert "revoked" in web_client.get("/settings/tokens").text
