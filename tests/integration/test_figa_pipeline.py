"""The FIGA pipeline as one job, end to end on real parts: a tiny random policy generates (the training CLI),
a tiny random reward model scores and the lowest half is kept, the importer makes items, a model editor on
the real OpenAI-compatible server revises them through the queue and the one submit, and the revisions in
the edit-rate range become a dataset version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from app.db import engine_for, session_scope
from app.editors import service as editor_service
from app.editors.service import EditorSettings
from app.models import DatasetRow, DatasetVersion, Edit, EditorJobItem, Item, Job, JobStatus, User
from app.services import jobs
from app.services.projects import ProjectSettings, create_project
from app.settings import Settings
from app.worker.command import job_command
from app.worker.loop import Worker

pytestmark = [pytest.mark.postgres, pytest.mark.llm, pytest.mark.slow]


@pytest.fixture
def tiny_reward_model(tiny_model_path: Path, tmp_path: Path) -> Path:
    """A randomly initialised reward model (token head) on the tiny policy's backbone, with its tokenizer."""
    import torch
    from transformers import AutoTokenizer

    from training.models import RewardModel

    folder = tmp_path / "tiny-rm"
    torch.manual_seed(1)  # the same head every run, so the same responses are kept
    RewardModel.from_backbone(str(tiny_model_path), "token").save(folder, base_model=str(tiny_model_path))
    AutoTokenizer.from_pretrained(tiny_model_path).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_the_figa_pipeline_runs_as_one_job(settings_env, db_url, tmp_path, tiny_model_path, tiny_reward_model,
                                           llm_server, default_tokenizer_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Name a colour.\nWhat is two plus two?\nSay hello.\nName a fruit.\n")
    with session_scope() as session:
        project = create_project(session, ProjectSettings(name="FIGA data", tokenizer=str(default_tokenizer_path)),
                                 None)
        editor = editor_service.create_editor(session, EditorSettings(
            name="smol", base_url=llm_server["base_url"], model=llm_server["model"], max_tokens=64,
            max_concurrency=2, timeout_s=120), None)
        spec = jobs.JobSpec(
            kind="figa-pipeline", base_model=str(tiny_model_path), name="spa",
            config={"data": str(prompts), "max_new_tokens": 8, "batch_size": 4, "seed": 3},
            worker_options={"import_into_project": project.id, "score_model": str(tiny_reward_model),
                            "keep_fraction": 0.5, "editor_id": editor.id, "min_edit_rate": 0.0,
                            "max_edit_rate": 50.0, "version_name": "spa pairs"},
        )
        job_id, project_id, editor_id, account_id = jobs.create_job(session, spec, None).id, project.id, editor.id, \
            editor.user_id
    settings = Settings(data_dir=tmp_path / "data", worker_heartbeat_s=0.5, worker_poll_s=0.2,
                        worker_stale_after_s=600, worker_cancel_grace_s=5)
    Worker(engine_for(db_url), settings, command_for=job_command).run_once()

    with session_scope() as session:
        job = session.get(Job, job_id)
        log = jobs.full_log(session, job_id)
        assert job.status == JobStatus.SUCCEEDED, f"{job.error}\n{log[-4000:]}"
        assert [(stage["name"], stage["status"]) for stage in job.stages] == [
            (name, "done") for name in ("generate", "score", "import", "revise", "version")]
        assert job.progress == 1.0
        responses = [json.loads(line) for line in (Path(job.output_dir) / "responses.jsonl").read_text().splitlines()]
        scores = {row["id"]: row["score"] for row in map(json.loads, (
            Path(job.output_dir).parent / "score" / "scores.jsonl").read_text().splitlines())}
        # The lowest-scoring half of the four responses became the project's items.
        items = session.scalars(select(Item).where(Item.project_id == project_id).order_by(Item.id)).all()
        lowest = sorted(responses, key=lambda row: scores[row["id"]])[:2]
        assert sorted((i.prompt, i.original) for i in items) == sorted((r["prompt"], r["response"]) for r in lowest)
        assert all(i.source["job_id"] == job_id and i.source["score"] == scores[i.source["generation_id"]]
                   for i in items)
        # Each item revised once by the editor's account, through the one submit, with its provenance.
        fates = session.scalars(select(EditorJobItem).where(EditorJobItem.job_id == job_id)).all()
        assert sorted(f.item_id for f in fates) == [i.id for i in items]
        edits = session.scalars(select(Edit).where(Edit.annotator_id == account_id)).all()
        assert sorted(e.item_id for e in edits) == [i.id for i in items]
        written = [e for e in edits if e.outcome != "skipped"]  # an answer the model got wrong: skipped, said why
        assert all(e.skip_reason.startswith("model editor failed: ") for e in edits if e.outcome == "skipped")
        assert {(e.editor_id, e.editor_model) for e in written} == {(editor_id, llm_server["model"])}
        assert session.get(User, account_id).kind == "model"
        # The revisions with an edit within the range: the dataset version, frozen.
        version = session.get(DatasetVersion, job.stages[4]["data"]["dataset_version_id"])
        kept = [e for e in written if e.outcome == "edited" and e.edit_rate <= 50.0]
        assert version.name == "spa pairs" and version.row_count == len(kept) > 0
        rows = [json.loads(text) for text in session.scalars(
            select(DatasetRow.data).where(DatasetRow.dataset_version_id == version.id))]
        assert sorted(row["edited"] for row in rows) == sorted(e.edited_text for e in kept)
        assert {(row["annotator_kind"], row["editor"]) for row in rows} == {("model", "smol")}
    assert log.count("[redline] stage ") == 5 and "editor smol" in log
    assert job.stages[3]["detail"] == f"{len(written)} items revised by smol, {len(edits) - len(written)} failed"
