"""Annotator feedback in real Chromium: a rejection and its comment reach the annotator under My work,
and (where the project sends rejected edits back) the annotator revises the edit for review again."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from app.db import session_scope
from app.models import Verdict
from app.services import review

pytestmark = [pytest.mark.browser, pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]


def test_an_annotator_sees_a_rejection_and_its_comment_and_revises(
    chromium, live_server, make_user, make_project, add_items, user_password, screenshots
):
    ann, rev = make_user("ann"), make_user("rev", "reviewer")
    project = make_project(name="Feedback", members=[ann, rev], return_rejected=True)
    add_items(project, [("Name the capital of Australia.", "The capital of Australia is Sydney.")])
    page = chromium.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(f"{live_server}/login")
    page.fill("input[name=username]", "ann")
    page.fill("input[name=password]", user_password)
    page.click("button[type=submit]")
    page.click(f"#next-{project.id}")
    expect(page.locator("#editor-form")).to_have_attribute("data-ready", "true")
    page.locator("#editor").fill("The capital of Australia is Melbourne.")
    page.click("#submit")
    expect(page.locator(".flash")).to_contain_text("Nothing left for you")

    with session_scope() as session:
        edit_id = review.next_pending(session, rev)
        review.decide(session, rev, edit_id, Verdict.REJECT, comment="Canberra, not Melbourne.")

    page.click("nav >> text=My work")
    row = page.locator(f"#work-{edit_id}")
    expect(row.locator(".review-status")).to_have_text("sent back to you")
    expect(row.locator(".review-comment")).to_have_text("Canberra, not Melbourne.")
    page.screenshot(path=str(screenshots / "my-work.png"), full_page=True)
    row.get_by_role("link", name="Revise").click()
    expect(page.locator(".review-comment")).to_contain_text("Canberra, not Melbourne.")
    page.locator("#editor").fill("The capital of Australia is Canberra.")
    expect(page.locator("#char-diff ins")).to_have_text("Canberra")
    page.click("#submit-revision")
    expect(page.locator(".flash")).to_contain_text("waits for review again")
    expect(page.locator(f"#work-{edit_id} .review-status")).to_have_text("pending")
