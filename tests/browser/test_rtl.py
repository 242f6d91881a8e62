"""Right-to-left text in real Chromium: Hebrew and Arabic items take their direction from their text
(dir="auto") in the prompt, the original, the editor, the live diff and the review page; English stays
left to right beside them. Checked on the computed style, not pixels."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.browser, pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]

HEBREW = ("מהי בירת צרפת?", "בירת צרפת היא ליון.", "בירת צרפת היא פריז.")
ARABIC = ("ما هي عاصمة مصر؟", "عاصمة مصر هي الإسكندرية.", "عاصمة مصر هي القاهرة.")


def direction(page: Page, selector: str) -> str:
    return page.eval_on_selector(selector, "e => getComputedStyle(e).direction")


def login(chromium, live_server: str, username: str, password: str) -> Page:
    page = chromium.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(f"{live_server}/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    return page


def test_hebrew_and_arabic_render_right_to_left(
    chromium, live_server, make_user, make_project, add_items, user_password, screenshots
):
    ann, rev = make_user("ann", "annotator"), make_user("rev", "reviewer")
    project = make_project(name="שאלות גאוגרפיה", members=[ann, rev])
    add_items(project, [HEBREW[:2], ARABIC[:2], ("Name a colour.", "Blue.")])

    page = login(chromium, live_server, "ann", user_password)
    for prompt, original, fixed in (HEBREW, ARABIC):
        if page.url.endswith("/annotate"):
            page.click(f"#next-{project.id}")
        expect(page.locator("#editor-form")).to_have_attribute("data-ready", "true")
        expect(page.locator("#prompt")).to_have_text(prompt)
        expect(page.locator("#original")).to_have_text(original)
        assert direction(page, "h1") == "rtl"  # the project's Hebrew name
        for selector in ("#prompt", "#original", "#editor"):
            assert direction(page, selector) == "rtl", selector
        page.locator("#editor").fill(fixed)
        expect(page.locator("#char-diff ins")).to_be_visible()
        assert direction(page, "#char-diff") == "rtl"
        if prompt == ARABIC[0]:
            # the replaced city is shown as whole words, never a part of a joined Arabic word
            expect(page.locator("#char-diff del")).to_have_text("الإسكندرية")
            expect(page.locator("#char-diff ins")).to_have_text("القاهرة")
            page.screenshot(path=str(screenshots / "rtl-item.png"), full_page=True)
        page.locator("#editor").press("Control+Enter")
    expect(page.locator("#prompt")).to_have_text("Name a colour.")
    for selector in ("#prompt", "#original", "#editor"):
        assert direction(page, selector) == "ltr", selector

    reviewer = login(chromium, live_server, "rev", user_password)
    for prompt, _, _ in (HEBREW, ARABIC):
        reviewer.goto(f"{live_server}/review")
        reviewer.locator("tr", has_text=prompt).get_by_role("link").click()
        for selector in ("#prompt", "#original", "#annotator-diff", "#fixed_text"):
            assert direction(reviewer, selector) == "rtl", selector
