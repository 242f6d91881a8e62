"""Suggestions in the annotator's editor: the page opens with the newest suggestion, marked with its
editor and its own diff; the submit records whether the person started from it and how far they moved.
(That both submit paths record it: test_submit_rules.py.)"""

from __future__ import annotations

import html
import re
from datetime import timedelta

from sqlalchemy import select

from app.db import session_scope
from app.editors.service import EditorSettings, create_editor
from app.models import Edit, Suggestion, utcnow
from app.services import annotation

ORIGINAL = "Teh capital of France is Lyon."
OLDER = "The capital of France is Lyon."
NEWER = "The capital of France is <b>Paris</b>."


def _editor(name: str) -> int:
    with session_scope() as session:
        return create_editor(session, EditorSettings(name=name, base_url="http://127.0.0.1:9/v1", model=f"{name}-135m"),
                             None).id


def _suggest(item_id: int, editor_id: int, text: str, age_s: int) -> int:
    with session_scope() as session:
        suggestion = Suggestion(item_id=item_id, editor_id=editor_id, text=text, editor_model="smol-135m",
                                prompt_version="abc123def456", created_at=utcnow() - timedelta(seconds=age_s))
        session.add(suggestion)
        session.flush()
        return suggestion.id


def _next(client, csrf: str, project_id: int, htmx: bool = False) -> str:
    """The editor after "Next": as the button sends it (htmx: the editor comes in Next's own response, from
    the lease it just took) or as a plain form (a redirect to the task's page)."""
    page = client.post(f"/annotate/{project_id}/next", data={"csrf_token": csrf},
                       headers={"HX-Request": "true"} if htmx else {})
    assert page.status_code == 200, page.text
    return page.text


def _lease_of(page: str) -> int:
    return int(re.search(r'action="/annotate/task/(\d+)/submit"', page).group(1))


def test_the_editor_opens_with_the_newest_suggestion_and_the_submit_measures_against_it(
    web_client, make_user, make_project, add_items, login_as
):
    ann = make_user("ann")
    project = make_project(n=1, members=[ann])
    first, second, third = add_items(project, [("Capital?", ORIGINAL), ("Two?", "2 + 2 = 5."), ("Sky?", "Green.")])
    smol, tiny = _editor("smol"), _editor("tiny")
    _suggest(first, smol, OLDER, age_s=60)
    newest = _suggest(first, tiny, NEWER, age_s=1)
    other = _suggest(second, smol, "2 + 2 = 4.", age_s=1)
    csrf = login_as(web_client, "ann")

    page = _next(web_client, csrf, project.id)
    # Prefilled with the newest suggestion (escaped), marked with its editor, model and prompt version.
    assert f'name="suggestion_id" value="{newest}"' in page
    editor = re.search(r'<textarea dir="auto" id="editor"[^>]*>(.*?)</textarea>', page, re.S).group(1)
    assert html.unescape(editor) == NEWER and "<b>Paris</b>" not in page
    note = re.search(r'<div class="suggestion-note" id="suggestion".*?</div>', page, re.S).group(0)
    assert "model editor tiny" in note and "smol-135m" in note and "abc123def456" in note
    assert "the newest of this item's 2 suggestions" in note
    # Its own diff against the original, right to left where the text is.
    diff = re.search(r'<div dir="auto" class="text diff " id="suggestion-diff">(.*?)</div>', page, re.S).group(1)
    assert "<del>" in diff and "<ins>" in diff and "&lt;b&gt;Paris&lt;/b&gt;" in diff
    rate = annotation.analyse(project.tokenizer, ORIGINAL, NEWER).stats.edit_rate
    assert f"edit rate {rate * 100:.1f}%" in note
    assert 'id="accept-suggestion"' in page and 'id="use-suggestion"' in page

    # A suggestion of another item is refused, with what is wrong; nothing is stored.
    lease = _lease_of(page)
    fixed = "The capital of France is Paris."
    bad = web_client.post(f"/annotate/task/{lease}/submit", data={
        "csrf_token": csrf, "outcome": "edited", "text": fixed, "suggestion_id": str(other)})
    assert bad.status_code == 400 and f"{other} is not a suggestion for this item" in bad.text

    # The person fixes the suggestion and submits: used, and their edit rate relative to it.
    done = web_client.post(f"/annotate/task/{lease}/submit", data={
        "csrf_token": csrf, "outcome": "edited", "text": fixed, "suggestion_id": str(newest)},
        follow_redirects=False)
    assert done.status_code in (200, 303)
    # The next item's suggestion; the person resets to the original and submits without it.
    page = _next(web_client, csrf, project.id, htmx=True)
    assert f'value="{other}"' in page and "model editor smol" in page and "suggestions" not in re.search(
        r'<div class="suggestion-note".*?</div>', page, re.S).group(0)
    web_client.post(f"/annotate/task/{_lease_of(page)}/submit", data={
        "csrf_token": csrf, "outcome": "edited", "text": "2 + 2 = 4!"})
    # An item without a suggestion: the plain editor, prefilled with the original.
    page = _next(web_client, csrf, project.id, htmx=True)
    assert 'id="suggestion"' not in page and 'name="suggestion_id"' not in page
    assert re.search(r'<textarea dir="auto" id="editor"[^>]*>Green.</textarea>', page)

    with session_scope() as session:
        edits = {e.item_id: e for e in session.scalars(select(Edit))}
    expected = annotation.analyse(project.tokenizer, NEWER, fixed).stats.edit_rate
    assert (edits[first].suggestion_used, edits[first].human_vs_suggestion_rate) == (True, expected) and expected > 0
    assert (edits[first].editor_id, edits[first].editor_model, edits[first].prompt_version) == (
        tiny, "smol-135m", "abc123def456")  # the suggestion's
    assert (edits[second].suggestion_used, edits[second].human_vs_suggestion_rate) == (False, None)
    assert (edits[second].editor_id, edits[second].editor_model) == (None, "")
    assert third not in edits


def test_a_suggestion_accepted_as_it_is_moves_zero_and_one_of_no_change_says_so(
    web_client, make_user, make_project, add_items, login_as
):
    ann = make_user("ann")
    project = make_project(n=1, members=[ann])
    first, second = add_items(project, [("Capital?", ORIGINAL), ("Fine?", "Fine as it is.")])
    smol = _editor("smol")
    accepted = _suggest(first, smol, OLDER, age_s=1)
    unchanged = _suggest(second, smol, "Fine as it is.", age_s=1)
    csrf = login_as(web_client, "ann")
    page = _next(web_client, csrf, project.id)
    web_client.post(f"/annotate/task/{_lease_of(page)}/submit", data={
        "csrf_token": csrf, "outcome": "edited", "text": OLDER, "suggestion_id": str(accepted)})
    page = _next(web_client, csrf, project.id)
    assert "The suggestion changes nothing" in page
    web_client.post(f"/annotate/task/{_lease_of(page)}/submit", data={
        "csrf_token": csrf, "outcome": "edited", "text": "Fine as it is.", "suggestion_id": str(unchanged)})
    with session_scope() as session:
        edits = {e.item_id: e for e in session.scalars(select(Edit))}
    assert (edits[first].outcome, edits[first].suggestion_used, edits[first].human_vs_suggestion_rate) == (
        "edited", True, 0.0)
    assert (edits[second].outcome, edits[second].suggestion_used, edits[second].human_vs_suggestion_rate) == (
        "no_change_needed", True, 0.0)


def test_a_revised_edit_is_measured_against_its_suggestion_again(web_client, make_user, make_project, add_items,
                                                                 login_as):
    ann = make_user("ann")
    project = make_project(n=1, members=[ann])
    [item] = add_items(project, [("Capital?", ORIGINAL)])
    suggestion = _suggest(item, _editor("smol"), OLDER, age_s=1)
    csrf = login_as(web_client, "ann")
    page = _next(web_client, csrf, project.id)
    web_client.post(f"/annotate/task/{_lease_of(page)}/submit", data={
        "csrf_token": csrf, "outcome": "edited", "text": OLDER + " Paris.", "suggestion_id": str(suggestion)})
    with session_scope() as session:
        edit = session.scalars(select(Edit)).one()
    assert edit.human_vs_suggestion_rate == annotation.rate_on_suggestion(project.tokenizer, OLDER, OLDER + " Paris.")
    revised = web_client.post(f"/my-work/{edit.id}", follow_redirects=False,
                              data={"csrf_token": csrf, "text": OLDER, "version": str(edit.version)})
    assert revised.status_code == 303, revised.text
    with session_scope() as session:
        edit = session.get(Edit, edit.id)
    assert (edit.edited_text, edit.suggestion_used, edit.human_vs_suggestion_rate) == (OLDER, True, 0.0)
