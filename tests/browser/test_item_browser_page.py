"""An admin finds an item by a phrase in the item browser and opens its history, in real Chromium."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]


def test_item_browser_finds_an_item_by_a_phrase(
    chromium, live_server, make_user, make_project, add_items, user_password, screenshots
):
    make_user("boss", "admin")
    project = make_project(name="Rivers and lakes")
    add_items(project, [(f"Question {i}", f"Answer {i}: the river meets the sea at a delta.") for i in range(30)]
              + [("Where do salmon spawn?", "Salmon spawn upstream in the gravel beds of cold rivers.")])
    page = chromium.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(f"{live_server}/login")
    page.fill("input[name=username]", "boss")
    page.fill("input[name=password]", user_password)
    page.click("button[type=submit]")
    page.click("nav >> text=Items")
    expect(page.locator("#items tbody tr")).to_have_count(31)
    page.fill("#item-q", "gravel beds of cold")
    page.keyboard.press("Enter")
    expect(page.locator("#items tbody tr")).to_have_count(1)
    expect(page.locator("#items")).to_contain_text("Where do salmon spawn?")
    page.screenshot(path=str(screenshots / "item-browser.png"), full_page=True)
    page.locator("#items tbody a").first.click()
    expect(page.locator("#original")).to_contain_text("gravel beds")
    expect(page.locator("#history")).to_contain_text("Nothing has happened to this item yet.")
