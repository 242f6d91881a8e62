"""Jobs that run as a chain of stages, and the FIGA data pipeline (algorithms.md §2, FIGA's "SPA") as one.

A `generate` job that feeds a project runs as `generate → [score] → import`. The job kind `figa-pipeline`
is the whole chain, started from one form: the policy writes its own responses (`generate`), a reward
model scores them and the poor ones are kept (`score`: below a threshold, or the lowest fraction), they
become items of a project (`import`, the importer's own rules), a model editor revises them (`revise`:
the editor job in annotate mode, through the queue's lease and the one submit, on this import's items
only), and the revisions whose edit rate lies in the chosen range are frozen into a dataset version
(`version`, the datasets service).

Each stage's state is kept on the job (`Job.stages`: name, status, a one-line detail, data for later
stages), shown on the job page while it runs. A stage that fails fails the job with its reason. A failed
or cancelled chain can be resumed (`jobs.resume_job`): the job is queued again and its finished stages are kept (the
generated responses and scores stay in the job's folder, the import batch is known, the editor finishes
its leftover leases and never edits an item twice), so it goes on where it stopped.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.models import Job

KIND = "figa-pipeline"
GENERATE_KIND = "generate"  # the training CLI kind of the chain's first stage
GENERATE, SCORE, IMPORT, REVISE, VERSION = "generate", "score", "import", "revise", "version"
PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"


def training_kind(kind: str) -> str:
    """The training CLI kind whose hyperparameters a job kind takes (the pipeline: generate's)."""
    return GENERATE_KIND if kind == KIND else kind


def stage_names(kind: str, options: dict[str, Any]) -> list[str]:
    """The stages of a job, or [] for a job of one step (a training run)."""
    if kind == KIND:
        return [GENERATE, SCORE, IMPORT, REVISE, VERSION]
    if kind == GENERATE_KIND and options.get("import_into_project"):
        return [GENERATE, *([SCORE] if options.get("score_model") else []), IMPORT]
    return []


def initial_stages(kind: str, options: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": name, "status": PENDING, "detail": "", "data": {}} for name in stage_names(kind, options)]


def stage(job: Job, name: str) -> dict[str, Any]:
    return next(entry for entry in job.stages if entry["name"] == name)


def set_stage(session: Session, job_id: int, name: str, status: str, detail: str = "",
              data: dict[str, Any] | None = None) -> None:
    """Record a stage's new status and detail; `data` is merged into what earlier runs recorded."""
    job = session.get(Job, job_id, populate_existing=True, with_for_update=True)
    job.stages = [
        {**entry, "status": status, "detail": detail[:2000], "data": {**entry.get("data", {}), **(data or {})}}
        if entry["name"] == name else entry
        for entry in job.stages
    ]


def kept_note(options: dict[str, Any]) -> str:
    """Which scored responses a job keeps, in words."""
    if options.get("keep_fraction") is not None:
        return f"the lowest-scoring {options['keep_fraction']:.0%}"
    return f"those scored below {options['score_below']:g}"
