"""Import from JSONL, CSV and Parquet: mapping, preference files, line-and-field errors, all-or-nothing."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from app.cli import main as cli
from app.db import session_scope
from app.models import ImportBatch, Item
from app.services.import_formats import import_file
from app.services.importer import ImportRejected


def _count(project_id: int) -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(Item).where(Item.project_id == project_id))


def _jsonl(rows) -> io.BytesIO:
    return io.BytesIO("".join(json.dumps(r) + "\n" for r in rows).encode())


def test_jsonl_import_dedups_and_keeps_source(make_project):
    project = make_project()
    rows = [{"prompt": "p1", "response": "r1", "model": "m"}, {"prompt": "p1", "response": "r1"},
            {"prompt": "p2", "response": "r2"}]
    with session_scope() as session:
        result = import_file(session, project, _jsonl(rows), filename="a.jsonl")
    assert (result.imported, result.duplicates) == (2, 1)
    with session_scope() as session:  # a second import of the same file adds nothing
        again = import_file(session, project, _jsonl(rows), filename="a.jsonl")
        first = session.scalars(select(Item).order_by(Item.id)).first()
        batch = session.get(ImportBatch, result.batch_id)
    assert (again.imported, again.duplicates) == (0, 3)
    assert first.source == {"model": "m"} and len(batch.file_sha256) == 64


def test_bad_rows_are_reported_with_line_and_field_and_nothing_is_written(make_project):
    project = make_project()
    stream = io.BytesIO(b'{"prompt": "ok", "response": "fine"}\n{"prompt": "", "response": "x"}\n'
                        b"not json\n" + b'{"prompt": "p", "response": 5}\n')
    with session_scope() as session, pytest.raises(ImportRejected) as caught:
        import_file(session, project, stream, filename="bad.jsonl")
    found = {(e.line, e.field) for e in caught.value.errors}
    assert found == {(2, "prompt"), (3, "(json)"), (4, "response")}
    assert _count(project.id) == 0


def test_latin1_files_say_where_and_to_save_as_utf8(make_project):
    project = make_project()
    latin1_csv = io.BytesIO("prompt,response\nhello,world\nCafé?,naïve\n".encode("latin-1"))
    latin1_jsonl = io.BytesIO('{"prompt": "ok", "response": "café"}\n'.encode("latin-1"))
    for stream, name, where in ((latin1_csv, "x.csv", (3, "prompt")), (latin1_jsonl, "x.jsonl", (1, "response"))):
        with session_scope() as session, pytest.raises(ImportRejected) as caught:
            import_file(session, project, stream, filename=name)
        (error,) = caught.value.errors
        assert (error.line, error.field) == where
        assert "byte 0xe9" in error.message and "save the file as UTF-8" in error.message
    header = io.BytesIO("prompt,répons\nhello,world\n".encode("latin-1"))
    with session_scope() as session, pytest.raises(ImportRejected) as caught:
        import_file(session, project, header, filename="h.csv", mapping={"response": "répons"})
    assert (caught.value.errors[0].line, caught.value.errors[0].field) == (1, "(header)")
    assert _count(project.id) == 0


def test_nul_characters_are_refused_with_line_and_field(make_project):
    project = make_project()
    rows = [{"prompt": "fine", "response": "fine"}, {"prompt": "p", "response": "bad\u0000text"},
            {"prompt": "p2", "response": "r2", "meta": {"note": "x\u0000"}}]
    with session_scope() as session, pytest.raises(ImportRejected) as caught:
        import_file(session, project, _jsonl(rows), filename="nul.jsonl")
    found = {(e.line, e.field): e.message for e in caught.value.errors}
    assert set(found) == {(2, "response"), (3, "meta.note")}
    assert "NUL character (U+0000) at character 4" in found[(2, "response")]
    csv_nul = io.BytesIO(b"prompt,response\nP,R\x00\n")
    with session_scope() as session, pytest.raises(ImportRejected) as caught:
        import_file(session, project, csv_nul, filename="nul.csv")
    assert [(e.line, e.field) for e in caught.value.errors] == [(2, "response")]
    assert _count(project.id) == 0


def test_csv_with_mapping_and_preference_parquet(make_project):
    project = make_project()
    csv_bytes = io.BytesIO(b"question,answer,id\n\"What, exactly?\",\"This.\",7\nQ2,A2,8\n")
    with session_scope() as session:
        result = import_file(session, project, csv_bytes, filename="x.csv",
                             mapping={"prompt": "question", "response": "answer"})
    assert result.imported == 2
    table = pa.table({"prompt": ["P"], "chosen": ["good answer"], "rejected": ["bad answer"]})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    buffer.seek(0)
    with session_scope() as session:
        import_file(session, project, buffer, filename="pref.parquet")
        item = session.scalars(select(Item).where(Item.prompt == "P")).one()
    assert item.original == "bad answer" and item.source["chosen"] == "good answer"


def test_csv_missing_column_names_the_field(make_project):
    project = make_project()
    with session_scope() as session, pytest.raises(ImportRejected) as caught:
        import_file(session, project, io.BytesIO(b"text,other\na,b\n"), filename="x.csv")
    assert {(e.line, e.field) for e in caught.value.errors} == {(2, "prompt"), (2, "response")}


def test_cli_import(make_project, tmp_path):
    project = make_project(name="CLI project")
    path = tmp_path / "items.jsonl"
    path.write_text('{"instruction": "i", "output": "o"}\n{"instruction": "j"}\n')
    bad = CliRunner().invoke(cli, ["import", "CLI project", str(path)])
    assert bad.exit_code != 0 and "line 2, field 'response'" in bad.output
    path.write_text('{"instruction": "i", "output": "o"}\n')
    good = CliRunner().invoke(cli, ["import", str(project.id), str(path)])
    assert good.exit_code == 0, good.output
    assert "imported 1 item" in good.output and _count(project.id) == 1


def test_admin_upload_page(web_client, make_user, make_project, login_as):
    make_user("boss", "admin")
    project = make_project()
    csrf = login_as(web_client, "boss")
    files = {"file": ("items.jsonl", b'{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n', "application/json")}
    bad = web_client.post(f"/admin/projects/{project.id}/import", data={"csrf_token": csrf}, files=files)
    assert bad.status_code == 400 and "line 2, field <code>response</code>" in bad.text
    files = {"file": ("items.jsonl", b'{"prompt": "a", "response": "b"}\n', "application/json")}
    good = web_client.post(f"/admin/projects/{project.id}/import", data={"csrf_token": csrf}, files=files)
    assert good.status_code == 200 and "Imported 1 item(s)" in good.text
    assert _count(project.id) == 1


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_large_file_imports_in_flat_memory(make_project, tmp_path):
    import tracemalloc

    project = make_project()
    path = tmp_path / "big.jsonl"
    filler = "word " * 100
    with path.open("w") as out:
        for i in range(40_000):
            out.write(json.dumps({"prompt": f"Prompt {i}", "response": f"{filler}{i}"}) + "\n")
    size_mb = path.stat().st_size / 1e6
    tracemalloc.start()
    with session_scope() as session, path.open("rb") as stream:
        result = import_file(session, project, stream, filename=path.name)
    peak_mb = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    assert result.imported == 40_000 and _count(project.id) == 40_000
    assert peak_mb < size_mb / 2, (peak_mb, size_mb)  # far below the file: it never sat in memory


def test_archiving_hides_a_project_from_annotators(web_client, make_user, make_project, login_as):
    make_user("boss", "admin")
    ann = make_user("ann")
    project = make_project(name="Old project", members=[ann])
    csrf = login_as(web_client, "boss")
    done = web_client.post(f"/admin/projects/{project.id}/archived", data={"archived": "true", "csrf_token": csrf})
    assert done.status_code == 200 and "Archived" in done.text
    web_client.post("/logout", headers={"X-CSRF-Token": csrf})
    csrf = login_as(web_client, "ann")
    assert "Old project" not in web_client.get("/annotate").text
    assert web_client.post(f"/annotate/{project.id}/next", headers={"X-CSRF-Token": csrf}).status_code == 403
