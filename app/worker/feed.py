"""How a `generate` job (or the FIGA pipeline) feeds the annotation side (FIGA's first two steps,
algorithms.md §2).

The generated responses (`responses.jsonl`: id, prompt, response, model) become items of the chosen
project through the importer, optionally only the poor ones by a reward model's scores (a second
process, the training `score` kind, writes `scores.jsonl`: id, score, ...): those scoring below a
threshold, or the lowest-scoring fraction.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.models import Job, Project, User
from app.services import jobs, pipeline
from app.services.importer import ImportRejected, ImportResult, import_records

RESPONSES_FILE = "responses.jsonl"
SCORES_FILE = "scores.jsonl"


class FeedError(ValueError):
    """The generated files cannot be imported (missing, unreadable, or rejected by the importer)."""


def score_config(options: dict[str, Any], generate_output: Path) -> dict[str, Any]:
    return {"model": options["score_model"], "data": str(generate_output / RESPONSES_FILE)}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FeedError(f"{path.name} was not written")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise FeedError(f"{path.name} line {number}: {exc.msg}") from exc
    return rows


def read_scores(score_dir: Path) -> dict[str, float]:
    return {str(row["id"]): float(row["score"]) for row in _read_jsonl(score_dir / SCORES_FILE)}


def select_records(
    responses: list[dict[str, Any]], scores: dict[str, float] | None, below: float | None, job_id: int,
    keep_fraction: float | None = None,
) -> list[dict[str, Any]]:
    """Importer records of the responses to annotate: all of them, those scoring below `below`, or the
    lowest-scoring `keep_fraction` of them (rounded up; ties in file order), in file order."""
    records = []
    for row in responses:
        source: dict[str, Any] = {"job_id": job_id, "model": row.get("model", ""), "generation_id": str(row["id"])}
        if scores is not None:
            score = scores.get(str(row["id"]))
            if score is None:
                raise FeedError(f"{SCORES_FILE} has no score for response {row['id']!r}")
            if below is not None and score >= below:
                continue
            source["score"] = score
        records.append({"prompt": row["prompt"], "response": row["response"], "source": source})
    if scores is not None and keep_fraction is not None:
        lowest = sorted(range(len(records)), key=lambda i: records[i]["source"]["score"])
        kept = set(lowest[: math.ceil(keep_fraction * len(records))])
        records = [record for i, record in enumerate(records) if i in kept]
    return records


def import_responses(
    session: Session, job: Job, output: Path, scores: dict[str, float] | None
) -> tuple[ImportResult, str]:
    """Import the job's responses into its project; the import's result and a one-line summary for the log."""
    options = jobs.worker_options(job)
    project = session.get(Project, options["import_into_project"])
    if project is None:
        raise FeedError(f"project {options['import_into_project']} no longer exists")
    responses = _read_jsonl(output / RESPONSES_FILE)
    records = select_records(responses, scores, options.get("score_below"), job.id, options.get("keep_fraction"))
    actor = session.get(User, job.created_by_id) if job.created_by_id else None
    try:
        result = import_records(
            session, project, records, filename=f"job-{job.id}-{RESPONSES_FILE}", fmt="records", actor=actor
        )
    except ImportRejected as exc:
        raise FeedError(f"{exc}: {'; '.join(map(str, exc.errors[:5]))}") from exc
    kept = f"{len(records)} of {len(responses)} responses"
    if scores is not None:
        kept += f" ({pipeline.kept_note(options)})"
    return result, (
        f"{kept} sent to project {project.name!r}: {result.imported} new items, "
        f"{result.duplicates} duplicates skipped (import batch {result.batch_id})"
    )
