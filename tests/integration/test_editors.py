"""Model editors end to end against a REAL model server (`transformers serve` on SmolLM2), with a
fault-injecting proxy in front of it for the fault tests, on the real Postgres."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import factories
import pytest
import yaml
from fault_proxy import FaultProxy
from sqlalchemy import func, select

from app.db import session_scope
from app.editors import bulk, service
from app.editors.client import EditorClient, EditorFailure, EndpointConfig
from app.editors.service import EditorSettings
from app.models import (
    AnnotatorKind,
    AuditEvent,
    Edit,
    EditorJobItem,
    Item,
    Lease,
    LeaseState,
    ModelEditor,
    Project,
    Suggestion,
    User,
)
from app.services.importer import import_records
from app.services.projects import ProjectSettings, create_project, set_members

pytestmark = [pytest.mark.postgres, pytest.mark.llm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
# Short items, and a token cap that leaves room for the tags around a short answer. `transformers serve`
# answers one request at a time, tens of seconds each on a busy 2-core box: timeouts are generous.
ITEMS = [
    ("What is the capital of France?", "The capital of France is Lyon."),
    ("What colour is the sky on a clear day?", "The sky is green on a clear day."),
    ("How many legs does a cat have?", "A cat has four legs."),
]


@pytest.fixture
def env(worker_process_env, default_tokenizer_path):
    return worker_process_env


@pytest.fixture
def proxy(llm_server):
    proxy = FaultProxy(llm_server["root"])
    proxy.start()
    yield proxy
    proxy.stop()


def make_editor(base_url: str, model: str, **fields) -> int:
    settings = EditorSettings(name=fields.pop("name", "smol"), base_url=base_url, model=model,
                              **{"max_tokens": 48, "timeout_s": 900.0, "max_concurrency": 2, **fields})
    with session_scope() as session:
        return service.create_editor(session, settings, None).id


def make_project(tokenizer: Path, items=ITEMS, **settings) -> int:
    with session_scope() as session:
        project = create_project(session, ProjectSettings(name="Editing", tokenizer=str(tokenizer), **settings), None)
        import_records(session, project, [{"prompt": p, "response": r} for p, r in items], filename="t.jsonl")
        return project.id


def make_person(project_id: int, username: str) -> User:
    """An annotator who works in the project (before the editor joins it)."""
    with session_scope() as session:
        user = factories.make_user(session, username=username)
        set_members(session, session.get(Project, project_id), {user.id}, None)
        return user


def job_config(editor_id: int, project_id: int, mode: str = "annotate") -> dict:
    with session_scope() as session:
        job = service.start_job(session, service.get_editor(session, editor_id), project_id, mode, None)
        return dict(job.config)


def model_edits(project_id: int) -> list[Edit]:
    with session_scope() as session:
        return list(session.scalars(
            select(Edit).join(Item, Item.id == Edit.item_id).join(User, User.id == Edit.annotator_id)
            .where(Item.project_id == project_id, User.kind == AnnotatorKind.MODEL).order_by(Edit.item_id)))


def assert_each_item_edited_once(project_id: int) -> list[Edit]:
    edits = model_edits(project_id)
    with session_scope() as session:
        items = session.scalars(select(Item.id).where(Item.project_id == project_id)).all()
    assert sorted(e.item_id for e in edits) == sorted(items)  # none lost, none twice
    return edits


def test_api_keys_are_encrypted_and_never_shown(env, tmp_path):
    editor_id = make_editor("http://127.0.0.1:9/v1", "m", api_key="sk-very-secret-123")
    with session_scope() as session:
        editor = session.get(ModelEditor, editor_id)
        assert "sk-very-secret" not in editor.api_key_encrypted and editor.api_key_encrypted
        assert service.endpoint(editor).api_key == "sk-very-secret-123"
        assert "sk-very" not in repr(service.endpoint(editor))
        events = session.scalars(select(AuditEvent).where(AuditEvent.object_type == "model_editor")).all()
        assert "sk-very" not in str([(e.before, e.after) for e in events]) and events[0].after["api_key_set"]
        account = session.get(User, editor.user_id)
        assert (account.kind, account.role, account.username) == ("model", "annotator", "model-smol")
        # Updating without a key keeps the stored one.
        service.update_editor(session, editor, EditorSettings(name="smol", base_url="http://127.0.0.1:9/v1",
                                                              model="m2"), None)
        assert service.endpoint(editor).api_key == "sk-very-secret-123"
    listed = subprocess.run([str(Path(sys.executable).with_name("redline")), "editors", "list"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert "smol" in listed.stdout and "key set" in listed.stdout and "sk-very" not in listed.stdout


def test_client_retries_every_fault_then_gets_the_real_answer(env, llm_server, proxy):
    proxy.queue("429", "503", "garbage", "hang")
    config = EndpointConfig(base_url=proxy.url, model=llm_server["model"], max_tokens=1, timeout_s=20,
                                    max_concurrency=1)

    async def go():
        client = EditorClient(config, attempts=5)
        try:
            answer = await client.retrying(lambda: client.chat("Say hi."))
            return answer, client.retries
        finally:
            await client.close()

    started = time.monotonic()
    answer, retries = asyncio.run(go())
    assert proxy.seen == ["429", "503", "garbage", "hang", "pass"] and retries == 4
    assert answer.truncated  # one token: the real model answered, cut at the cap
    assert time.monotonic() - started >= 1.0  # the 429's Retry-After was honoured

    async def refused():
        client = EditorClient(EndpointConfig(base_url="http://127.0.0.1:9/v1", model="m"), attempts=2)
        try:
            await client.retrying(lambda: client.chat("Say hi."))
        finally:
            await client.close()

    with pytest.raises(EditorFailure, match="cannot connect") as failure:
        asyncio.run(refused())
    assert failure.value.endpoint and failure.value.attempts == 2


def test_test_connection_shows_the_models_edit(env, llm_server, default_tokenizer_path):
    editor_id = make_editor(llm_server["base_url"], llm_server["model"])
    project_id = make_project(default_tokenizer_path, ITEMS[:1])
    with session_scope() as session:
        editor = session.get(ModelEditor, editor_id)
        trial = service.try_editor(editor, service.trial_target(session, project_id))
    assert trial.original == ITEMS[0][1]
    assert trial.proposal is not None, trial.reason
    assert trial.proposal.prompt_version == service.template(editor).version
    assert trial.proposal.outcome in ("edited", "no_change_needed")


def test_bulk_job_through_faults_edits_each_item_once_with_provenance(env, llm_server, proxy, default_tokenizer_path,
                                                                       tmp_path):
    editor_id = make_editor(proxy.url, llm_server["model"])
    project_id = make_project(default_tokenizer_path, ITEMS[:2])
    proxy.queue("429", "empty", "503")
    tally = asyncio.run(bulk.run_job(job_config(editor_id, project_id), tmp_path / "out"))
    assert tally.done + tally.failed == 2
    assert {"429", "empty", "503"} <= set(proxy.seen)
    edits = assert_each_item_edited_once(project_id)
    with session_scope() as session:
        editor = session.get(ModelEditor, editor_id)
        version = service.template(editor).version
        rows = session.scalars(select(EditorJobItem)).all()
    for edit in edits:
        if edit.outcome == "skipped":  # an answer that stayed malformed: skipped with its reason
            assert edit.skip_reason.startswith("model editor failed")
            continue
        assert (edit.editor_id, edit.editor_model, edit.prompt_version) == (editor_id, llm_server["model"], version)
        assert edit.token_labels["algorithm"] and edit.stats  # labelled by the server, as a human edit
    assert sorted(r.status for r in rows).count("done") == tally.done
    assert (tmp_path / "out" / "progress.json").exists() and (tmp_path / "out" / "metrics.jsonl").exists()


def test_refused_endpoint_stops_the_job_and_the_next_run_resumes(env, llm_server, default_tokenizer_path, tmp_path):
    editor_id = make_editor("http://127.0.0.1:9/v1", llm_server["model"])
    project_id = make_project(default_tokenizer_path, ITEMS[:1])
    config = job_config(editor_id, project_id)
    with pytest.raises(bulk.EndpointDown, match="cannot connect"):
        asyncio.run(bulk.run_job(config, tmp_path / "out1"))
    with session_scope() as session:
        failed = session.scalars(select(EditorJobItem)).all()
        assert [r.status for r in failed] == ["failed"] and "cannot connect" in failed[0].error
        assert session.scalar(select(func.count()).select_from(Lease).where(Lease.state == LeaseState.ACTIVE)) == 1
        editor = session.get(ModelEditor, editor_id)
        service.update_editor(session, editor, EditorSettings(
            name="smol", base_url=llm_server["base_url"], model=llm_server["model"], max_tokens=48,
            timeout_s=900.0, max_concurrency=2), None)
    asyncio.run(bulk.run_job(job_config(editor_id, project_id), tmp_path / "out2"))
    assert_each_item_edited_once(project_id)


def test_sigkilled_job_loses_and_duplicates_nothing_when_resumed(env, llm_server, default_tokenizer_path, tmp_path):
    # One request at a time, so the answers (and the edits) come a model call apart: with two in flight,
    # all three items were once stored between two polls, before the kill.
    editor_id = make_editor(llm_server["base_url"], llm_server["model"], max_concurrency=1)
    project_id = make_project(default_tokenizer_path)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(job_config(editor_id, project_id)))
    argv = [sys.executable, "-m", "app.editors.bulk", "--config", str(config_path), "--output", str(tmp_path / "o")]
    log = (tmp_path / "job.log").open("wb")
    proc = subprocess.Popen(argv, env={**env, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not model_edits(project_id):
            assert proc.poll() is None, (tmp_path / "job.log").read_text()
            assert time.monotonic() < deadline, "no edit within 300 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert len(model_edits(project_id)) < len(ITEMS)  # killed mid-job
    asyncio.run(bulk.run_job(job_config(editor_id, project_id), tmp_path / "o2"))
    assert_each_item_edited_once(project_id)
    with session_scope() as session:
        leases = session.scalars(select(Lease)).all()
        assert len(leases) == len({lease.item_id for lease in leases}) == len(ITEMS)


def test_look_ahead_asks_only_for_what_the_queue_offers(env, llm_server, default_tokenizer_path, tmp_path):
    editor_id = make_editor(llm_server["base_url"], llm_server["model"])
    # A budget the guard never exceeds: one request per item asked.
    project_id = make_project(default_tokenizer_path, minimality_budget=10.0)
    person = make_person(project_id, "ann")
    with session_scope() as session:
        held = factories.next_task(session, session.get(Project, project_id), person)  # its only slot
    tally = asyncio.run(bulk.run_job(job_config(editor_id, project_id), tmp_path / "out"))
    last = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[-1])
    assert tally.done + tally.failed == len(ITEMS) - 1 and tally.unused == last["unused_answers"] == 0
    assert last["model_calls"] - last["retries"] == len(ITEMS) - 1  # never asked for the held item
    assert 0 < last["mean_in_flight"] <= 2
    edited = {edit.item_id for edit in model_edits(project_id)}
    assert held.item.id not in edited and len(edited) == len(ITEMS) - 1


def test_suggest_job_stores_one_suggestion_per_item_and_a_rerun_adds_none(env, llm_server, default_tokenizer_path,
                                                                          tmp_path):
    editor_id = make_editor(llm_server["base_url"], llm_server["model"])
    project_id = make_project(default_tokenizer_path, ITEMS[:2])
    tally = asyncio.run(bulk.run_job(job_config(editor_id, project_id, "suggest"), tmp_path / "out1"))
    with session_scope() as session:
        suggestions = session.scalars(select(Suggestion).order_by(Suggestion.item_id)).all()
        rows = session.scalars(select(EditorJobItem)).all()
        version = service.template(session.get(ModelEditor, editor_id)).version
    assert tally.done == len(suggestions) and tally.done + tally.failed == 2
    assert all((s.editor_id, s.editor_model, s.prompt_version) == (editor_id, llm_server["model"], version)
               for s in suggestions)
    assert sorted(r.status for r in rows).count("done") == tally.done
    again = asyncio.run(bulk.run_job(job_config(editor_id, project_id, "suggest"), tmp_path / "out2"))
    assert again.done + again.failed == 2 - len(suggestions)  # only the items still without one are asked
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Suggestion)) == len(suggestions) + again.done
