"""The new-job form: reading a submission into a JobSpec, with one error message per bad field.

Besides the kind's hyperparameters (app.services.job_config) a job has a name, a dataset version,
a base model and a process count; a `generate` job may instead read an uploaded prompt file, and may
feed a project with its responses, optionally only those a reward model scores below a threshold.
The FIGA pipeline (app/services/pipeline.py) is a generate job that always feeds a project with the poor
responses (below a threshold, or the lowest fraction), then has a model editor revise them and freezes
the revisions within an edit-rate range into a dataset version.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile

from app.models import Job, ModelEditor, Project
from app.services import job_config, jobs, pipeline
from app.services.cluster import PlacementForm, SlurmRequest
from app.services.datasets import ready_version
from app.services.jobs import JobSpec
from app.settings import get_settings

MAX_PROCESSES = 64
FEEDING_KINDS = (pipeline.GENERATE_KIND, pipeline.KIND)  # kinds that read prompts and may feed a project
PROMPT_SUFFIXES = (".txt", ".jsonl")
READ_BLOCK = 1 << 20


@dataclass
class JobForm:
    """What the form shows: submitted (or default) raw values, and errors by field name."""

    kind: str
    name: str = ""
    dataset_version_id: str = ""
    base_model: str = ""
    num_processes: str = "1"
    project_id: str = ""
    score_model: str = ""
    score_below: str = ""
    keep_fraction: str = ""  # or keep the lowest-scoring fraction
    editor_id: str = ""  # the pipeline's model editor, its edit-rate range and its dataset version's name
    min_edit_rate: str = ""
    max_edit_rate: str = ""
    version_name: str = ""
    values: dict[str, Any] = field(default_factory=dict)  # hyperparameters, raw
    errors: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # hyperparameters, validated
    prompts_path: str = ""
    placement: PlacementForm = field(default_factory=PlacementForm)  # backend, sharding, Slurm request
    slurm_request: SlurmRequest | None = None  # validated

    @classmethod
    def defaults(cls, kind: str, default_model: str, dataset_version_id: int | None = None) -> JobForm:
        values = {spec.name: spec.default for spec in job_config.form_fields(kind)}
        return cls(
            kind=kind,
            base_model=default_model,
            dataset_version_id=str(dataset_version_id or ""),
            values=values,
        )

    @classmethod
    def from_job(cls, job: Job) -> JobForm:
        """The form of an earlier job, to run it again or vary it (an uploaded prompt file is not reused)."""
        config, options = jobs.training_config(job), jobs.worker_options(job)
        return cls(
            kind=job.kind,
            name=f"{job.name} (again)"[:200],
            dataset_version_id=str(job.dataset_version_id or ""),
            base_model=job.base_model,
            num_processes=str(job.num_processes),
            project_id=str(options.get("import_into_project", "")),
            score_model=options.get("score_model", ""),
            score_below=str(options.get("score_below", "")),
            keep_fraction=str(options.get("keep_fraction", "")),
            editor_id=str(options.get("editor_id", "")),
            min_edit_rate=_shown(options.get("min_edit_rate")),
            max_edit_rate=_shown(options.get("max_edit_rate")),
            version_name=options.get("version_name", ""),
            values={spec.name: config.get(spec.name, spec.default) for spec in job_config.form_fields(job.kind)},
            placement=PlacementForm.from_job(job.backend, options.get("sharding", ""), jobs.slurm_request(job)),
        )

    def spec(self) -> JobSpec:
        options: dict[str, Any] = {}
        if self.project_id:
            options["import_into_project"] = int(self.project_id)
            if self.score_model:
                options["score_model"] = self.score_model
                if self.keep_fraction:
                    options["keep_fraction"] = float(self.keep_fraction)
                else:
                    options["score_below"] = float(self.score_below)
        if self.kind == pipeline.KIND:
            options.update(editor_id=int(self.editor_id), version_name=self.version_name,
                           min_edit_rate=float(self.min_edit_rate) if self.min_edit_rate else None,
                           max_edit_rate=float(self.max_edit_rate) if self.max_edit_rate else None)
        if self.placement.sharding:
            options["sharding"] = self.placement.sharding
        config = dict(self.config)
        if self.prompts_path:
            config["data"] = self.prompts_path
        return JobSpec(
            kind=self.kind,
            name=self.name,
            config=config,
            base_model=self.base_model,
            dataset_version_id=int(self.dataset_version_id) if self.dataset_version_id else None,
            project_id=int(self.project_id) if self.project_id else None,
            num_processes=int(self.num_processes),
            worker_options=options or None,
            backend=self.placement.backend,
            slurm=self.slurm_request,
        )


def _text(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    return value.strip() if isinstance(value, str) else ""


def _check_general(session: Session, form: JobForm) -> None:
    if len(form.name) > 200:
        form.errors["name"] = "at most 200 characters"
    if not form.base_model:
        form.errors["base_model"] = "give a model folder or hub id"
    elif len(form.base_model) > 500:
        form.errors["base_model"] = "at most 500 characters"
    if not form.num_processes.isdigit() or not 1 <= int(form.num_processes) <= MAX_PROCESSES:
        form.errors["num_processes"] = f"a whole number from 1 to {MAX_PROCESSES}"
    if form.dataset_version_id and (
        not form.dataset_version_id.isdigit() or ready_version(session, int(form.dataset_version_id)) is None
    ):
        form.errors["dataset_version_id"] = "no such dataset version ready for training"


def _number(form: JobForm, name: str, low: float, high: float | None = None) -> None:
    """A form field that must be a number in [low, high] (or empty)."""
    raw = getattr(form, name)
    if not raw:
        return
    try:
        value = float(raw)
    except ValueError:
        form.errors[name] = f"{raw!r} is not a number"
        return
    if not (low <= value and (high is None or value <= high)):
        form.errors[name] = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"


def _check_feed(session: Session, form: JobForm) -> None:
    """A generate job's project import and its optional reward-model filter (the pipeline's, required)."""
    chain = form.kind == pipeline.KIND
    if not form.project_id:
        if chain:
            form.errors["project_id"] = "choose the project the poor responses are imported into"
        elif form.score_model or form.score_below or form.keep_fraction:
            form.errors["project_id"] = "choose the project that receives the filtered responses"
        return
    if not form.project_id.isdigit() or session.get(Project, int(form.project_id)) is None:
        form.errors["project_id"] = "no such project"
    if chain and not form.score_model:
        form.errors["score_model"] = "give the reward model that scores the responses"
    if form.score_below and form.keep_fraction:
        form.errors["keep_fraction"] = "keep the responses below a score or the lowest fraction, not both"
    elif form.score_model and not (form.score_below or form.keep_fraction):
        form.errors["score_below"] = ("give the score threshold (responses scoring below it are imported), or the "
                                      "fraction of lowest-scoring responses to keep")
    elif (form.score_below or form.keep_fraction) and not form.score_model:
        form.errors["score_model"] = "give the reward model that scores the responses"
    if form.score_below:
        try:
            float(form.score_below)
        except ValueError:
            form.errors["score_below"] = f"{form.score_below!r} is not a number"
    if form.keep_fraction and "keep_fraction" not in form.errors:
        _number(form, "keep_fraction", 0.0, 1.0)
        if "keep_fraction" not in form.errors and float(form.keep_fraction) == 0:
            form.errors["keep_fraction"] = "more than 0 (the share of responses to keep)"


def _check_revision(session: Session, form: JobForm) -> None:
    """The pipeline's model editor, edit-rate range and dataset version name."""
    if not form.editor_id.isdigit() or session.get(ModelEditor, int(form.editor_id)) is None:
        form.errors["editor_id"] = "choose the model editor that revises the poor responses"
    _number(form, "min_edit_rate", 0.0)
    _number(form, "max_edit_rate", 0.0)
    if (form.min_edit_rate and form.max_edit_rate and not {"min_edit_rate", "max_edit_rate"} & set(form.errors)
            and float(form.min_edit_rate) > float(form.max_edit_rate)):
        form.errors["max_edit_rate"] = "at least the minimum edit rate"
    if len(form.version_name) > 200 or not form.version_name.isprintable():
        form.errors["version_name"] = "at most 200 printable characters"


def _shown(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def check_prompt_lines(lines: list[bytes], suffix: str) -> str:
    """The first problem of a prompt file ("line N: ..."), or "" when every line is usable."""
    usable = 0
    for number, raw in enumerate(lines, 1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            return f"line {number}: not UTF-8 text"
        if not line:
            continue
        if suffix == ".jsonl":
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                return f"line {number}: not JSON ({exc.msg})"
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
                return f'line {number}: needs a non-empty string field "prompt"'
        usable += 1
    return "" if usable else "the file has no prompts"


def _read_upload(upload: UploadFile, limit: int) -> bytes | None:
    """The whole upload, or None when it exceeds `limit` bytes."""
    data = bytearray()
    while block := upload.file.read(READ_BLOCK):
        data += block
        if len(data) > limit:
            return None
    return bytes(data)


def _store_prompts(form: JobForm, upload: UploadFile) -> None:
    """Validate an uploaded prompt file and keep it under the data directory (only once all is valid)."""
    suffix = Path(upload.filename or "").suffix.lower()
    if suffix not in PROMPT_SUFFIXES:
        form.errors["prompts_file"] = "upload a .txt (one prompt a line) or .jsonl file (a \"prompt\" field)"
        return
    settings = get_settings()
    data = _read_upload(upload, settings.max_upload_mb * 1024 * 1024)
    if data is None:
        form.errors["prompts_file"] = f"larger than {settings.max_upload_mb} MB"
        return
    problem = check_prompt_lines(data.splitlines(), suffix)
    if problem:
        form.errors["prompts_file"] = f"{upload.filename}: {problem}"
        return
    if form.errors:
        return
    folder = settings.data_dir / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"prompts-{uuid.uuid4().hex}{suffix}"
    tmp = path.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(path)
    form.prompts_path = str(path)


def parse_job_form(session: Session, data: Mapping[str, Any], upload: UploadFile | None) -> JobForm:
    kind = _text(data, "kind")
    if kind not in job_config.kinds():
        form = JobForm.defaults("token-rm", get_settings().default_model)
        form.errors["kind"] = f"unknown kind {kind!r}"
        return form
    feeds, chain = kind in FEEDING_KINDS, kind == pipeline.KIND
    form = JobForm(
        kind=kind,
        name=_text(data, "name"),
        dataset_version_id=_text(data, "dataset_version_id"),
        base_model=_text(data, "base_model"),
        num_processes=_text(data, "num_processes") or "1",
        project_id=_text(data, "project_id") if feeds else "",
        score_model=_text(data, "score_model") if feeds else "",
        score_below=_text(data, "score_below") if feeds else "",
        keep_fraction=_text(data, "keep_fraction") if feeds else "",
        editor_id=_text(data, "editor_id") if chain else "",
        min_edit_rate=_text(data, "min_edit_rate") if chain else "",
        max_edit_rate=_text(data, "max_edit_rate") if chain else "",
        version_name=_text(data, "version_name") if chain else "",
        values={spec.name: data.get(spec.name) for spec in job_config.form_fields(kind)},
        placement=PlacementForm.from_form(data),
    )
    _check_general(session, form)
    if "num_processes" not in form.errors:
        form.slurm_request, placement_errors = form.placement.check(int(form.num_processes))
        form.errors.update(placement_errors)
    form.config, field_errors = job_config.validate_hyperparameters(kind, data)
    form.errors.update(field_errors)
    has_upload = upload is not None and bool(upload.filename)
    if feeds:
        _check_feed(session, form)
    if chain:
        _check_revision(session, form)
    if feeds and has_upload and form.dataset_version_id:
        form.errors["prompts_file"] = "choose either a dataset version or a prompt file, not both"
    elif feeds and has_upload:
        _store_prompts(form, upload)
    elif not form.dataset_version_id and "dataset_version_id" not in form.errors:
        form.errors["dataset_version_id"] = (
            "choose a dataset version or upload a prompt file" if feeds else "choose a dataset version"
        )
    return form
