"""The JSON API end to end through the real app (middleware included) on SQLite and Postgres."""

from __future__ import annotations

import hashlib
import json

import pytest
from factories import make_corpus
from sqlalchemy import select

from app.db import session_scope
from app.models import ApiToken, DatasetRow, Role, User
from app.services import api_tokens, freeze

API = "/api/v1"


@pytest.fixture
def corpus(settings_env):
    with session_scope() as session:
        return make_corpus(session)


def _token(user: User, scopes: list[str] | None = None) -> str:
    with session_scope() as session:
        owner = session.get(User, user.id)
        _, secret = api_tokens.create_token(session, owner, "test", scopes or sorted(api_tokens.allowed_scopes(owner)))
    return secret


def _auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def admin_headers(corpus) -> dict[str, str]:
    return _auth(_token(corpus["admin"]))


def test_api_docs_need_a_login_or_a_token(web_client, admin_headers):
    for path in ("/openapi.json", "/docs"):
        assert web_client.get(path).status_code == 401
        assert web_client.get(path, headers=_auth("rl_not-a-real-token")).status_code == 401
        assert web_client.get(path, headers=admin_headers).status_code == 200
    for path in ("/redoc", "/docs/oauth2-redirect"):
        assert web_client.get(path, headers=admin_headers).status_code == 404
    page = web_client.get("/docs", headers=admin_headers).text
    assert "/static/vendor/swagger-ui-bundle.js" in page and "cdn" not in page


def test_every_api_route_requires_authentication(web_client, corpus, admin_headers):
    schema = web_client.get("/openapi.json", headers=admin_headers).json()
    api_paths = [p for p in schema["paths"] if p.startswith(API)]
    assert len(api_paths) >= 6
    for path, operations in schema["paths"].items():
        if not path.startswith(API):
            continue
        concrete = path.replace("{version_id}", "1").replace("{hook_id}", "1").replace("{project_id}", "1")
        for method in operations:
            response = web_client.request(method.upper(), concrete)
            # Unsafe methods with no credential at all are stopped by the CSRF check first.
            expected = 401 if method == "get" else 403
            assert response.status_code == expected, (method, path, response.status_code)
            bad = web_client.request(method.upper(), concrete, headers=_auth("rl_not-a-real-token"))
            assert bad.status_code == 401 and "invalid" in bad.json()["detail"]
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_tokens_are_hashed_scoped_by_role_revocable_and_track_use(web_client, corpus):
    reviewer = corpus["reviewer"]
    secret = _token(reviewer)
    with session_scope() as session:
        stored = session.scalars(select(ApiToken).where(ApiToken.user_id == reviewer.id)).one()
        assert stored.token_hash == hashlib.sha256(secret.encode()).hexdigest()
        assert secret.startswith(stored.prefix) and len(stored.prefix) == 10 and stored.last_used_at is None
        with pytest.raises(api_tokens.TokenError, match="reviewer role cannot grant"):
            api_tokens.create_token(session, session.get(User, reviewer.id), "x", ["datasets:write"])
        with pytest.raises(api_tokens.TokenError, match="unknown scope"):
            api_tokens.create_token(session, session.get(User, reviewer.id), "x", ["root"])

    assert web_client.get(f"{API}/projects", headers=_auth(secret)).status_code == 200
    assert web_client.get(f"{API}/datasets", headers=_auth(secret)).status_code == 403
    with session_scope() as session:
        assert session.get(ApiToken, stored.id).last_used_at is not None
        # Demoting the owner narrows the token at once.
        session.get(User, reviewer.id).role = Role.ANNOTATOR.value
    denied = web_client.get(f"{API}/projects", headers=_auth(secret))
    assert denied.status_code == 403 and "projects:read" in denied.json()["detail"]
    with session_scope() as session:
        session.get(User, reviewer.id).role = Role.REVIEWER.value
        api_tokens.revoke(session, stored.id, session.get(User, reviewer.id))
    assert web_client.get(f"{API}/projects", headers=_auth(secret)).status_code == 401


def test_projects_report_progress(web_client, corpus, admin_headers):
    projects = web_client.get(f"{API}/projects", headers=admin_headers).json()
    assert [p["name"] for p in projects] == [corpus["project"].name]
    progress = projects[0]["progress"]
    assert progress["items_total"] == 8 and progress["annotations_needed"] == 8
    assert progress["annotations_done"] == 7  # six edits plus the unfixable one; the skip does not count
    assert progress["edits_by_outcome"] == {"edited": 5, "no_change_needed": 1, "skipped": 1, "unfixable": 1}
    assert progress["reviews_pending"] == 3
    one = web_client.get(f"{API}/projects/{corpus['project'].id}", headers=admin_headers).json()
    assert one["progress"] == progress
    missing = web_client.get(f"{API}/projects/999", headers=admin_headers)
    assert missing.status_code == 404 and "project 999" in missing.json()["detail"]


def test_edits_are_paged_by_id_with_optional_labels(web_client, corpus, admin_headers):
    first = web_client.get(f"{API}/edits", params={"limit": 3}, headers=admin_headers).json()
    assert len(first["items"]) == 3 and first["items"][0]["token_labels"] is None
    rest = web_client.get(
        f"{API}/edits", params={"limit": 100, "after_id": first["next_after_id"], "include_labels": True},
        headers=admin_headers,
    ).json()
    assert rest["next_after_id"] is None and len(first["items"]) + len(rest["items"]) == 8
    assert all(e["token_labels"]["algorithm"] for e in rest["items"])
    pending = web_client.get(f"{API}/edits", params={"review_status": "pending", "outcome": "edited"},
                             headers=admin_headers).json()
    assert {e["id"] for e in pending["items"]} == {corpus["edits"][4].id, corpus["edits"][5].id}
    assert all(e["annotator_id"].startswith("ann_") for e in pending["items"])
    bad = web_client.get(f"{API}/edits", params={"limit": 0, "outcome": "great"}, headers=admin_headers)
    assert bad.status_code == 422
    assert {tuple(e["loc"]) for e in bad.json()["detail"]} == {("query", "limit"), ("query", "outcome")}


def test_create_list_and_download_dataset_versions(web_client, corpus, admin_headers):
    body = {"name": "api v1", "filter": {"project_id": corpus["project"].id,
                                         "review_statuses": ["accepted", "pending"]}}
    created = web_client.post(f"{API}/datasets", json=body, headers=admin_headers)
    assert created.status_code == 202, created.text  # at once: a worker freezes it
    freezing = created.json()
    assert created.headers["location"] == f"{API}/datasets/{freezing['id']}"
    assert (freezing["state"], freezing["progress"], freezing["downloads"], freezing["content_hash"]) == (
        "freezing", 0.0, {}, "")
    assert web_client.get(f"{API}/datasets/{freezing['id']}/download", headers=admin_headers).status_code == 409
    freeze.freeze_requested(freezing["id"])  # what the worker's job process does
    version = web_client.get(created.headers["location"], headers=admin_headers).json()
    assert (version["state"], version["progress"], version["job_id"]) == ("ready", 1.0, freezing["job_id"])
    assert version["row_count"] == 4 and len(version["content_hash"]) == 64 and version["hash_format"] == 2
    assert set(version["downloads"]) == {
        "pairs-jsonl", "pairs-parquet", "preference-jsonl", "preference-conversational-jsonl", "sft-jsonl",
        "sft-conversational-jsonl", "card",
    }
    assert web_client.get(f"{API}/datasets/{version['id']}", headers=admin_headers).json() == version
    assert [v["id"] for v in web_client.get(f"{API}/datasets", headers=admin_headers).json()] == [version["id"]]

    download = web_client.get(version["downloads"]["pairs-jsonl"], headers=admin_headers)
    assert download.status_code == 200
    filename = f"dataset-{version['id']}-pairs-jsonl.jsonl"
    assert download.headers["content-disposition"] == f'attachment; filename="{filename}"'
    assert download.headers["x-content-hash"] == version["content_hash"]
    with session_scope() as session:
        frozen = session.scalars(select(DatasetRow.data).order_by(DatasetRow.seq)).all()
    assert download.text.splitlines() == frozen  # the stored text, byte for byte
    parquet = web_client.get(version["downloads"]["pairs-parquet"], headers=admin_headers)
    assert parquet.content[:4] == b"PAR1" and parquet.content[-4:] == b"PAR1"
    card = web_client.get(version["downloads"]["card"], headers=admin_headers)
    assert card.headers["content-type"].startswith("text/markdown") and version["content_hash"] in card.text


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"name": "x", "filter": {"min_edit_rate": 0.9, "max_edit_rate": 0.1}}, 422, "above max_edit_rate"),
        ({"name": "x", "filter": {"outcome": "edited"}}, 422, "outcome"),
        ({"name": "x", "filter": {"project_id": 4242}}, 422, "project 4242 does not exist"),
        ({"filter": {}}, 422, "name"),
        ({"name": "x", "filter": {"annotator_ids": [99999999999]}}, 422, "annotator_ids"),
    ],
)
def test_bad_dataset_requests_say_what_is_wrong(web_client, corpus, admin_headers, body, status, needle):
    response = web_client.post(f"{API}/datasets", json=body, headers=admin_headers)
    assert response.status_code == status
    assert needle in json.dumps(response.json()["detail"])


def test_bad_downloads_say_what_is_wrong(web_client, corpus, admin_headers):
    created = web_client.post(f"{API}/datasets", json={"name": "d"}, headers=admin_headers).json()
    url = f"{API}/datasets/{created['id']}/download"
    unknown = web_client.get(url, params={"format": "csv"}, headers=admin_headers)
    assert unknown.status_code == 422 and "pairs-jsonl" in json.dumps(unknown.json()["detail"])
    probing = web_client.get(url, params={"tokenizer": "/etc"}, headers=admin_headers)
    assert probing.status_code == 422 and "not allowed" in probing.json()["detail"]
    absent = web_client.get(url, params={"tokenizer": "nobody/no-such-tokenizer"}, headers=admin_headers)
    assert absent.status_code == 422 and "cannot be loaded" in absent.json()["detail"]
    missing = web_client.get(f"{API}/datasets/999/download", headers=admin_headers)
    assert missing.status_code == 404 and "does not exist" in missing.json()["detail"]


def test_browser_session_uses_the_api_with_csrf(web_client, corpus, login_as, make_user):
    make_user("researcher-web", "researcher")
    csrf = login_as(web_client, "researcher-web")
    assert web_client.get(f"{API}/datasets").status_code == 200
    refused = web_client.post(f"{API}/datasets", json={"name": "web"})
    assert refused.status_code == 403 and "CSRF" in refused.text
    accepted = web_client.post(f"{API}/datasets", json={"name": "web"}, headers={"X-CSRF-Token": csrf})
    assert accepted.status_code == 202
    assert web_client.get(f"{API}/webhooks").status_code == 403  # researchers do not manage webhooks


def test_webhooks_are_managed_by_admins_and_secret_shown_once(web_client, corpus, admin_headers):
    created = web_client.post(
        f"{API}/webhooks", json={"url": "https://example.org/hook", "events": ["edit.submitted"]},
        headers=admin_headers,
    )
    assert created.status_code == 201 and len(created.json()["secret"]) > 30
    listed = web_client.get(f"{API}/webhooks", headers=admin_headers).json()
    assert listed[0]["url"] == "https://example.org/hook" and "secret" not in listed[0]
    bad = web_client.post(f"{API}/webhooks", json={"url": "ftp://x", "events": ["nope"]}, headers=admin_headers)
    assert bad.status_code == 422 and "http(s)" in bad.json()["detail"]
    bad_event = web_client.post(f"{API}/webhooks", json={"url": "https://x.org", "events": ["nope"]},
                                headers=admin_headers)
    assert bad_event.status_code == 422 and "unknown webhook event" in bad_event.json()["detail"]
    hook_id = created.json()["id"]
    gone = web_client.delete(f"{API}/webhooks/{hook_id}", headers=admin_headers)
    assert gone.status_code == 200 and gone.json()["active"] is False
    assert web_client.get(f"{API}/webhooks/{hook_id}/deliveries", headers=admin_headers).json() == []


def test_import_items_all_or_nothing_with_line_and_field(web_client, corpus, admin_headers):
    url = f"{API}/projects/{corpus['project'].id}/items"
    body = {"records": [
        {"question": "Q1", "answer": "A1", "model": "m"},
        {"question": "Q2", "answer": "A2"},
        {"question": "Q1", "answer": "A1"},
    ], "mapping": {"prompt": "question", "response": "answer"}, "filename": "batch.json"}
    created = web_client.post(url, json=body, headers=admin_headers)
    assert created.status_code == 201, created.text
    assert {k: created.json()[k] for k in ("imported", "duplicates", "rows")} == {
        "imported": 2, "duplicates": 1, "rows": 3}
    preference = web_client.post(url, json={"records": [{"prompt": "P", "chosen": "good", "rejected": "bad"}]},
                                 headers=admin_headers)
    assert preference.status_code == 201 and preference.json()["imported"] == 1

    before = web_client.get(f"{API}/projects/{corpus['project'].id}", headers=admin_headers).json()
    bad = web_client.post(url, json={"records": [{"prompt": "ok", "response": "fine"}, {"prompt": "no response"},
                                                 {"prompt": 3, "response": "x"}]}, headers=admin_headers)
    assert bad.status_code == 422
    problem = bad.json()
    assert problem["total"] == 2 and "nothing was imported" in problem["detail"]
    assert [(e["line"], e["field"]) for e in problem["errors"]] == [(2, "response"), (3, "prompt")]
    after = web_client.get(f"{API}/projects/{corpus['project'].id}", headers=admin_headers).json()
    assert after["progress"]["items_total"] == before["progress"]["items_total"] == 11

    assert web_client.post(f"{API}/projects/999/items", json=body, headers=admin_headers).status_code == 404
    researcher = _auth(_token(corpus["reviewer"]))
    assert web_client.post(url, json=body, headers=researcher).status_code == 403
    unknown_key = web_client.post(url, json={**body, "mapping": {"colour": "x"}}, headers=admin_headers)
    assert unknown_key.status_code == 422
