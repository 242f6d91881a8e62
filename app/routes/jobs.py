"""The research dashboard: start, watch, cancel and compare training jobs (researchers and admins)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.datastructures import FormData, UploadFile

from app.deps import get_db, require_roles
from app.editors import service as editor_service
from app.errors import NotFound
from app.models import DatasetVersion, Job, JobStatus, ModelEditor, Project, Role, User
from app.services import audit, datasets, job_artifacts, job_config, jobs, pipeline
from app.services.job_form import FEEDING_KINDS, JobForm, parse_job_form
from app.settings import get_settings
from app.templating import is_htmx, render

router = APIRouter(prefix="/jobs")
researcher = require_roles(Role.RESEARCHER)
COMPARE_MAX_RUNS = 12


def _job_or_404(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} does not exist")
    return job


def _form_choices(session: Session) -> dict[str, Any]:
    return {
        "kinds": job_config.kinds(),
        "datasets": list(session.scalars(datasets.ready_versions().limit(200))),
        "projects": list(
            session.scalars(select(Project).where(Project.archived.is_(False)).order_by(Project.name))
        ),
        "model_suggestions": jobs.trained_model_folders(session),
        "editors": editor_service.list_editors(session),
        "feeding_kinds": FEEDING_KINDS,
        "pipeline_kind": pipeline.KIND,
    }


def _new_job_page(request: Request, session: Session, form: JobForm, *, status_code: int = 200) -> Response:
    return render(
        request,
        "jobs/new.html",
        status_code=status_code,
        title="New training job",
        form=form,
        fields=job_config.form_fields(form.kind),
        **_form_choices(session),
    )


# --- list and creation ---------------------------------------------------------------------------


@router.get("")
def job_list(request: Request, session: Session = Depends(get_db), user: User = Depends(researcher)) -> Response:
    return render(request, "jobs/list.html", title="Training jobs", jobs=jobs.list_jobs(session))


@router.get("/table")
def job_table(request: Request, session: Session = Depends(get_db), user: User = Depends(researcher)) -> Response:
    return render(request, "jobs/_table.html", jobs=jobs.list_jobs(session))


@router.get("/new")
def new_job(
    request: Request,
    kind: str = "token-rm",
    dataset_version_id: int | None = None,
    from_job: int | None = None,
    session: Session = Depends(get_db),
    user: User = Depends(researcher),
) -> Response:
    """The form with defaults, or (`from_job`) prefilled from an earlier job to run it again."""
    if from_job is not None:
        form = JobForm.from_job(_job_or_404(session, from_job))
    elif kind in job_config.kinds():
        form = JobForm.defaults(kind, get_settings().default_model, dataset_version_id)
    else:
        raise NotFound(f"unknown job kind {kind!r}")
    return _new_job_page(request, session, form)


@router.get("/new/fields")
def new_job_fields(
    request: Request, kind: str, session: Session = Depends(get_db), user: User = Depends(researcher)
) -> Response:
    """The hyperparameter fieldset of `kind`, swapped in by htmx when the kind changes."""
    if kind not in job_config.kinds():
        raise NotFound(f"unknown job kind {kind!r}")
    form = JobForm.defaults(kind, get_settings().default_model)
    return render(
        request, "jobs/_fields.html", form=form, fields=job_config.form_fields(kind), **_form_choices(session)
    )


async def _read_form(request: Request) -> FormData:
    return await request.form(max_files=1, max_fields=500)


@router.post("")
async def create_job(
    request: Request, session: Session = Depends(get_db), user: User = Depends(researcher)
) -> Response:
    data = await _read_form(request)
    upload = data.get("prompts_file")
    form = parse_job_form(session, data, upload if isinstance(upload, UploadFile) else None)
    if form.errors:
        return _new_job_page(request, session, form, status_code=422)
    job = jobs.create_job(session, form.spec(), user)
    audit.record(session, user, "job.create", "job", job.id, after={"kind": job.kind, "config": job.config})
    session.commit()
    return RedirectResponse(f"/jobs/{job.id}", status_code=303)


# --- comparison ----------------------------------------------------------------------------------


@router.get("/compare")
def compare(
    request: Request,
    ids: list[int] = Query(default=[]),
    metric: list[str] = Query(default=[]),
    session: Session = Depends(get_db),
    user: User = Depends(researcher),
) -> Response:
    """Chosen metrics (default: the loss) of several runs on one chart, and their eval.json side by side."""
    runs = [job for job in (session.get(Job, job_id) for job_id in dict.fromkeys(ids)) if job][:COMPARE_MAX_RUNS]
    names = jobs.metric_names(session, [job.id for job in runs])
    chosen = [name for name in dict.fromkeys(metric) if name in names] or [jobs.default_compare_metric(names)]
    chosen = [name for name in chosen if name]
    series = jobs.metric_series(session, [job.id for job in runs], chosen) if chosen else {}
    chart = {
        "metrics": chosen,
        "series": [
            {
                "label": f"#{job.id} {job.name}" + (f" · {name}" if len(chosen) > 1 else ""),
                "points": series.get(job.id, {}).get(name, []),
            }
            for name in chosen
            for job in runs
        ],
    }
    eval_keys = sorted({key for job in runs for key in (job.eval or {})})
    return render(
        request,
        "jobs/compare.html",
        title="Compare runs",
        runs=runs,
        names=names,
        chosen=chosen,
        chart=chart,
        eval_keys=eval_keys,
        all_jobs=jobs.list_jobs(session),
    )


# --- one job -------------------------------------------------------------------------------------


def _live_context(session: Session, job: Job) -> dict[str, Any]:
    return {
        "job": job,
        "resumable": bool(job.stages) and job.status in (JobStatus.FAILED, JobStatus.CANCELLED),
        "latest": jobs.latest_metrics(session, job.id),
        "log": jobs.log_tail(session, job.id),
        "heartbeat_age": jobs.heartbeat_age_s(job),
        "stale_after": get_settings().worker_stale_after_s,
        "finished": job.status in jobs.FINISHED,
    }


@router.get("/{job_id}")
def job_page(
    request: Request, job_id: int, session: Session = Depends(get_db), user: User = Depends(researcher)
) -> Response:
    job = _job_or_404(session, job_id)
    dataset = session.get(DatasetVersion, job.dataset_version_id) if job.dataset_version_id else None
    project = session.get(Project, job.project_id) if job.project_id else None
    options = jobs.worker_options(job)
    return render(
        request,
        "jobs/detail.html",
        title=f"Job #{job.id}",
        dataset=dataset,
        frozen=session.scalars(select(DatasetVersion).where(DatasetVersion.job_id == job.id)).first(),
        project=project,
        training_config=jobs.training_config(job),
        options=options,
        kept_note=pipeline.kept_note(options) if options.get("score_model") else "",
        editor_name=editor.name if (editor := session.get(ModelEditor, options.get("editor_id") or 0)) else "",
        editor_items=editor_service.job_items(session, job)
        if job.kind in (editor_service.JOB_KIND, pipeline.KIND) else None,
        **_live_context(session, job),
    )


@router.get("/{job_id}/live")
def job_live(
    request: Request, job_id: int, session: Session = Depends(get_db), user: User = Depends(researcher)
) -> Response:
    """The parts of the job page that change while it runs; polled by htmx until the job ends."""
    job = _job_or_404(session, job_id)
    return render(request, "jobs/_live.html", **_live_context(session, job))


@router.get("/{job_id}/metrics")
def job_metrics(
    job_id: int, after: int = 0, session: Session = Depends(get_db), user: User = Depends(researcher)
) -> JSONResponse:
    """Metric points stored after cursor `after`, for the live charts: {"points": [[name, step, value]], "cursor"}."""
    job = _job_or_404(session, job_id)
    points, cursor = jobs.metric_points_since(session, job.id, after)
    return JSONResponse({"points": points, "cursor": cursor, "status": job.status})


@router.post("/{job_id}/cancel")
def cancel_job(
    request: Request, job_id: int, session: Session = Depends(get_db), user: User = Depends(researcher)
) -> Response:
    _job_or_404(session, job_id)
    state = jobs.request_cancel(session, job_id)
    audit.record(session, user, "job.cancel", "job", job_id, after={"state": state})
    session.commit()
    if is_htmx(request):
        job = session.get(Job, job_id, populate_existing=True)
        return render(request, "jobs/_live.html", **_live_context(session, job))
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


@router.post("/{job_id}/resume")
def resume_job(
    request: Request, job_id: int, session: Session = Depends(get_db), user: User = Depends(researcher)
) -> Response:
    """Queue a failed or cancelled chain again; the stages it finished are kept."""
    jobs.resume_job(session, _job_or_404(session, job_id), user)
    session.commit()
    if is_htmx(request):
        job = session.get(Job, job_id, populate_existing=True)
        return render(request, "jobs/_live.html", **_live_context(session, job))
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


@router.get("/{job_id}/log")
def job_log(job_id: int, session: Session = Depends(get_db), user: User = Depends(researcher)) -> Response:
    _job_or_404(session, job_id)
    return PlainTextResponse(
        jobs.full_log(session, job_id),
        headers={"Content-Disposition": f'attachment; filename="job-{job_id}.log"'},
    )


@router.get("/{job_id}/artifacts/{name}")
def download_artifact(
    job_id: int, name: str, resume_state: bool = False, session: Session = Depends(get_db),
    user: User = Depends(researcher),
) -> Response:
    """A recorded artifact: a file as is, a folder (a checkpoint) as a streamed zip, without its optimizer
    state unless `resume_state`."""
    job = _job_or_404(session, job_id)
    path = job_artifacts.resolve(job, name)
    if path.is_file():
        return FileResponse(path, filename=f"job-{job.id}-{path.name}")
    return StreamingResponse(
        job_artifacts.zip_stream(path, resume_state),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="job-{job.id}-{Path(name).name}.zip"'},
    )

