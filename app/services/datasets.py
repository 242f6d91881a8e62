"""Dataset versions: which edits a filter selects, and the export row each one becomes.

`selection` is the one definition of the edits a `DatasetFilter` selects (joined with all a row shows);
`export_row` and `row_text` are the row itself, the edit-pair contract of product.md "Export". Freezing (the rows
copied into a version and hashed, inside Postgres) is app/services/freeze.py.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import Connection, Row, Select, Text, cast, func, select
from sqlalchemy.orm import Session, aliased

from app.errors import DomainError
from app.models import (
    AnnotatorKind,
    DatasetState,
    DatasetVersion,
    Edit,
    Item,
    ModelEditor,
    Outcome,
    Project,
    Review,
    User,
    Verdict,
    as_utc,
)
from app.settings import get_settings

ExportableOutcome = Literal["edited", "no_change_needed", "unfixable"]
ReviewState = Literal["accepted", "pending", "rejected"]
MAX_ID = 2**31 - 1  # users and projects have 32-bit keys; larger ids are refused before any query
RowId = Annotated[int, Field(ge=1, le=MAX_ID)]
T = TypeVar("T")


class DatasetError(DomainError):
    """A filter or request that cannot make a dataset version; the message says what is wrong."""

    status_code = 422


class DatasetFilter(BaseModel):
    """Which edits a version contains. Defaults: edited responses whose review accepted them.

    Unreviewed edits are left out unless `review_statuses` includes "pending" (a project without
    reviewers exports with `["accepted", "pending"]`). Skipped items are never exported.
    """

    model_config = ConfigDict(extra="forbid")

    project_id: RowId | None = Field(default=None, description="Only this project (default: all).")
    outcomes: list[ExportableOutcome] = Field(default=["edited"], min_length=1)
    review_statuses: list[ReviewState] = Field(default=["accepted"], min_length=1)
    verdicts: list[Verdict] | None = Field(
        default=None, description="Only edits whose latest review has one of these verdicts."
    )
    min_edit_rate: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    max_edit_rate: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    exclude_not_minimal: bool = Field(default=False, description="Drop edits above the project budget.")
    annotator_ids: list[RowId] | None = Field(default=None, min_length=1, max_length=1000)
    annotator_kinds: list[AnnotatorKind] | None = Field(
        default=None, min_length=1, description="Only edits by people (human), model editors (model) or imports."
    )
    editor_ids: list[RowId] | None = Field(default=None, min_length=1, max_length=1000,
                                           description="Only edits written by these model editors.")
    suggestion_used: bool | None = Field(default=None, description="Only edits made on top of a suggestion (or not).")
    created_after: datetime | None = Field(default=None, description="Inclusive lower bound.")
    created_before: datetime | None = Field(default=None, description="Exclusive upper bound.")

    @field_validator("outcomes", "review_statuses", "verdicts", "annotator_ids", "annotator_kinds", "editor_ids")
    @classmethod
    def _canonical_list(cls, value: list[Any] | None) -> list[Any] | None:
        # Sorted and deduplicated, so equivalent filters are stored (and compared) identically.
        return None if value is None else sorted(set(value))

    @field_validator("created_after", "created_before")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value

    @model_validator(mode="after")
    def _ranges(self) -> DatasetFilter:
        if None not in (self.min_edit_rate, self.max_edit_rate) and self.min_edit_rate > self.max_edit_rate:
            raise ValueError(f"min_edit_rate {self.min_edit_rate} is above max_edit_rate {self.max_edit_rate}")
        if None not in (self.created_after, self.created_before) and self.created_after >= self.created_before:
            raise ValueError("created_after must be before created_before")
        return self


# --- pseudonyms -----------------------------------------------------------------------------------


def pseudonym_key() -> bytes:
    settings = get_settings()
    return (settings.pseudonym_salt or settings.resolved_secret_key()).encode()


def pseudonym(prefix: str, user_id: int, key: bytes | None = None) -> str:
    """A stable, non-reversible id for a user in exported data (`ann_…`, `rev_…`)."""
    digest = hmac.new(key or pseudonym_key(), f"user:{user_id}".encode(), hashlib.sha256).hexdigest()
    return f"{prefix}_{digest[:12]}"


# --- selecting edits ------------------------------------------------------------------------------

LatestReview = aliased(Review, name="latest_review")


def _json_text(column: Any, label: str) -> Any:
    # JSON columns come back as text and are parsed by orjson: several times faster than the driver's
    # json.loads on rows holding thousands of token ids.
    return cast(column, Text).label(label)


# Only the columns a row needs, as plain tuples: no ORM identity map while millions of rows stream by.
ROW_COLUMNS = (
    Edit.id, Edit.item_id, Edit.annotator_id, Edit.outcome, Edit.edited_text,
    _json_text(Edit.token_labels, "token_labels"), _json_text(Edit.char_diff, "char_diff"),
    _json_text(Edit.stats, "stats"), Edit.created_at, Item.prompt, Item.original, Project.name.label("project"),
    LatestReview.verdict, LatestReview.reviewer_id, LatestReview.fixed_text, LatestReview.comment,
    _json_text(LatestReview.token_labels, "review_token_labels"),
    _json_text(LatestReview.char_diff, "review_char_diff"), _json_text(LatestReview.stats, "review_stats"),
    LatestReview.created_at.label("review_created_at"),
    User.kind.label("annotator_kind"), ModelEditor.name.label("editor"), Edit.editor_model, Edit.prompt_version,
    Edit.suggestion_used, Edit.human_vs_suggestion_rate,
)


def _latest_review_ids(after: int | None, upto: int | None) -> Any:
    query = select(Review.edit_id, func.max(Review.id).label("review_id")).group_by(Review.edit_id)
    if after is not None:
        # Bounded like the edits: otherwise every range of a freeze would group all reviews again.
        query = query.where(Review.edit_id > after, Review.edit_id <= upto)
    return query.subquery()


def selection(flt: DatasetFilter, columns: Sequence[Any] = ROW_COLUMNS, *, after: int | None = None,
              upto: int | None = None) -> Select:
    """`columns` of the edits `flt` selects, in edit-id order; only ids in (after, upto] when bounded."""
    latest = _latest_review_ids(after, upto)
    query = (
        select(*columns)
        .select_from(Edit)
        .join(Item, Item.id == Edit.item_id)
        .join(Project, Project.id == Item.project_id)
        .join(User, User.id == Edit.annotator_id)
        .outerjoin(ModelEditor, ModelEditor.id == Edit.editor_id)
        .outerjoin(latest, latest.c.edit_id == Edit.id)
        .outerjoin(LatestReview, LatestReview.id == latest.c.review_id)
        .where(Edit.outcome.in_(flt.outcomes), Edit.outcome != Outcome.SKIPPED)
        .where(Edit.review_status.in_(flt.review_statuses))
        .order_by(Edit.id)
    )
    conditions = [
        (flt.project_id is not None, lambda: Item.project_id == flt.project_id),
        (flt.verdicts is not None, lambda: LatestReview.verdict.in_(flt.verdicts)),
        (flt.min_edit_rate is not None, lambda: Edit.edit_rate >= flt.min_edit_rate),
        (flt.max_edit_rate is not None, lambda: Edit.edit_rate <= flt.max_edit_rate),
        (flt.exclude_not_minimal, lambda: Edit.not_minimal.is_(False)),
        (flt.annotator_ids is not None, lambda: Edit.annotator_id.in_(flt.annotator_ids)),
        (flt.annotator_kinds is not None, lambda: User.kind.in_(flt.annotator_kinds)),
        (flt.editor_ids is not None, lambda: Edit.editor_id.in_(flt.editor_ids)),
        (flt.suggestion_used is not None, lambda: Edit.suggestion_used.is_(flt.suggestion_used)),
        (flt.created_after is not None, lambda: Edit.created_at >= flt.created_after),
        (flt.created_before is not None, lambda: Edit.created_at < flt.created_before),
        (after is not None, lambda: (Edit.id > after) & (Edit.id <= upto)),
    ]
    for applies, condition in conditions:
        if applies:
            query = query.where(condition())
    return query


# --- the export row -------------------------------------------------------------------------------


def iso(moment: datetime) -> str:
    return as_utc(moment).astimezone(UTC).isoformat()


class Pseudonyms(dict[tuple[str, int], str]):
    """Memoised pseudonyms: a version has millions of rows but few annotators."""

    def __init__(self, key: bytes) -> None:
        super().__init__()
        self.key = key

    def __missing__(self, wanted: tuple[str, int]) -> str:
        self[wanted] = value = pseudonym(*wanted, self.key)
        return value


def _review_record(row: Row, fixed: bool, names: Pseudonyms) -> dict[str, Any] | None:
    if row.verdict is None:
        return None
    return {
        "verdict": row.verdict,
        "reviewer_id": names["rev", row.reviewer_id],
        "comment": row.comment,
        "annotator_edited": row.edited_text if fixed else None,
        "created_at": iso(row.review_created_at),
    }


def _layer(text: str | None) -> orjson.Fragment:
    return orjson.Fragment(text if text is not None else "null")


def export_row(row: Row, names: Pseudonyms) -> dict[str, Any]:
    """The edit-pair row of product.md "Export" from a row of ROW_COLUMNS. A reviewer's fix replaces the edited
    text and the layers (labels, diff, stats), which are the stored JSON text, included as they are."""
    fixed = row.verdict == Verdict.FIX_AND_ACCEPT and row.fixed_text is not None
    return {
        "id": f"edit-{row.id}",
        "item_id": row.item_id,
        "project": row.project,
        "prompt": row.prompt,
        "original": row.original,
        "edited": row.fixed_text if fixed else row.edited_text,
        "outcome": row.outcome,
        "token_labels": _layer(row.review_token_labels if fixed else row.token_labels),
        "char_diff": _layer(row.review_char_diff if fixed else row.char_diff),
        "stats": _layer(row.review_stats if fixed else row.stats),
        "annotator_id": names["ann", row.annotator_id],
        "review": _review_record(row, fixed, names),
        "created_at": iso(row.created_at),
        # Provenance: who wrote it (a person, a model editor, an import), and from which suggestion.
        "annotator_kind": row.annotator_kind,
        "editor": row.editor,
        "editor_model": row.editor_model or None,
        "prompt_version": row.prompt_version or None,
        "suggestion_used": row.suggestion_used,
        "human_vs_suggestion_rate": orjson.Fragment(float_text(row.human_vs_suggestion_rate)),
    }


def float_text(value: float | None) -> str:
    """A float as Postgres writes a float8 (shortest round trip, no ".0", an exponent from 1e15 up), so the rows
    SQLite's freeze builds here read exactly like those Postgres builds in SQL."""
    if value is None:
        return "null"
    text = repr(value)
    if "e" in text or abs(value) < 1e15:  # Python writes exponents (1e-05, 1e+16) as Postgres does
        return text.removesuffix(".0")
    whole = text.removesuffix(".0").lstrip("-")  # 15 or 16 digits before any point
    digits = whole.replace(".", "").rstrip("0")
    point = "." + digits[1:] if len(digits) > 1 else ""
    return f"{'-' if value < 0 else ''}{digits[0]}{point}e+{len(whole.split('.')[0]) - 1}"


def row_text(row: dict[str, Any]) -> bytes:
    """The row as frozen and exported (a pairs-jsonl line): compact JSON, keys sorted, the layers as stored."""
    return orjson.dumps(row, option=orjson.OPT_SORT_KEYS)


def iter_rows(db: Session | Connection, query: Select) -> Iterator[tuple[int, bytes]]:
    """(edit id, row text) of each row a `selection` of ROW_COLUMNS yields, in its order."""
    names = Pseudonyms(pseudonym_key())
    for row in db.execute(query.execution_options(yield_per=1000)):
        yield row.id, row_text(export_row(row, names))


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of `size` consecutive items (the last may be shorter); itertools.batched is Python 3.12+."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# --- versions -------------------------------------------------------------------------------------


def check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 200 or not name.isprintable():
        raise DatasetError("name: give a dataset name of 1 to 200 printable characters")
    return name


def validate_filter_targets(session: Session, flt: DatasetFilter) -> None:
    if flt.project_id is not None and session.get(Project, flt.project_id) is None:
        raise DatasetError(f"filter.project_id: project {flt.project_id} does not exist")
    if flt.annotator_ids:
        known = set(session.scalars(select(User.id).where(User.id.in_(flt.annotator_ids))))
        missing = sorted(set(flt.annotator_ids) - known)
        if missing:
            raise DatasetError(f"filter.annotator_ids: no user with id {missing}")


def ready_versions() -> Select:
    """Versions that can be exported and trained on, newest first."""
    return select(DatasetVersion).where(DatasetVersion.state == DatasetState.READY).order_by(DatasetVersion.id.desc())


def ready_version(session: Session, version_id: int) -> DatasetVersion | None:
    version = session.get(DatasetVersion, version_id)
    return version if version is not None and version.state == DatasetState.READY else None


def version_summary(version: DatasetVersion) -> dict[str, Any]:
    return {
        "id": version.id,
        "name": version.name,
        "project_id": version.project_id,
        "filter": version.filter,
        "state": version.state,
        "error": version.error,
        "job_id": version.job_id,
        "row_count": version.row_count,
        "content_hash": version.content_hash,
        "hash_format": version.hash_format,
        "created_by_id": version.created_by_id,
        "created_at": iso(version.created_at),
    }


def matching_count(session: Session, flt: DatasetFilter) -> int:
    """How many edits the filter selects right now (the preview before freezing)."""
    return session.scalar(select(func.count()).select_from(selection(flt).order_by(None).subquery())) or 0
