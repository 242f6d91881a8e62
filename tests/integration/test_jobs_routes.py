"""The research dashboard's routes through the whole app (security middleware included), on real databases."""

from __future__ import annotations

import html
import importlib.util
import io
import json
import re
import threading
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import TEST_PASSWORD
from factories import make_corpus
from sqlalchemy import select

from app.db import session_scope
from app.models import AuditEvent, Job, JobStatus, Project, utcnow
from app.services import jobs
from app.services.cluster import SlurmRequest
from app.services.datasets import DatasetFilter
from app.services.freeze import create_version
from app.worker.runner import list_artifacts


@pytest.fixture
def researcher(make_user, web_client, login_as):
    make_user("rita", "researcher")
    return login_as(web_client, "rita")


@pytest.fixture
def dataset_id(settings_env) -> int:
    with session_scope() as session:
        corpus = make_corpus(session)
        flt = DatasetFilter(project_id=corpus["project"].id, review_statuses=["accepted", "pending"])
        return create_version(session, flt, "pairs v1", corpus["admin"]).id


def form(csrf: str, **fields: str) -> dict[str, str]:
    return {"csrf_token": csrf, "kind": "token-rm", "base_model": "tiny-model", "num_processes": "1", **fields}


def errors_of(page: str) -> dict[str, str]:
    found = re.findall(r'<div class="field-error" id="error-([a-z_]+)" role="alert">([^<]*)</div>', page)
    return {name: html.unescape(message) for name, message in found}


def add_job(**fields) -> int:
    with session_scope() as session:
        spec = jobs.JobSpec(kind="token-rm", config={}, base_model="m", **fields)
        return jobs.create_job(session, spec, None).id


def test_pages_need_a_researcher_or_admin(web_client, make_user):
    page = web_client.get("/jobs", headers={"accept": "text/html"}, follow_redirects=False)
    assert page.headers["location"].startswith("/login")
    assert web_client.get("/jobs/1/metrics").status_code == 401
    make_user("anna", "annotator")
    token = re.search(r'name="csrf_token" value="([^"]+)"', web_client.get("/login").text)[1]
    login = {"username": "anna", "password": TEST_PASSWORD, "csrf_token": token}
    assert web_client.post("/login", data=login, follow_redirects=False).status_code == 303
    assert web_client.get("/jobs").status_code == 403
    assert web_client.get("/jobs/new").status_code == 403


def test_new_job_form_is_generated_from_the_training_config(web_client, researcher, dataset_id):
    page = web_client.get(f"/jobs/new?dataset_version_id={dataset_id}")
    assert page.status_code == 200
    html = page.text
    for field in ("learning_rate", "batch_size", "edit_span_weight", "keep_l2_weight", "use_lora"):
        assert f'name="{field}"' in html
    assert 'name="output_dir"' not in html and 'name="data"' not in html
    assert '<option value="edit_span" selected>' in html  # choices with the default selected
    assert f'<option value="{dataset_id}" selected>' in html
    fields = web_client.get("/jobs/new/fields?kind=ppo").text
    assert 'name="kl_coef"' in fields and 'name="edit_span_weight"' not in fields


def test_invalid_values_get_one_message_per_field_and_no_job(web_client, researcher, dataset_id):
    response = web_client.post(
        "/jobs",
        data=form(
            researcher,
            dataset_version_id=str(dataset_id),
            learning_rate="fast",
            batch_size="0",
            loss="hinge",
            max_steps="2.5",
            num_processes="0",
        ),
    )
    assert response.status_code == 422
    errors = errors_of(response.text)
    assert errors["learning_rate"] == "'fast' is not a number"
    assert errors["batch_size"] == "must be at least 1"
    assert errors["loss"] == "must be one of: edit_span, tlcr"
    assert errors["max_steps"] == "'2.5' is not a whole number"
    assert "num_processes" in errors
    assert 'value="fast"' in response.text  # the submitted values are kept
    with session_scope() as session:
        assert session.scalars(select(Job)).all() == []


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_rollouts_without_the_gpu_extra_are_refused_on_the_form(web_client, researcher, dataset_id):
    fields = web_client.get("/jobs/new/fields?kind=ppo").text
    assert 'name="generator"' in fields and '<option value="hf" selected>' in fields
    assert '<option value="vllm" >' in fields
    ppo = form(researcher, kind="ppo", dataset_version_id=str(dataset_id), reward_model="runs/rm/model")
    response = web_client.post("/jobs", data={**ppo, "generator": "vllm", "vllm_gpu_memory_utilization": "0.5"})
    assert response.status_code == 422
    assert errors_of(response.text)["generator"] == (
        "vllm is not installed: install the gpu extra (pip install 'redline[gpu]')")
    with session_scope() as session:
        assert session.scalars(select(Job)).all() == []
    response = web_client.post("/jobs", data={**ppo, "generator": "hf"}, follow_redirects=False)
    assert response.status_code == 303
    with session_scope() as session:
        assert session.scalars(select(Job)).one().config["generator"] == "hf"


def test_a_job_needs_a_dataset_version(web_client, researcher):
    response = web_client.post("/jobs", data=form(researcher))
    assert response.status_code == 422
    assert errors_of(response.text)["dataset_version_id"] == "choose a dataset version"


def test_posting_without_the_csrf_token_is_refused(web_client, researcher, dataset_id):
    data = form(researcher, dataset_version_id=str(dataset_id))
    del data["csrf_token"]
    assert web_client.post("/jobs", data=data).status_code == 403


def test_a_valid_job_is_queued_with_typed_config_and_audited(web_client, researcher, dataset_id):
    response = web_client.post(
        "/jobs",
        data=form(researcher, dataset_version_id=str(dataset_id), name="rm <b>one</b>", learning_rate="3e-4",
                  max_steps="7", use_lora="true", loss="tlcr"),
        follow_redirects=False,
    )
    assert response.status_code == 303
    job_id = int(response.headers["location"].rsplit("/", 1)[1])
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job.status == JobStatus.QUEUED and job.dataset_version_id == dataset_id
        assert job.config["learning_rate"] == 3e-4 and job.config["max_steps"] == 7
        assert job.config["use_lora"] is True and job.config["gradient_checkpointing"] is False
        assert job.config["loss"] == "tlcr" and "output_dir" not in job.config
        audited = select(AuditEvent.action).where(AuditEvent.object_type == "job", AuditEvent.object_id == str(job_id))
        assert session.scalars(audited).all() == ["job.create"]
    page = web_client.get(f"/jobs/{job_id}").text
    assert "rm &lt;b&gt;one&lt;/b&gt;" in page and "<b>one</b>" not in page
    assert 'hx-trigger="every 2s"' in page  # live panel polls while the job is active


def test_generate_validates_the_uploaded_prompt_file_by_line(web_client, researcher, settings_env):
    bad = b'{"prompt": "Say hi"}\n{"text": "no prompt here"}\n'
    response = web_client.post(
        "/jobs",
        data=form(researcher, kind="generate"),
        files={"prompts_file": ("prompts.jsonl", io.BytesIO(bad), "application/jsonl")},
    )
    assert response.status_code == 422
    assert errors_of(response.text)["prompts_file"] == 'prompts.jsonl: line 2: needs a non-empty string field "prompt"'
    assert not (settings_env.data_dir / "uploads").exists() or not any((settings_env.data_dir / "uploads").iterdir())

    good = b"Write a haiku about rain.\n\nName three rivers.\n"
    response = web_client.post(
        "/jobs",
        data=form(researcher, kind="generate", max_new_tokens="16"),
        files={"prompts_file": ("prompts.txt", io.BytesIO(good), "text/plain")},
        follow_redirects=False,
    )
    assert response.status_code == 303, errors_of(response.text)
    with session_scope() as session:
        job = session.scalars(select(Job)).one()
        assert Path(job.config["data"]).read_bytes() == good
        assert job.config["max_new_tokens"] == 16


def test_generate_feed_needs_a_threshold_with_its_reward_model(web_client, researcher, dataset_id):
    with session_scope() as session:
        project_id = session.scalars(select(Project.id)).first()
    response = web_client.post(
        "/jobs",
        data=form(researcher, kind="generate", dataset_version_id=str(dataset_id), project_id=str(project_id),
                  score_model="var/rm"),
    )
    assert response.status_code == 422
    assert "score_below" in errors_of(response.text)


def test_cancel_from_the_dashboard(web_client, researcher):
    job_id = add_job()
    response = web_client.post(f"/jobs/{job_id}/cancel", data={"csrf_token": researcher}, follow_redirects=False)
    assert response.status_code == 303
    with session_scope() as session:
        assert session.get(Job, job_id).status == JobStatus.CANCELLED
    again = web_client.post(f"/jobs/{job_id}/cancel", data={"csrf_token": researcher})
    assert again.status_code == 409
    assert web_client.post("/jobs/999/cancel", data={"csrf_token": researcher}).status_code == 404


def test_metrics_endpoint_returns_points_after_a_cursor(web_client, researcher):
    job_id = add_job()
    with session_scope() as session:
        jobs.record_metrics(session, job_id, [{"step": 1, "loss": 2.0, "lr": 1e-5}])
    first = web_client.get(f"/jobs/{job_id}/metrics").json()
    assert sorted(map(tuple, first["points"])) == [("loss", 1, 2.0), ("lr", 1, 1e-5)]
    with session_scope() as session:
        jobs.record_metrics(session, job_id, [{"step": 2, "loss": 1.5}])
    second = web_client.get(f"/jobs/{job_id}/metrics?after={first['cursor']}").json()
    assert second["points"] == [["loss", 2, 1.5]]
    with session_scope() as session:  # a step written twice in one round (an editor job's final row): the last
        assert jobs.record_metrics(session, job_id, [{"step": 3, "loss": 1.2}, {"step": 3, "loss": 1.1}]) == 1
    third = web_client.get(f"/jobs/{job_id}/metrics?after={second['cursor']}").json()
    assert third["points"] == [["loss", 3, 1.1]]


def finished_job_with_files(tmp_path: Path) -> int:
    out = tmp_path / "out"
    (out / "model").mkdir(parents=True)
    (out / "model" / "model.safetensors").write_bytes(b"w" * 3000)
    (out / "model" / "config.json").write_text("{}")
    (out / "eval.json").write_text(json.dumps({"accuracy": 0.8}))
    (out / "checkpoint-4").mkdir()
    (out / "checkpoint-4" / "model.safetensors").write_bytes(b"w" * 3000)
    (out / "checkpoint-4" / "trainer_state.pt").write_bytes(b"s" * 7000)
    job_id = add_job(name="a")
    with session_scope() as session:
        claimed = jobs.claim_next_job(session, "w1")
        jobs.set_run_paths(session, claimed.id, output_dir=str(out), log_path="", pid=None)
        jobs.finish_job(
            session, job_id, "w1", JobStatus.SUCCEEDED, eval_result={"accuracy": 0.8, "warning": "too few"},
            artifacts=list_artifacts(out),
        )
    return job_id


def test_artifacts_download_files_and_folders_as_zip(web_client, researcher, tmp_path):
    job_id = finished_job_with_files(tmp_path)
    assert web_client.get(f"/jobs/{job_id}/artifacts/eval.json").json() == {"accuracy": 0.8}
    response = web_client.get(f"/jobs/{job_id}/artifacts/model")
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert sorted(archive.namelist()) == ["model/config.json", "model/model.safetensors"]
    assert archive.read("model/model.safetensors") == b"w" * 3000
    # A checkpoint's optimizer state stays on disk for resuming; it is downloaded only when asked for.
    names = zipfile.ZipFile(io.BytesIO(web_client.get(f"/jobs/{job_id}/artifacts/checkpoint-4").content)).namelist()
    assert names == ["checkpoint-4/model.safetensors"]
    with_state = web_client.get(f"/jobs/{job_id}/artifacts/checkpoint-4?resume_state=1").content
    assert "checkpoint-4/trainer_state.pt" in zipfile.ZipFile(io.BytesIO(with_state)).namelist()
    assert web_client.get(f"/jobs/{job_id}/artifacts/metrics.jsonl").status_code == 404
    assert web_client.get(f"/jobs/{job_id}/artifacts/..%2F..%2Fetc").status_code == 404
    page = web_client.get(f"/jobs/{job_id}").text
    assert 'id="eval-table"' in page and "0.8" in page
    assert 'id="eval-warning"' in page and "too few" in page
    assert "checkpoint-4/ (zip)</a> <span class=\"muted small\">0.0 MB" in page and "?resume_state=1" in page
    assert "hx-trigger" not in page  # a finished job is not polled


def chart_of(page: str) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="compare-data">(.*?)</script>', page, re.S)[1])


def test_compare_plots_chosen_metrics_of_several_runs_and_tabulates_eval(web_client, researcher):
    first, second = add_job(name="lr-high"), add_job(name="lr-low")
    with session_scope() as session:
        for job_id, scale in ((first, 1.0), (second, 0.5)):
            jobs.record_metrics(session, job_id, [{"step": s, "loss": scale / s, "objective/kl": 0.1} for s in (1, 2)])
            session.get(Job, job_id).eval = {"accuracy": scale, f"only_{job_id}": 1}
    page = web_client.get(f"/jobs/compare?ids={first}&ids={second}").text
    chart = chart_of(page)
    assert chart["metrics"] == ["loss"]  # the default
    assert [s["points"] for s in chart["series"]] == [[[1, 1.0], [2, 0.5]], [[1, 0.5], [2, 0.25]]]
    assert [s["label"] for s in chart["series"]] == [f"#{first} lr-high", f"#{second} lr-low"]
    assert f"only_{first}" in page and f"only_{second}" in page
    both = chart_of(web_client.get(f"/jobs/compare?ids={first}&ids={second}&metric=objective/kl&metric=loss").text)
    assert both["metrics"] == ["objective/kl", "loss"]
    labels = [s["label"] for s in both["series"]]
    assert labels == [f"#{first} lr-high · objective/kl", f"#{second} lr-low · objective/kl",
                      f"#{first} lr-high · loss", f"#{second} lr-low · loss"]


def test_the_log_tail_spans_many_small_chunks(settings_env):
    job_id = add_job()
    with session_scope() as session:
        for line in range(500):
            jobs.append_log(session, job_id, f"line {line}\n")
        tail = jobs.log_tail(session, job_id, max_chars=100)
        assert tail.endswith("line 499\n") and len(tail) == 100
        assert jobs.log_tail(session, job_id).startswith("line 0\n")


def test_concurrent_log_appends_all_land_in_order_of_commit(settings_env):
    job_id = add_job()
    barrier = threading.Barrier(4)

    def append(writer: int) -> None:
        barrier.wait()
        for line in range(25):
            with session_scope() as session:
                jobs.append_log(session, job_id, f"w{writer} {line}\n")

    threads = [threading.Thread(target=append, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    with session_scope() as session:
        lines = jobs.full_log(session, job_id).splitlines()
    assert sorted(lines) == sorted(f"w{w} {line}" for w in range(4) for line in range(25))
    for writer in range(4):  # each writer's lines keep their order
        mine = [int(line.split()[1]) for line in lines if line.startswith(f"w{writer} ")]
        assert mine == list(range(25))


def test_run_again_prefills_the_form_from_an_earlier_job(web_client, researcher, dataset_id):
    with session_scope() as session:
        spec = jobs.JobSpec(kind="figa", config={"beta": 0.25, "max_steps": 9}, base_model="var/figa-base",
                            dataset_version_id=dataset_id, name="figa b.25")
        job_id = jobs.create_job(session, spec, None).id
    page = web_client.get(f"/jobs/new?from_job={job_id}").text
    assert '<option value="figa" selected>' in page
    assert 'name="beta" value="0.25"' in page and 'name="max_steps" value="9"' in page
    assert 'name="alpha" value="1.0"' in page  # keys the job did not set keep their defaults
    assert 'value="var/figa-base"' in page and 'value="figa b.25 (again)"' in page
    assert f'<option value="{dataset_id}" selected>' in page
    assert web_client.get("/jobs/new?from_job=999").status_code == 404


def test_a_job_whose_worker_went_silent_is_flagged_on_its_page(web_client, researcher, settings_env):
    job_id = add_job()
    with session_scope() as session:
        jobs.claim_next_job(session, "gone-worker")
        session.get(Job, job_id).heartbeat_at = utcnow() - timedelta(seconds=settings_env.worker_stale_after_s + 5)
    assert 'id="stale-warning"' in web_client.get(f"/jobs/{job_id}/live").text
    with session_scope() as session:
        jobs.heartbeat(session, job_id, "gone-worker", 0.5)
    assert 'id="stale-warning"' not in web_client.get(f"/jobs/{job_id}/live").text


def test_a_slurm_job_from_the_form_keeps_its_request_and_bad_fields_are_named(web_client, researcher, dataset_id):
    slurm = {"backend": "slurm", "slurm_nodes": "2", "slurm_gpus_per_node": "4", "slurm_partition": "gpu",
             "slurm_time_limit": "2-00:00:00", "slurm_account": "align",
             "slurm_sbatch": "#SBATCH --qos=high\n--mem=64G"}
    bad = {**slurm, "slurm_nodes": "3", "slurm_time_limit": "tomorrow", "slurm_sbatch": "--qos=high\nrm -rf /",
           "sharding": "zero3"}
    response = web_client.post("/jobs", data=form(researcher, dataset_version_id=str(dataset_id), num_processes="8",
                                                  **bad))
    assert response.status_code == 422
    errors = errors_of(response.text)
    assert errors["slurm_nodes"] == "the 8 processes must divide evenly among the nodes"
    assert errors["slurm_time_limit"].startswith("minutes, or Slurm's")
    assert errors["slurm_sbatch"] == "line 2: 'rm -rf /' is not an sbatch option (like --mem=32G or --qos=high)"
    assert errors["sharding"].startswith("deepspeed is not installed: install the gpu extra")
    assert "rm -rf /" in html.unescape(response.text)  # the submitted lines are kept for correction

    response = web_client.post("/jobs", data=form(researcher, dataset_version_id=str(dataset_id), num_processes="8",
                                                  sharding="fsdp", **slurm), follow_redirects=False)
    assert response.status_code == 303
    job_id = int(response.headers["location"].rsplit("/", 1)[1])
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job.backend == "slurm"
        assert jobs.slurm_request(job) == SlurmRequest(
            nodes=2, gpus_per_node=4, partition="gpu", time_limit="2-00:00:00", account="align",
            sbatch=("--qos=high", "--mem=64G"))
        assert jobs.worker_options(job)["sharding"] == "fsdp"
        assert "sharding" not in jobs.training_config(job)
    page = web_client.get(f"/jobs/{job_id}").text
    assert "Slurm: 2 nodes × 4 GPUs, partition <code>gpu</code>" in page and "sharded with <code>fsdp</code>" in page
    again = web_client.get(f"/jobs/new?from_job={job_id}").text
    assert '<option value="slurm" selected>' in again and 'name="slurm_partition" value="gpu"' in again
    assert "--qos=high\n--mem=64G</textarea>" in again


def test_figa_pipeline_form_says_what_is_missing_then_queues_one_chain(web_client, researcher, dataset_id):
    from app.editors import service as editor_service
    from app.editors.service import EditorSettings

    with session_scope() as session:
        project_id = session.scalars(select(Project.id)).first()
        editor_id = editor_service.create_editor(
            session, EditorSettings(name="smol", base_url="http://127.0.0.1:9/v1", model="smol-135m"), None).id
    fields = web_client.get("/jobs/new/fields?kind=figa-pipeline").text
    for name in ("editor_id", "keep_fraction", "min_edit_rate", "max_edit_rate", "version_name", "max_new_tokens"):
        assert f'name="{name}"' in fields
    assert '<option value="figa-pipeline"' in web_client.get("/jobs/new").text

    base = form(researcher, kind="figa-pipeline", dataset_version_id=str(dataset_id))
    empty = web_client.post("/jobs", data=base)
    assert empty.status_code == 422
    assert {"project_id"} <= set(errors_of(empty.text)) and "editor_id" in errors_of(empty.text)
    bad = web_client.post("/jobs", data={**base, "project_id": str(project_id), "score_below": "0",
                                         "keep_fraction": "1.5", "editor_id": "999", "min_edit_rate": "0.5",
                                         "max_edit_rate": "0.2"})
    assert bad.status_code == 422
    assert errors_of(bad.text) == {
        "score_model": "give the reward model that scores the responses",
        "keep_fraction": "keep the responses below a score or the lowest fraction, not both",
        "editor_id": "choose the model editor that revises the poor responses",
        "max_edit_rate": "at least the minimum edit rate",
    }
    good = web_client.post("/jobs", follow_redirects=False, data={
        **base, "project_id": str(project_id), "score_model": "var/rm", "keep_fraction": "0.25",
        "editor_id": str(editor_id), "min_edit_rate": "0.01", "max_edit_rate": "0.5", "max_new_tokens": "16"})
    assert good.status_code == 303, errors_of(good.text)
    with session_scope() as session:
        job = session.scalars(select(Job)).one()
    assert (job.kind, job.config["max_new_tokens"]) == ("figa-pipeline", 16)
    assert jobs.worker_options(job) == {
        "import_into_project": project_id, "score_model": "var/rm", "keep_fraction": 0.25, "editor_id": editor_id,
        "version_name": "", "min_edit_rate": 0.01, "max_edit_rate": 0.5}
    assert [(s["name"], s["status"]) for s in job.stages] == [
        (name, "pending") for name in ("generate", "score", "import", "revise", "version")]
    page = web_client.get(f"/jobs/{job.id}").text
    assert 'id="job-stages"' in page and "the lowest-scoring 25% by <code>var/rm</code>" in page
    assert "Revised by</dt><dd>smol; kept with an edit rate in [0.01, 0.5]" in page
    again = web_client.get(f"/jobs/new?from_job={job.id}").text  # "Run again" keeps every pipeline field
    assert f'<option value="{editor_id}" selected>' in again and 'name="keep_fraction" value="0.25"' in again

    # Resume: only a failed or cancelled chain; its finished stages are kept.
    assert web_client.post(f"/jobs/{job.id}/resume", data={"csrf_token": researcher}).status_code == 409
    with session_scope() as session:
        stored = session.get(Job, job.id)
        stored.status, stored.error = JobStatus.FAILED, "stage revise failed: the endpoint failed"
        stored.stages = [{**s, "status": "done" if s["name"] in ("generate", "score", "import") else
                          "failed" if s["name"] == "revise" else "pending"} for s in stored.stages]
    assert 'id="resume-job"' in web_client.get(f"/jobs/{job.id}").text
    resumed = web_client.post(f"/jobs/{job.id}/resume", data={"csrf_token": researcher}, follow_redirects=False)
    assert resumed.status_code == 303
    with session_scope() as session:
        stored = session.get(Job, job.id)
        assert (stored.status, stored.error) == (JobStatus.QUEUED, "")
        assert [s["status"] for s in stored.stages] == ["done", "done", "done", "pending", "pending"]
        assert "resumed; kept: generate, score, import" in jobs.full_log(session, job.id)
    single = add_job()
    with session_scope() as session:
        session.get(Job, single).status = JobStatus.FAILED
    assert web_client.post(f"/jobs/{single}/resume", data={"csrf_token": researcher}).status_code == 409
