"""The reviewer's flow in real Chromium: a fix & accept typed and sent with the keyboard, then ten edits
cleared with the keyboard alone (N opens the first, A accepts and opens the next)."""

from __future__ import annotations

import pytest
from factories import next_task, submit
from playwright.sync_api import expect
from sqlalchemy import select

from app.db import session_scope
from app.models import Edit, Item, Outcome

pytestmark = [pytest.mark.browser, pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]


def test_a_reviewer_clears_ten_edits_with_the_keyboard_alone(
    chromium, live_server, make_user, make_project, add_items, user_password, screenshots
):
    ann, _rev = make_user("ann"), make_user("rev", "reviewer")
    project = make_project(name="Capitals", members=[ann, _rev])
    add_items(project, [(f"Name capital {i}.", f"The capital number {i} is Sydnee.") for i in range(11)])
    for _ in range(11):
        with session_scope() as session:
            lease = next_task(session, project, ann).lease
            fixed = session.get(Item, lease.item_id).original.replace("Sydnee", "Sydney")
        with session_scope() as session:
            submit(session, lease.id, ann, Outcome.EDITED, fixed)

    page = chromium.new_context(viewport={"width": 1280, "height": 1000}).new_page()
    page.goto(f"{live_server}/login")
    page.fill("input[name=username]", "rev")
    page.fill("input[name=password]", user_password)
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{live_server}/review")
    page.keyboard.press("n")
    expect(page.locator("#annotator-diff ins").first).to_be_visible()
    page.screenshot(path=str(screenshots / "reviewer-flow.png"), full_page=True)
    # The first edit gets a fix, typed and sent from the keyboard.
    page.keyboard.press("f")
    page.keyboard.press("End")
    page.keyboard.type(" Canberra is the capital of Australia.")
    page.keyboard.press("Control+Enter")
    expect(page.locator(".flash")).to_contain_text("Fixed and accepted")
    for cleared in range(1, 11):  # generous timeouts: this box is often shared by several test runs
        expect(page.locator("body")).to_have_attribute("data-review-keys", "ready", timeout=20_000)
        page.keyboard.press("a")
        expected = "Nothing else waits for review" if cleared == 10 else f"Accepted edit #{cleared + 1}."
        expect(page.locator(".flash")).to_contain_text(expected, timeout=20_000)
    expect(page).to_have_url(f"{live_server}/review?msg=Accepted+edit+%2311.+Nothing+else+waits+for+review.")
    with session_scope() as session:
        statuses = list(session.scalars(select(Edit.review_status).order_by(Edit.id)))
    assert statuses == ["accepted"] * 11
