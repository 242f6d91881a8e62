"""Click through the annotation app in real Chromium: login, import, annotate with the live diff, submit,
skip, review, dashboard. With REDLINE_SCREENSHOTS=1 the editor, review and dashboard screenshots go to
docs/screenshots/."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select

from app.db import session_scope
from app.editors.service import EditorSettings, create_editor
from app.models import Edit, Suggestion

pytestmark = [pytest.mark.browser, pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]
ITEMS = [
    {"prompt": "Explain why the sky is blue in two sentences.",
     "response": "The sky is blue because air molecules scatter red light more than blue light. "
                 "This is called Rayleigh scattering, and it is strongest at long wavelengths."},
    {"prompt": "Name the capital of Australia.", "response": "The capital of Australia is Sydney."},
    {"prompt": "What is 12 times 12?", "response": "12 times 12 is 124."},
]


@pytest.fixture
def login_page(chromium, live_server, user_password):
    """login_page(username) -> a Page in its own browser context, logged in through the form."""

    def login(username: str) -> Page:
        page = chromium.new_context(viewport={"width": 1280, "height": 900}).new_page()
        page.goto(f"{live_server}/login")
        page.fill("input[name=username]", username)
        page.fill("input[name=password]", user_password)
        page.click("button[type=submit]")
        return page

    return login


def test_click_through_import_annotate_review_dashboard(
    live_server, login_page, make_user, make_project, tmp_path, screenshots
):
    make_user("boss", "admin")
    ann, rev = make_user("ann", "annotator"), make_user("rev", "reviewer")
    project = make_project(name="Geography and maths", members=[ann, rev],
                           guidelines_md="Fix **only** what is wrong.")
    upload = tmp_path / "items.jsonl"
    upload.write_text("".join(json.dumps(item) + "\n" for item in ITEMS))

    admin = login_page("boss")
    expect(admin).to_have_url(f"{live_server}/admin/dashboard")
    admin.goto(f"{live_server}/admin/projects/{project.id}")
    admin.set_input_files("input[type=file]", str(upload))
    admin.get_by_role("button", name="Import", exact=True).click()
    expect(admin.locator(".flash")).to_contain_text("Imported 3 item(s)")

    annotator = login_page("ann")
    expect(annotator).to_have_url(f"{live_server}/annotate")
    annotator.click(f"#next-{project.id}")
    expect(annotator.locator("#editor-form")).to_have_attribute("data-ready", "true")  # editor.js live
    expect(annotator.locator("#original")).to_contain_text("red light more than blue")
    editor = annotator.locator("#editor")
    editor.fill(ITEMS[0]["response"].replace("red light more than blue light", "blue light more than red light")
                .replace("long wavelengths", "short wavelengths"))
    editor.press("End")
    editor.press_sequentially("!!")
    editor.press("Backspace")
    editor.press("Backspace")
    expect(annotator.locator("#char-diff ins").first).to_be_visible()
    expect(annotator.locator("#char-diff")).to_contain_text("short")
    annotator.screenshot(path=str(screenshots / "editor.png"), full_page=True)
    editor.press("Control+Enter")
    expect(annotator.locator("#original")).to_contain_text("Sydney")  # advanced to the next item
    annotator.fill("#skip-reason", "Not sure about this one")
    annotator.click("#skip")
    expect(annotator.locator("#original")).to_contain_text("124")
    annotator.locator("#editor").fill("12 times 12 is 144.")
    annotator.click("#submit")
    expect(annotator.locator(".flash")).to_contain_text("Nothing left for you")

    with session_scope() as session:  # the editor's effort measurements arrived with the submit
        first = session.scalars(select(Edit).order_by(Edit.id)).first()
    assert first.keystrokes == 4 and first.time_to_first_key_ms is not None and first.active_ms > 0

    reviewer = login_page("rev")
    expect(reviewer).to_have_url(f"{live_server}/review")
    reviewer.locator("tr", has_text="Explain why the sky is blue").get_by_role("link").click()
    expect(reviewer.locator("#annotator-diff ins").first).to_be_visible()
    reviewer.screenshot(path=str(screenshots / "review.png"), full_page=True)
    reviewer.click("#accept")
    expect(reviewer.locator(".flash")).to_contain_text("Accepted edit")

    admin.goto(f"{live_server}/admin/dashboard?project={project.id}")
    expect(admin.locator("table").first).to_contain_text("Geography and maths")
    expect(admin.get_by_role("cell", name="ann", exact=True)).to_be_visible()
    admin.screenshot(path=str(screenshots / "dashboard.png"), full_page=True)


def test_no_change_and_unfixable_buttons_and_reset(live_server, login_page, make_user, make_project, add_items):
    ann = make_user("ann", "annotator")
    project = make_project(members=[ann])
    add_items(project, [("P1", "Already perfect."), ("P2", "Hopeless answer.")])
    page = login_page("ann")
    page.click(f"#next-{project.id}")
    expect(page.locator("#editor-form")).to_have_attribute("data-ready", "true")  # editor.js live
    page.locator("#editor").fill("Changed entirely, far beyond any sensible budget of edits.")
    expect(page.locator("#not-minimal")).to_be_visible()
    page.keyboard.press("Alt+r")
    expect(page.locator("#editor")).to_have_value("Already perfect.")
    expect(page.locator("#not-minimal")).to_have_count(0)
    page.click("#no-change")
    expect(page.locator("#original")).to_contain_text("Hopeless")
    page.click("#unfixable")
    expect(page.locator(".flash")).to_contain_text("Nothing left for you")


def test_a_suggestion_is_accepted_fixed_or_set_aside(live_server, login_page, make_user, make_project, add_items):
    ann = make_user("ann", "annotator")
    project = make_project(members=[ann])
    items = add_items(project, [("P1", "Teh capital is Lyon."), ("P2", "Two plus two is five."),
                                ("P3", "Cats has four legs.")])
    texts = ["The capital is Lyon.", "Two plus two is four.", "Cats have four legs!"]
    with session_scope() as session:
        editor = create_editor(session, EditorSettings(name="smol", base_url="http://127.0.0.1:9/v1", model="m"), None)
        suggestions = [Suggestion(item_id=item, editor_id=editor.id, text=text, editor_model="smol-135m",
                                  prompt_version="abc123def456") for item, text in zip(items, texts, strict=True)]
        session.add_all(suggestions)
        session.flush()
        ids = [str(s.id) for s in suggestions]
    page = login_page("ann")
    page.click(f"#next-{project.id}")
    expect(page.locator("#editor-form")).to_have_attribute("data-ready", "true")
    # Opens with the suggestion, marked as the model's, with its diff against the original.
    expect(page.locator("#suggestion")).to_contain_text("model editor smol")
    expect(page.locator("#editor")).to_have_value(texts[0])
    expect(page.locator("#suggestion-diff ins")).to_be_visible()
    expect(page.locator("#suggestion-diff del")).to_be_visible()
    expect(page.locator("input[name=suggestion_id]")).to_have_value(ids[0])
    page.keyboard.press("Alt+r")  # set aside: the original, and the submit names no suggestion
    expect(page.locator("#editor")).to_have_value("Teh capital is Lyon.")
    expect(page.locator("input[name=suggestion_id]")).to_have_value("")
    expect(page.locator("#editor-base")).to_have_attribute("data-base", "original")
    page.keyboard.press("Alt+g")  # and back to the suggestion
    expect(page.locator("#editor")).to_have_value(texts[0])
    expect(page.locator("input[name=suggestion_id]")).to_have_value(ids[0])
    page.locator("#editor").press("End")
    page.locator("#editor").press_sequentially(" Paris!")
    expect(page.locator("#char-diff")).to_contain_text("Paris")
    page.locator("#editor").press("Control+Enter")  # fixed on top of the suggestion
    expect(page.locator("#original")).to_contain_text("five")
    expect(page.locator("#editor")).to_have_value(texts[1])
    page.click("#accept-suggestion")  # accepted as it is
    expect(page.locator("#original")).to_contain_text("Cats has")
    page.click("#reset")  # set aside, then the person's own edit
    page.locator("#editor").fill("Cats have four legs.")
    page.click("#submit")
    expect(page.locator(".flash")).to_contain_text("Nothing left for you")
    with session_scope() as session:
        edits = {e.item_id: e for e in session.scalars(select(Edit))}
    rates = [(edits[i].suggestion_used, edits[i].human_vs_suggestion_rate) for i in items]
    assert rates[0][0] and rates[0][1] > 0
    assert rates[1:] == [(True, 0.0), (False, None)]
    assert [edits[i].edited_text for i in items] == ["The capital is Lyon. Paris!", texts[1], "Cats have four legs."]
