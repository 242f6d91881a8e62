"""The annotation server's side of the reproduction, through the app's own services.

Initial responses are imported into a fresh SQLite database with the importer, the simulated annotator
works the queue exactly as a person does (lease the next item, submit an edit: the server recomputes
labels with the project's tokenizer), a dataset version freezes the edits, and the exporter streams
the edit-pair file the training CLI reads.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session

from app.db import engine_for
from app.driver import SessionDatabase
from app.models import Base, Outcome, Project, Role, User
from app.security import hash_password
from app.services.annotation import submit
from app.services.datasets import DatasetFilter
from app.services.export import stream_export
from app.services.freeze import create_version
from app.services.importer import import_records
from app.services.projects import ProjectSettings, create_project, set_members
from app.services.queue import next_task
from labels import DEFAULT_MINIMALITY_BUDGET

Editor = Callable[[str, str], tuple[str, str]]  # (prompt, response) -> (edited text, outcome)


def open_database(path: Path) -> Session:
    """A fresh database file with the server's schema."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    engine = engine_for(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    return Session(engine, expire_on_commit=False)


def _user(session: Session, username: str, role: Role) -> User:
    user = User(username=username, display_name=username, role=role.value,
                password_hash=hash_password("sim-" + username))
    session.add(user)
    session.flush()
    return user


async def _annotate_all(session: Session, project: Project, annotator: User, editor: Editor) -> Counter[str]:
    """Next and submit until nothing is left, as the server does them, in this session."""
    db, outcomes = SessionDatabase(session), Counter[str]()
    while (task := (await next_task(db, project.id, annotator))[1]) is not None:
        session.commit()
        edited, outcome = editor(task.item.prompt, task.item.original)
        await submit(db, task.lease.id, annotator, Outcome(outcome), edited)
        session.commit()
        outcomes[outcome] += 1
    return outcomes


def annotate_and_export(db_path: Path, responses: list[dict], tokenizer: str, editor: Editor, export_path: Path,
                        minimality_budget: float = DEFAULT_MINIMALITY_BUDGET) -> dict:
    """Import `responses` ({prompt, response, ...}), annotate every item with `editor`, export the
    pairs-jsonl of all edited and no-change rows to `export_path`; returns counts."""
    session = open_database(db_path)
    admin = _user(session, "sim-admin", Role.ADMIN)
    annotator = _user(session, "sim-annotator", Role.ANNOTATOR)
    project = create_project(session, ProjectSettings(name="simulated facts", tokenizer=tokenizer,
                                                      minimality_budget=minimality_budget), admin)
    set_members(session, project, {annotator.id}, admin)
    records = [{"prompt": r["prompt"], "response": r["response"], "source": {"model": r.get("model", ""),
                "id": r.get("id", "")}} for r in responses if r["response"].strip()]
    result = import_records(session, project, records, filename="initial_responses.jsonl", actor=admin)
    session.commit()

    outcomes = asyncio.run(_annotate_all(session, project, annotator, editor))

    flt = DatasetFilter(project_id=project.id, outcomes=["edited", "no_change_needed"],
                        review_statuses=["accepted", "pending"])
    version = create_version(session, flt, "simulated edits", admin)
    session.commit()
    export_path.parent.mkdir(parents=True, exist_ok=True)
    with export_path.open("wb") as fh:
        for chunk in stream_export(session, version.id, "pairs-jsonl"):
            fh.write(chunk)
    session.close()
    rows = [json.loads(line) for line in export_path.read_text().splitlines() if line.strip()]
    return {"imported": result.imported, "duplicates": result.duplicates, "outcomes": dict(outcomes),
            "exported_rows": len(rows), "not_minimal": sum(bool(r.get("not_minimal")) for r in rows)}
