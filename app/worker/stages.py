"""Running a job that is a chain of stages (app/services/pipeline.py), one stage after the other.

The runner gives a `Chain` its way to run one process of the job (`run_step`: started through the job's
backend, watched, tailed, cancelable) and the chain does the rest: it skips the stages a previous run
finished, records each stage's status and detail on the job, spreads the job's progress bar over the
stages, checks for a cancel between them, and stops at the first stage that fails, with its reason.

- generate: the training CLI's `generate` (the job's own first step);
- score: the training CLI's `score` on the responses (with the reward model of the options);
- import: the kept responses become items of the project (app/worker/feed.py, the importer);
- revise: the model editor's job process (app/editors/bulk.py, annotate mode) on this import's items;
- version: the editor's revisions whose edit rate lies in the range, frozen (app/services/datasets.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import func, select

from app.editors import service as editor_service
from app.errors import DomainError
from app.models import EditorJobItem, Job, User, utcnow
from app.services import jobs, pipeline
from app.services.datasets import DatasetFilter
from app.services.freeze import create_version
from app.worker import feed
from app.worker.backends import Launch
from app.worker.command import CommandBuilder

# (launch, output folder, progress span (start, width)) -> how the process ended
StepRunner = Callable[[Launch, Path, tuple[float, float]], "StepOutcome"]


@dataclass(frozen=True)
class StepOutcome:
    """How a stage ended: `error` says why it failed ("" when it did not), `stop_reason` why we stopped it."""

    error: str = ""
    stop_reason: str = ""
    detail: str = ""
    data: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.error and not self.stop_reason


@dataclass
class Chain:
    """The stages of one job, run by one worker."""

    job: Job
    launch: Launch  # the first stage's process (the job's own)
    root: Path  # the job's folder
    output: Path  # the first stage's output folder
    session_factory: Callable
    command_for: CommandBuilder
    run_step: StepRunner
    log: Callable[[str], None]
    stop_reason: Callable[[float], str]  # heartbeat at this progress; why to stop now ("" to go on)

    @property
    def options(self) -> dict[str, Any]:
        return jobs.worker_options(self.job)

    def run(self) -> StepOutcome:
        names = [entry["name"] for entry in self.job.stages]
        for index, name in enumerate(names):
            entry = pipeline.stage(self.job, name)
            if entry["status"] == pipeline.DONE:
                continue
            span = (index / len(names), 1 / len(names))
            if index and (reason := self.stop_reason(span[0])):
                return StepOutcome(stop_reason=reason)
            self._record(name, pipeline.RUNNING, "")
            self.log(f"[redline] stage {index + 1}/{len(names)}: {name}\n")
            outcome = getattr(self, f"_{name}")(span, entry.get("data", {}))
            if not outcome.ok:
                reason = outcome.stop_reason or outcome.error
                self._record(name, pipeline.FAILED, reason)
                return replace(outcome, error=f"stage {name} failed: {outcome.error}") if outcome.error else outcome
            self._record(name, pipeline.DONE, outcome.detail, outcome.data)
            self.log(f"[redline] {name}: {outcome.detail}\n")
            with self.session_factory() as session:  # the stages' data, for the next ones
                self.job = session.get(Job, self.job.id, populate_existing=True)
        return StepOutcome()

    def _record(self, name: str, status: str, detail: str, data: dict[str, Any] | None = None) -> None:
        with self.session_factory() as session:
            pipeline.set_stage(session, self.job.id, name, status, detail, data)

    def _step(self, kind: str, config: dict[str, Any], folder: Path, span: tuple[float, float]) -> StepOutcome:
        """One more process of the job: `kind` (the training CLI's, or the editor job's) on `config`."""
        folder.mkdir(parents=True, exist_ok=True)
        config_path = self.root / f"{folder.name}.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=True))
        launch = replace(self.launch, program=self.command_for(kind, config_path, folder), processes=1, sharding="",
                         step_name=folder.name)
        return self.run_step(launch, folder, span)

    # --- the stages (each returns how it ended, with a detail for the job page) ----------------------

    def _generate(self, span: tuple[float, float], _data: dict[str, Any]) -> StepOutcome:
        outcome = self.run_step(self.launch, self.output, span)
        if not outcome.ok:
            return outcome
        lines = (self.output / feed.RESPONSES_FILE).read_text(encoding="utf-8").splitlines()
        return replace(outcome, detail=f"{sum(bool(line.strip()) for line in lines)} responses")

    def _score(self, span: tuple[float, float], _data: dict[str, Any]) -> StepOutcome:
        outcome = self._step("score", feed.score_config(self.options, self.output), self.root / "score", span)
        if not outcome.ok:
            return outcome
        scores = feed.read_scores(self.root / "score")
        mean = sum(scores.values()) / len(scores) if scores else float("nan")
        return replace(outcome, detail=f"{len(scores)} responses scored by {self.options['score_model']} "
                                       f"(mean {mean:.3f})")

    def _import(self, _span: tuple[float, float], _data: dict[str, Any]) -> StepOutcome:
        scores = feed.read_scores(self.root / "score") if self.options.get("score_model") else None
        try:
            with self.session_factory() as session:
                result, summary = feed.import_responses(session, self.job, self.output, scores)
        except feed.FeedError as exc:
            return StepOutcome(error=f"could not import the responses: {exc}")
        if self.job.kind == pipeline.KIND and not result.imported:
            return StepOutcome(error=f"nothing new to revise: {summary}")
        return StepOutcome(detail=summary, data={"batch_id": result.batch_id, "imported": result.imported})

    def _revise(self, span: tuple[float, float], data: dict[str, Any]) -> StepOutcome:
        options, job_id = self.options, self.job.id
        batch_id = pipeline.stage(self.job, pipeline.IMPORT)["data"]["batch_id"]
        started = data.get("started_at") or utcnow().isoformat()  # a resumed stage keeps its first start
        self._record(pipeline.REVISE, pipeline.RUNNING, "", {"started_at": started})
        try:
            with self.session_factory() as session:
                editor = editor_service.get_editor(session, options["editor_id"])
                editor_service.join_project(session, editor, options["import_into_project"])
        except DomainError as exc:
            return StepOutcome(error=str(exc))
        config = {"job_id": job_id, "editor_id": options["editor_id"], "project_id": options["import_into_project"],
                  "mode": "annotate", "batch_id": batch_id}
        outcome = self._step(editor_service.JOB_KIND, config, self.root / "revise", span)
        with self.session_factory() as session:
            counts = dict(session.execute(
                select(EditorJobItem.status, func.count()).where(EditorJobItem.job_id == job_id)
                .group_by(EditorJobItem.status)).tuples().all())
        detail = f"{counts.get('done', 0)} items revised by {editor.name}, {counts.get('failed', 0)} failed"
        return replace(outcome, detail=detail)

    def _version(self, _span: tuple[float, float], _data: dict[str, Any]) -> StepOutcome:
        options = self.options
        started = datetime.fromisoformat(pipeline.stage(self.job, pipeline.REVISE)["data"]["started_at"])
        flt = DatasetFilter(
            # The editor's own revisions: a person's edit from its suggestion carries its editor too.
            project_id=options["import_into_project"], editor_ids=[options["editor_id"]], annotator_kinds=["model"],
            outcomes=["edited"],
            review_statuses=["accepted", "pending"], min_edit_rate=options.get("min_edit_rate"),
            max_edit_rate=options.get("max_edit_rate"), created_after=started,
        )
        name = options.get("version_name") or f"{self.job.name} (job {self.job.id})"
        try:
            with self.session_factory() as session:
                actor = session.get(User, self.job.created_by_id) if self.job.created_by_id else None
                version = create_version(session, flt, name[:200], actor)
                detail = (f"dataset version #{version.id} {version.name!r}: {version.row_count} pairs with an edit "
                          f"rate in {_range(options)}")
                version_id = version.id
        except DomainError as exc:
            return StepOutcome(error=f"no dataset version: {exc} (revisions with an edit rate in {_range(options)})")
        return StepOutcome(detail=detail, data={"dataset_version_id": version_id})


def _range(options: dict[str, Any]) -> str:
    low, high = options.get("min_edit_rate"), options.get("max_edit_rate")
    return f"[{0 if low is None else low:g}, {'∞' if high is None else f'{high:g}'}]"

