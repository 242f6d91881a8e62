"""Model editors end to end in real Chromium, against `redline serve` and `redline worker` processes on the
real Postgres and a REAL model server (`transformers serve` on SmolLM2): an admin adds an editor, says
model edits come on top of N, and runs an annotate job and a suggest job (one item each, a small token
cap); an annotator opens the item with the suggestion, fixes it and submits; a reviewer bulk-accepts the
model's edits; the export carries the provenance of both. With REDLINE_SCREENSHOTS=1 the suggestion in
the editor goes to docs/screenshots/suggestion.png."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import select
from test_jobs_browser import PASSWORD, server, worker

from app.db import session_scope
from app.models import Edit, Item, ModelEditor, User
from app.services.importer import import_records
from app.services.projects import ProjectSettings, create_project, set_members
from app.services.users import create_user

pytestmark = [pytest.mark.browser, pytest.mark.postgres, pytest.mark.llm, pytest.mark.slow]
__all__ = ["server", "worker"]  # fixtures, imported for this module's test

# The first item is one SmolLM2 answers well-formed within the cap (greedy, so every run alike); the
# second only shows that the annotator moves on. `transformers serve` answers one request at a time,
# tens of seconds each on a busy 2-core box: the waits are generous.
ITEMS = [("What is the capital of France?", "The capital of France is Lyon."),
         ("How many legs does a cat have?", "A cat has four legs.")]
JOB_WAIT_MS = 600_000


@pytest.fixture
def project_id(worker_process_env, default_tokenizer_path) -> int:
    with session_scope() as session:
        create_user(session, "boss", PASSWORD, "admin")
        people = [create_user(session, "ann", PASSWORD, "annotator"), create_user(session, "rev", PASSWORD, "reviewer")]
        project = create_project(session, ProjectSettings(name="Capitals", tokenizer=str(default_tokenizer_path)), None)
        set_members(session, project, {person.id for person in people}, None)
        import_records(session, project, [{"prompt": p, "response": r} for p, r in ITEMS], filename="items.jsonl")
        return project.id


def log_in(chromium: Browser, base: str, username: str) -> Page:
    page = chromium.new_context(viewport={"width": 1280, "height": 1000}).new_page()
    page.goto(f"{base}/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.press("input[name=password]", "Enter")
    expect(page.locator("h1")).to_be_visible()
    return page


def run_job(page: Page, editor_url: str, mode: str) -> None:
    """Start a job of one item from the editor's page and wait on the job's page until it is done."""
    page.goto(editor_url)
    form = page.locator("form[action$='/jobs']")
    form.locator("select[name=project_id]").select_option(label="Capitals")
    form.locator("select[name=mode]").select_option(mode)
    form.locator("input[name=limit]").fill("1")
    form.locator("input[name=limit]").press("Enter")
    expect(page.locator("#job-live")).to_have_attribute("data-status", "succeeded", timeout=JOB_WAIT_MS)
    page.reload()  # the items' record is on the page, not in the part that polls
    expect(page.locator("#editor-items h2")).to_have_text("Items: 1 done, 0 failed")


def test_editor_job_suggestion_fix_bulk_accept_and_export(chromium, server, worker, llm_server, project_id,
                                                          screenshots):
    admin = log_in(chromium, server, "boss")
    admin.goto(f"{server}/admin/projects/{project_id}")  # the model's edits come on top of N
    settings = admin.locator(f"form[action='/admin/projects/{project_id}']")
    settings.locator("select[name=model_edits_count]").select_option("false")
    settings.locator("input[name=name]").press("Enter")
    expect(admin.locator(".flash")).to_contain_text("Saved")

    admin.goto(f"{server}/admin/editors")  # an editor on the real model server, a small token cap
    fields = {"name": "smol", "base_url": llm_server["base_url"], "model": llm_server["model"], "max_tokens": "48",
              "timeout_s": "900", "max_concurrency": "1"}
    for name, value in fields.items():
        admin.fill(f"form[action='/admin/editors'] input[name={name}]", value)
    admin.press("form[action='/admin/editors'] input[name=name]", "Enter")
    expect(admin.locator("h1")).to_contain_text("smol")
    editor_url = admin.url
    run_job(admin, editor_url, "annotate")  # the model edits the first item, on top of its N
    run_job(admin, editor_url, "suggest")  # and suggests an edit of it for people
    with session_scope() as session:
        editor = session.scalars(select(ModelEditor)).one()
        first = session.scalars(select(Item).where(Item.project_id == project_id).order_by(Item.id)).first()
        assert (first.completed_count, first.status) == (0, "open")

    annotator = log_in(chromium, server, "ann")
    annotator.click(f"#next-{project_id}")
    expect(annotator.locator("#editor-form")).to_have_attribute("data-ready", "true")
    expect(annotator.locator("#original")).to_contain_text("Lyon")
    expect(annotator.locator("#suggestion")).to_contain_text("model editor smol")
    expect(annotator.locator("#suggestion")).to_contain_text(llm_server["model"])
    annotator.screenshot(path=str(screenshots / "suggestion.png"), full_page=True)
    # After a full-page screenshot Chromium 156 may drop the next mouse click: the keyboard from here on.
    annotator.focus("#editor")
    annotator.keyboard.press("Control+End")
    annotator.keyboard.type(" It is in Europe.")
    expect(annotator.locator("#char-diff")).to_contain_text("Europe")
    annotator.keyboard.press("Control+Enter")
    expect(annotator.locator("#original")).to_contain_text("four legs")  # on to the next item

    reviewer = log_in(chromium, server, "rev")
    reviewer.on("dialog", lambda dialog: dialog.accept())  # "Accept every pending edit this filter selects?"
    reviewer.click("#bulk summary")
    reviewer.check("#bulk-kind-model")
    for outcome in ("no_change_needed", "unfixable"):  # whatever the model decided about the item
        reviewer.check(f"#bulk input[name=outcomes][value={outcome}]")
    reviewer.uncheck("#bulk input[name=exclude_not_minimal]")
    reviewer.click("#bulk-preview")
    expect(reviewer.locator(".flash")).to_contain_text("1 pending edit(s) match")
    reviewer.click("#bulk-accept")
    expect(reviewer.locator(".flash")).to_contain_text("Accepted 1 edit(s) in bulk")

    with session_scope() as session:
        edits = {kind: edit for edit, kind in session.execute(
            select(Edit, User.kind).join(User, User.id == Edit.annotator_id).where(Edit.item_id == first.id))}
    person, model = edits["human"], edits["model"]
    assert (model.review_status, person.review_status) == ("accepted", "pending")
    assert person.suggestion_used and person.human_vs_suggestion_rate > 0
    assert person.edited_text.endswith(" It is in Europe.")

    admin.goto(f"{server}/datasets")  # a version of both edits, and its pairs export
    form = admin.locator("#dataset-form")
    form.locator("input[name=name]").fill("model and person")
    form.locator("select[name=project_id]").select_option(label="Capitals")
    for name, value in (("outcomes", "no_change_needed"), ("outcomes", "unfixable"), ("review_statuses", "pending")):
        form.locator(f"input[name={name}][value={value}]").check()
    form.locator("input[name=name]").press("Enter")
    expect(admin.locator("h1")).to_contain_text("model and person")
    # Frozen by the worker's job; the page follows it and reloads once the version is ready.
    expect(admin.locator("dl.kv")).to_contain_text("Content hash", timeout=120_000)
    download = admin.request.get(admin.url.replace("/datasets/", "/api/v1/datasets/") + "/download?format=pairs-jsonl")
    assert download.ok, download.text()
    rows = {row["annotator_kind"]: row for row in map(json.loads, download.text().splitlines())}
    assert set(rows) == {"human", "model"}
    version = rows["model"]["prompt_version"]
    assert version and (rows["model"]["editor"], rows["model"]["editor_model"]) == ("smol", llm_server["model"])
    assert (rows["model"]["suggestion_used"], rows["model"]["human_vs_suggestion_rate"]) == (False, None)
    assert (rows["human"]["editor"], rows["human"]["editor_model"], rows["human"]["prompt_version"]) == (
        "smol", llm_server["model"], version)  # the suggestion's
    assert rows["human"]["suggestion_used"] is True
    assert rows["human"]["human_vs_suggestion_rate"] == pytest.approx(person.human_vs_suggestion_rate)
    assert rows["human"]["edited"] == person.edited_text and editor.name == "smol"
