"""Response and request bodies of the JSON API (they are its OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.dataclasses import dataclass as pydantic_dataclass

from app.editors.service import EditorSettings
from app.services.datasets import DatasetFilter


class Problem(BaseModel):
    detail: Any = Field(description="What is wrong: a message, or FastAPI's list of field errors.")


class ProjectProgress(BaseModel):
    items_total: int
    items_complete: int
    items_open: int
    annotations_needed: int = Field(description="items × annotations per item")
    annotations_done: int = Field(description="completed annotations (edited, no change, unfixable) that count "
                                  "toward N (model edits only where `model_edits_count`)")
    edits_by_outcome: dict[str, int]
    reviews_pending: int
    progress: float = Field(description="annotations_done / annotations_needed, 0..1")


class ProjectOut(BaseModel):
    id: int
    name: str
    description: str
    tokenizer: str
    annotations_per_item: int
    minimality_budget: float
    model_edits_count: bool = Field(description="Whether a model editor's edits count toward the item's N (true) "
                                    "or come on top of N edits by people and imports (false).")
    archived: bool
    created_at: datetime
    progress: ProjectProgress


class EditOut(BaseModel):
    id: int
    item_id: int
    project_id: int
    annotator_id: str = Field(description="Pseudonymous annotator id (`ann_…`), as in exports.")
    outcome: str
    review_status: str
    prompt: str
    original: str
    edited: str
    edit_rate: float
    not_minimal: bool
    stats: dict[str, Any]
    char_diff: list[Any] | None = None
    token_labels: dict[str, Any] | None = None
    created_at: datetime


class EditPage(BaseModel):
    items: list[EditOut]
    next_after_id: int | None = Field(description="Pass as `after_id` for the next page; null at the end.")


class DatasetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    filter: DatasetFilter = Field(default_factory=DatasetFilter)


class DatasetOut(BaseModel):
    id: int
    name: str
    project_id: int | None
    filter: dict[str, Any]
    state: Literal["freezing", "ready", "failed"] = Field(
        description="Exports and training take ready versions only; a failed one has no rows (see `error`).")
    error: str = Field(description="Why the freeze failed (state failed).")
    progress: float = Field(description="0..1 while freezing (as its job last reported), 1 when ready.")
    job_id: int | None = Field(description="The job that freezes it (its log: /jobs/{job_id}).")
    row_count: int
    content_hash: str = Field(description="SHA-256 over the rows (see hash_format); empty until ready.")
    hash_format: int = Field(description="2: SHA-256 of the rows' SHA-256 digests in order; 1: of the pairs-jsonl "
                                         "file (versions frozen before hash format 2).")
    created_by_id: int | None
    created_at: datetime
    downloads: dict[str, str] = Field(description="Format name → download URL (ready versions).")


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=1000)
    events: list[str] = Field(min_length=1)


class WebhookOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    url: str
    events: list[str]
    active: bool
    created_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(description="HMAC-SHA256 signing secret; shown only in this response.")


class DeliveryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    event: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str
    created_at: datetime


class ItemsImport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    records: list[dict[str, Any]] = Field(
        min_length=1, max_length=10_000,
        description="Objects with `prompt` and `response` (or the columns named in `mapping`); preference "
        "records (`prompt, chosen, rejected`) put `rejected` up for editing. Other keys go to the item's source.",
    )
    mapping: dict[Literal["prompt", "response", "chosen", "edited"], str] | None = Field(
        default=None, description='Which record keys hold the texts, e.g. {"prompt": "question"}.'
    )
    filename: str = Field(default="api", max_length=500, description="Recorded with the import batch.")
    edits_from: str | None = Field(
        default=None, max_length=48,
        description="The records' `edited` texts are edits by this source: import them (else such records are "
        "refused).",
    )
    edits_as: Literal["edits", "suggestions"] = Field(
        default="edits", description="Completed edits by the account `import-SOURCE`, or suggestions."
    )


class ImportOut(BaseModel):
    batch_id: int
    imported: int
    duplicates: int
    rows: int
    edits: int = Field(description="Edits (or suggestions) stored from the records' `edited` texts.")
    edit_duplicates: int = Field(description="Edits this source had given before.")


class RowProblem(BaseModel):
    line: int
    field: str
    message: str


class ImportProblem(BaseModel):
    detail: str
    errors: list[RowProblem] = Field(description="Every bad row (the first 500): nothing was imported.")
    total: int


# The body is the service's own settings (one list of fields and defaults), validated by pydantic; an unknown
# field is a 422. `api_key` is write-only: omit it on a change to keep the stored key.
EditorIn = pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))(EditorSettings)


class EditorOut(BaseModel):
    id: int
    name: str
    base_url: str
    model: str
    api_key_set: bool
    temperature: float
    max_tokens: int
    timeout_s: float
    max_concurrency: int
    requests_per_minute: int
    prompt_kind: str
    prompt_version: str


class EditorJobIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    project_id: int
    mode: str = "annotate"
    limit: int | None = None


class EditorJobOut(BaseModel):
    job_id: int
    status: str
    url: str
