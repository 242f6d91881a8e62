"""Provenance of model edits: stored by the one submit, exported in every pairs format, filterable."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
from factories import next_task, submit
from sqlalchemy import select

from app.db import session_scope
from app.editors import service
from app.editors.service import EditorSettings
from app.models import Item, Outcome, Project, User
from app.services import annotation
from app.services.annotation import Provenance
from app.services.datasets import DatasetFilter
from app.services.export import stream_export
from app.services.freeze import create_version


def _edit_as(session, user: User, project: Project, text: str, provenance: Provenance = annotation.HUMAN) -> None:
    task = next_task(session, project, user)
    submit(session, task.lease.id, user, Outcome.EDITED, text, provenance=provenance)


def test_model_and_human_edits_carry_their_provenance_into_exports(settings_env, make_user, make_project, add_items):
    person = make_user("ann", "annotator")
    project = make_project("P", n=2, members=[person])
    [item_id] = add_items(project, [("Capital of France?", "It is Lyon.")])
    with session_scope() as session:
        editor = service.create_editor(session, EditorSettings(name="smol", base_url="http://127.0.0.1:9/v1",
                                                               model="smol-135m", api_key="sk-x"), None)
        service.join_project(session, editor, project.id)
        account = session.get(User, editor.user_id)
        version = service.template(editor).version
        editor_id = editor.id
    with session_scope() as session:
        project_row = session.get(Project, project.id)
        _edit_as(session, account, project_row, "It is Paris.",
                 Provenance(editor_id=editor_id, editor_model="smol-135m", prompt_version=version))
    with session_scope() as session:
        _edit_as(session, session.get(User, person.id), session.get(Project, project.id), "It is Paris!")
        assert session.get(Item, item_id).completed_count == 2  # the model's edit counted toward N

    def rows(**filters) -> list[dict]:
        with session_scope() as session:
            flt = DatasetFilter(project_id=project.id, review_statuses=["pending"], **filters)
            version_id = create_version(session, flt, "v", None).id
        data = b"".join(stream_export(session_scope, version_id, "pairs-jsonl"))
        return [json.loads(line) for line in data.splitlines()], version_id

    everything, version_id = rows()
    assert {(r["annotator_kind"], r["editor"], r["editor_model"], r["prompt_version"], r["suggestion_used"])
            for r in everything} == {("model", "smol", "smol-135m", version, False), ("human", None, None, None, False)}
    models, _ = rows(annotator_kinds=["model"])
    assert [r["edited"] for r in models] == ["It is Paris."]
    assert [r["edited"] for r in rows(annotator_kinds=["human"])[0]] == ["It is Paris!"]
    assert [r["edited"] for r in rows(editor_ids=[editor_id])[0]] == ["It is Paris."]
    assert "sk-x" not in json.dumps(everything)

    table = pq.read_table(io.BytesIO(b"".join(stream_export(session_scope, version_id, "pairs-parquet"))))
    by_kind = dict(zip(table.column("annotator_kind").to_pylist(), table.column("editor").to_pylist(), strict=True))
    assert by_kind == {"model": "smol", "human": None}
    with session_scope() as session:
        assert session.scalar(select(User.kind).where(User.id == person.id)) == "human"
