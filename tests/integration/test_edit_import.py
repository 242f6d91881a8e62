"""Importing a file's edits (an `edited` column): completed edits by an import source, or suggestions;
labels and statistics from the one label engine; bad rows with line and field; all or nothing."""

from __future__ import annotations

import io
import json

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from app.cli import main as cli
from app.db import session_scope
from app.models import Edit, Item, Lease, Suggestion, User
from app.services import api_tokens
from app.services.datasets import DatasetFilter
from app.services.edit_import import EditSource, EditSourceError
from app.services.export import stream_export
from app.services.freeze import create_version
from app.services.import_formats import import_file
from app.services.importer import ImportRejected
from labels import analyse_edit, load_tokenizer

ROWS = [
    {"prompt": "Capital of France?", "response": "It is Lyon.", "edited": "It is Paris."},
    {"prompt": "2+2?", "response": "It is 4.", "edited": "It is 4."},  # unchanged: no change needed
    {"prompt": "Colour of the sky?", "response": "Green.", "edited": ""},  # no edit: the item alone
    {"prompt": "Capital of France?", "response": "It is Lyon.", "edited": "It is Paris."},  # a repeat
]


def _jsonl(rows) -> io.BytesIO:
    return io.BytesIO("".join(json.dumps(r) + "\n" for r in rows).encode())


def _counts() -> tuple[int, int, int, int]:
    with session_scope() as session:
        return tuple(session.scalar(select(func.count()).select_from(table))
                     for table in (Item, Edit, Suggestion, Lease))


def test_edits_import_as_completed_edits_of_an_import_account(make_project, default_tokenizer_path):
    project = make_project(n=2)
    with session_scope() as session:
        result = import_file(session, project, _jsonl(ROWS), filename="vendor.jsonl",
                             edits=EditSource("vendor"))
    assert (result.imported, result.duplicates, result.edits, result.edit_duplicates) == (3, 1, 2, 0)
    assert "2 completed edit(s) from 'vendor' stored, 0 given before" in result.edits_note
    with session_scope() as session:
        account = session.scalars(select(User).where(User.username == "import-vendor")).one()
        assert (account.kind, account.role, account.password_hash) == ("import", "annotator", "!")
        edits = {e.item_id: e for e in session.scalars(select(Edit).where(Edit.annotator_id == account.id))}
        items = {i.prompt: i for i in session.scalars(select(Item))}
    france, sums, sky = items["Capital of France?"], items["2+2?"], items["Colour of the sky?"]
    assert set(edits) == {france.id, sums.id}
    assert (edits[sums.id].outcome, edits[sums.id].edit_rate) == ("no_change_needed", 0.0)
    # The server's labels and statistics: the one label engine, the project's tokenizer.
    expected = analyse_edit("It is Lyon.", "It is Paris.", load_tokenizer(str(default_tokenizer_path))).to_record()
    edit = edits[france.id]
    assert (edit.outcome, edit.edited_text) == ("edited", "It is Paris.")
    assert edit.token_labels == expected["token_labels"] and edit.stats == expected["stats"]
    assert edit.edit_rate == expected["stats"]["edit_rate"] > 0 and edit.char_diff == expected["char_diff"]
    assert (france.completed_count, france.status, sky.completed_count) == (1, "open", 0)  # one of its N = 2

    with session_scope() as session:  # the same file again: nothing new, every edit given before
        again = import_file(session, project, _jsonl(ROWS), filename="vendor.jsonl", edits=EditSource("vendor"))
    assert (again.imported, again.edits, again.edit_duplicates) == (0, 0, 2)
    with session_scope() as session:  # another source adds its own edit, the item's second
        other = import_file(session, project, _jsonl(ROWS[:1]), filename="b.jsonl", edits=EditSource("team-b"))
        assert other.edits == 1 and session.get(Item, france.id).status == "complete"

    with session_scope() as session:  # exported like any edit, with its kind (edited pairs by default)
        version_id = create_version(session, DatasetFilter(project_id=project.id, review_statuses=["pending"],
                                                           annotator_kinds=["import"]), "v", None).id
    rows = [json.loads(line) for line in b"".join(stream_export(session_scope, version_id, "pairs-jsonl")).splitlines()]
    assert [(r["edited"], r["annotator_kind"]) for r in rows] == [("It is Paris.", "import")] * 2


def test_edits_import_as_suggestions_from_a_named_source(make_project, default_tokenizer_path):
    project = make_project(minimality_budget=0.2)
    rows = [{"question": "Capital of France?", "answer": "It is Lyon, of course.", "fixed": "It is Paris, of course."},
            {"question": "Sky?", "answer": "Green.", "fixed": "Blue, mostly, on a clear day."}]
    mapping = {"prompt": "question", "response": "answer", "edited": "fixed"}
    with session_scope() as session:
        result = import_file(session, project, _jsonl(rows), filename="s.jsonl", mapping=mapping,
                             edits=EditSource("gpt-dump", "suggestions"))
    assert (result.imported, result.edits) == (2, 2) and "2 suggestion(s) from 'gpt-dump'" in result.edits_note
    tokenizer = load_tokenizer(str(default_tokenizer_path))
    with session_scope() as session:
        stored = {s.text: s for s in session.scalars(select(Suggestion))}
        assert session.scalar(select(func.count()).select_from(Edit)) == 0  # the items stay open for people
        assert set(session.scalars(select(Item.status))) == {"open"}
        assert "fixed" not in session.scalars(select(Item)).first().source
    for row in rows:
        suggestion = stored[row["fixed"]]
        rate = analyse_edit(row["answer"], row["fixed"], tokenizer).stats.edit_rate
        assert (suggestion.source, suggestion.editor_id, suggestion.edit_rate) == ("gpt-dump", None, rate)
        assert suggestion.not_minimal == (rate > 0.2)
    with session_scope() as session:  # again: duplicates; another text from the same source: refused
        again = import_file(session, project, _jsonl(rows), filename="s.jsonl", mapping=mapping,
                            edits=EditSource("gpt-dump", "suggestions"))
        assert (again.edits, again.edit_duplicates) == (0, 2)
    changed = [{**rows[0], "fixed": "It is Paris."}]
    with pytest.raises(ImportRejected) as caught, session_scope() as session:
        import_file(session, project, _jsonl(changed), filename="s.jsonl", mapping=mapping,
                    edits=EditSource("gpt-dump", "suggestions"))
    assert [(e.line, e.field) for e in caught.value.errors] == [(1, "edited")]
    assert "another edit of the item in an earlier import" in caught.value.errors[0].message


def test_bad_edit_rows_say_line_and_field_and_nothing_is_written(make_project):
    project = make_project()
    before = _counts()
    rows = [
        {"prompt": "p1", "response": "r1", "edited": "r1 fixed"},
        {"prompt": "p2", "response": "r2", "edited": 7},
        {"prompt": "p3", "response": "r3", "edited": "bad\u0000text"},
        {"prompt": "p1", "response": "r1", "edited": "r1 fixed otherwise"},
        {"prompt": "p4", "response": "r4", "edited": "   "},
    ]
    with pytest.raises(ImportRejected) as caught, session_scope() as session:
        import_file(session, project, _jsonl(rows), filename="bad.jsonl", edits=EditSource("vendor"))
    found = {(e.line, e.field): e.message for e in caught.value.errors}
    assert set(found) == {(2, "edited"), (3, "edited"), (4, "edited"), (5, "edited")}
    assert found[(2, "edited")] == "must be text, got int" and "NUL character" in found[(3, "edited")]
    assert "line 1 has the same prompt and response with another edit" in found[(4, "edited")]
    assert found[(5, "edited")] == "empty"
    assert _counts() == before
    with session_scope() as session:  # not even the source's account was left behind
        assert session.scalar(select(User.id).where(User.username == "import-vendor")) is None

    # A file with edits and no source named: refused at its first edit, not silently parked.
    with pytest.raises(ImportRejected) as caught, session_scope() as session:
        import_file(session, project, _jsonl(rows[:1]), filename="x.jsonl")
    ((line, field),) = [(e.line, e.field) for e in caught.value.errors]
    assert (line, field) == (1, "edited") and "name the source" in caught.value.errors[0].message
    # A mapped column the file lacks; a bad source name.
    with pytest.raises(ImportRejected) as caught, session_scope() as session:
        import_file(session, project, _jsonl(rows[:1]), filename="x.jsonl", mapping={"edited": "fix"},
                    edits=EditSource("vendor"))
    assert [(e.line, e.field) for e in caught.value.errors] == [(1, "edited")]
    with pytest.raises(EditSourceError, match="edits source"), session_scope() as session:
        import_file(session, project, _jsonl(rows[:1]), filename="x.jsonl", edits=EditSource("no spaces"))
    assert _counts() == before


def test_an_edit_for_a_full_item_is_refused_and_the_whole_file_with_it(make_project):
    project = make_project(n=1)
    with session_scope() as session:
        import_file(session, project, _jsonl(ROWS[:1]), filename="a.jsonl", edits=EditSource("first"))
    before = _counts()
    late = [{"prompt": "new", "response": "item", "edited": "item!"}, ROWS[0]]
    with pytest.raises(ImportRejected) as caught, session_scope() as session:
        import_file(session, project, _jsonl(late), filename="b.jsonl", edits=EditSource("second"))
    assert [(e.line, e.field) for e in caught.value.errors] == [(2, "edited")]
    assert "already has its 1 annotation(s)" in caught.value.errors[0].message
    assert _counts() == before


def test_cli_web_form_and_api_import_edits(web_client, make_user, make_project, login_as, tmp_path):
    admin = make_user("boss", "admin")
    project = make_project(name="Edits project")
    path = tmp_path / "edits.csv"
    path.write_text("prompt,response,fixed\nP1,R1,R1 fixed\nP2,R2,\n")
    refused = CliRunner().invoke(cli, ["import", "Edits project", str(path), "--map", "edited=fixed"])
    assert refused.exit_code != 0 and "line 2, field 'edited'" in refused.output
    done = CliRunner().invoke(cli, ["import", "Edits project", str(path), "--map", "edited=fixed",
                                    "--edits-from", "vendor", "--edits-as", "suggestions"])
    assert done.exit_code == 0, done.output
    assert "imported 2 item(s)" in done.output and "1 suggestion(s) from 'vendor' stored" in done.output

    csrf = login_as(web_client, "boss")
    files = {"file": ("e.jsonl", _jsonl(ROWS[:1]).getvalue(), "application/json")}
    page = web_client.post(f"/admin/projects/{project.id}/import", files=files,
                           data={"csrf_token": csrf, "edits_from": "web-src", "edits_as": "edits"})
    assert page.status_code == 200 and "1 completed edit(s) from &#39;web-src&#39; stored" in page.text
    bad = web_client.post(f"/admin/projects/{project.id}/import", files=files,
                          data={"csrf_token": csrf, "edits_from": "x", "edits_as": "edits"})
    assert bad.status_code == 400 and "edits source: 2–48 characters" in bad.text

    web_client.post("/logout", headers={"X-CSRF-Token": csrf})
    with session_scope() as session:
        _, secret = api_tokens.create_token(session, session.get(User, admin.id), "t", ["items:write"])
    url = f"/api/v1/projects/{project.id}/items"
    body = {"records": [{"prompt": "A", "response": "B", "edited": "B!"}], "edits_from": "api-src"}
    created = web_client.post(url, json=body, headers={"Authorization": f"Bearer {secret}"})
    assert created.status_code == 201, created.text
    assert (created.json()["imported"], created.json()["edits"]) == (1, 1)
    refused = web_client.post(url, json={"records": [{"prompt": "C", "response": "D", "edited": "E"}]},
                              headers={"Authorization": f"Bearer {secret}"})
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "edited"
    with session_scope() as session:
        kinds = dict(session.execute(select(User.username, User.kind).where(User.username.like("import-%"))).all())
    assert kinds == {"import-web-src": "import", "import-api-src": "import"}
