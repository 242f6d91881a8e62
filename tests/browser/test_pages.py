"""Page hygiene in real Chromium: no console error and no failed request (favicon included) on the main
pages, the username pattern compiles under the `v` flag and checks, and a failed import shows its errors
with the project page's own address in the address bar."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]


def test_pages_are_clean_and_a_failed_import_stays_on_the_project_page(
    chromium, live_server, make_user, make_project, user_password, tmp_path
):
    make_user("boss", "admin")
    project = make_project(name="Hygiene")
    page = chromium.new_context().new_page()
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None)
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto(f"{live_server}/login")
    page.fill("input[name=username]", "boss")
    page.fill("input[name=password]", user_password)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{live_server}/admin/dashboard")
    for path in ("/admin/users", "/admin/projects", f"/admin/projects/{project.id}", "/datasets", "/jobs"):
        page.goto(f"{live_server}{path}")
    page.wait_for_load_state("networkidle")
    assert problems == []
    icon = page.evaluate("fetch(document.querySelector('link[rel=icon]').href).then(r => r.status)")
    assert icon == 200

    page.goto(f"{live_server}/admin/users")
    username = page.locator("input[name=username]")
    username.fill("no spaces allowed")
    assert username.evaluate("e => e.validity.patternMismatch") is True
    username.fill("ann.o-ta_tor@team")
    assert username.evaluate("e => e.validity.valid") is True
    assert problems == []  # an invalid pattern is a console error, and the check is skipped

    upload = tmp_path / "latin1.csv"
    upload.write_bytes("prompt,response\nCafé?,Oui.\n".encode("latin-1"))
    page.goto(f"{live_server}/admin/projects/{project.id}")
    page.set_input_files("input[type=file]", str(upload))
    page.get_by_role("button", name="Import", exact=True).click()
    expect(page.locator(".errors")).to_contain_text("line 2, field prompt")
    expect(page.locator(".errors")).to_contain_text("save the file as UTF-8")
    expect(page).to_have_url(f"{live_server}/admin/projects/{project.id}")  # not the POST's /import
