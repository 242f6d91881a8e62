"""Hostile text in prompts, responses, guidelines, edits, comments and usernames never executes."""

from __future__ import annotations

import pytest
from factories import next_task, submit
from playwright.sync_api import expect

from app.db import session_scope
from app.models import Outcome, Verdict
from app.services import review

pytestmark = [pytest.mark.browser, pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]

PAYLOADS = (
    '<script>window.__xss = "script"</script>'
    '<img src=x onerror="window.__xss = \'img\'">'
    '"><svg onload="window.__xss = \'svg\'">'
    "<a href=\"javascript:window.__xss='link'\">click</a>"
)
GUIDELINES = f"# Rules\n\n{PAYLOADS}\n\n[bad link](javascript:window.__xss='md')"


def _hostile_project(make_user, make_project, add_items):
    ann, rev = make_user("ann", "annotator"), make_user("rev", "reviewer")
    make_user("boss", "admin")
    project = make_project(name=f"Project {PAYLOADS}"[:200], members=[ann, rev], guidelines_md=GUIDELINES,
                           description=PAYLOADS)
    add_items(project, [(f"Prompt {PAYLOADS}", f"Response {PAYLOADS}"), ("Second", f"Another {PAYLOADS}")])
    with session_scope() as session:
        lease = next_task(session, project, ann).lease
    with session_scope() as session:
        edit = submit(session, lease.id, ann, Outcome.EDITED, f"Edited {PAYLOADS} {PAYLOADS}")
    with session_scope() as session:
        review.decide(session, rev, edit.id, Verdict.FIX_AND_ACCEPT, fixed_text=f"Fixed {PAYLOADS}",
                      comment=PAYLOADS)
    return project, edit


def _assert_inert(page, url: str) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(url)
    page.wait_for_load_state("networkidle")
    for link in page.locator("a[href^='javascript']").all():
        pytest.fail(f"javascript: link rendered on {url}: {link.get_attribute('href')}")
    assert page.evaluate("window.__xss") is None, url
    assert not dialogs, url


def test_payloads_stay_text_on_every_page(live_server, chromium, make_user, make_project, add_items,
                                          user_password):
    project, edit = _hostile_project(make_user, make_project, add_items)

    def login(username: str):
        page = chromium.new_page()
        page.goto(f"{live_server}/login")
        page.fill("input[name=username]", username)
        page.fill("input[name=password]", user_password)
        page.click("button[type=submit]")
        return page

    annotator = login("ann")
    _assert_inert(annotator, f"{live_server}/annotate")
    annotator.click(f"#next-{project.id}")
    expect(annotator.locator("#editor-form")).to_have_attribute("data-ready", "true")  # editor.js live
    expect(annotator.locator("#original")).to_contain_text("<script>")
    annotator.locator("#editor").fill(f"Typed {PAYLOADS} into the editor")
    expect(annotator.locator("#char-diff")).to_contain_text("onerror")  # the live diff shows it as text
    assert annotator.evaluate("window.__xss") is None

    reviewer = login("rev")
    _assert_inert(reviewer, f"{live_server}/review")
    _assert_inert(reviewer, f"{live_server}/review/{edit.id}")
    expect(reviewer.locator("#annotator-diff")).to_contain_text("<script>")  # shown, as text

    admin = login("boss")
    for path in ("/admin/dashboard", f"/admin/dashboard?project={project.id}", "/admin/projects",
                 f"/admin/projects/{project.id}", "/admin/users"):
        _assert_inert(admin, f"{live_server}{path}")
