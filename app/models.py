"""The data model (product.md "Data model"). The schema changes only through Alembic migrations."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    true,
)
from sqlalchemy import text as sql_text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from app.services.cluster import BACKENDS, LOCAL
from app.settings import get_settings
from labels import DEFAULT_MINIMALITY_BUDGET

# Postgres gets JSONB (indexable, compact); SQLite its JSON text.
Json = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments INTEGER PRIMARY KEY; Postgres gets 64-bit keys for the big tables.
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands timestamps back without a zone; every stored time is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: Json, list[Any]: Json, datetime: DateTime(timezone=True)}


def _values(enum_cls: type[enum.Enum]) -> str:
    return ", ".join(f"'{member.value}'" for member in enum_cls)


class Role(enum.StrEnum):
    ADMIN = "admin"
    REVIEWER = "reviewer"
    ANNOTATOR = "annotator"
    RESEARCHER = "researcher"


class ItemStatus(enum.StrEnum):
    OPEN = "open"  # still needs annotations
    COMPLETE = "complete"  # has its N completed annotations
    ARCHIVED = "archived"


class LeaseState(enum.StrEnum):
    ACTIVE = "active"
    SUBMITTED = "submitted"
    SKIPPED = "skipped"
    EXPIRED = "expired"


class Outcome(enum.StrEnum):
    EDITED = "edited"
    NO_CHANGE_NEEDED = "no_change_needed"
    UNFIXABLE = "unfixable"
    SKIPPED = "skipped"


COMPLETED_OUTCOMES = (Outcome.EDITED, Outcome.NO_CHANGE_NEEDED, Outcome.UNFIXABLE)


class ReviewStatus(enum.StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    RETURNED = "returned"  # rejected, and back with its annotator for a revision (Project.return_rejected)


class Verdict(enum.StrEnum):
    ACCEPT = "accept"
    FIX_AND_ACCEPT = "fix_and_accept"
    REJECT = "reject"


class AnnotatorKind(enum.StrEnum):
    """Who wrote an edit: a person, a model editor working the queue, or an imported file."""

    HUMAN = "human"
    MODEL = "model"
    IMPORT = "import"


def counted_kinds(model_edits_count: bool) -> tuple[AnnotatorKind, ...]:
    """THE rule of whose completed edits count toward a project's N (`Project.model_edits_count`): people's
    and imported ones always; a model editor's only where the project says so, else they come on top."""
    everyone = tuple(AnnotatorKind)
    return everyone if model_edits_count else tuple(kind for kind in everyone if kind != AnnotatorKind.MODEL)


class PromptKind(enum.StrEnum):
    ONE_STAGE = "one_stage"
    TWO_STAGE = "two_stage"
    CUSTOM = "custom"


class DatasetState(enum.StrEnum):
    """A dataset version is usable (exported, trained on) only when ready; its freeze job fills it."""

    FREEZING = "freezing"
    READY = "ready"
    FAILED = "failed"  # its rows were removed; `error` says why


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


# --- accounts -----------------------------------------------------------------------------------


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(f"role IN ({_values(Role)})", name="role"),
        CheckConstraint(f"kind IN ({_values(AnnotatorKind)})", name="kind"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(128), default="")
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Model editors and import sources are annotator accounts too (kind model | import), so their edits
    # go through the same queue, lease and submit code; they have no usable password.
    kind: Mapped[str] = mapped_column(String(16), default=AnnotatorKind.HUMAN, server_default=AnnotatorKind.HUMAN)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[datetime | None]


class WebSession(Base):
    """Server-side login session; the cookie carries only a random id, stored here hashed."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    user_agent: Mapped[str] = mapped_column(String(255), default="")


class LoginAttempt(Base):
    """Failed logins, kept in the database so throttling holds across web processes."""

    __tablename__ = "login_attempts"
    __table_args__ = (Index("ix_login_attempts_username_at", "username", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    username: Mapped[str] = mapped_column(String(64))
    ip: Mapped[str] = mapped_column(String(64), default="")
    at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # shown in lists so a token can be recognised
    scopes: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    user: Mapped[User] = relationship()


# --- projects and items ---------------------------------------------------------------------------


class Project(Base):
    __tablename__ = "projects"
    __table_args__ = (
        CheckConstraint("annotations_per_item >= 1", name="annotations_per_item"),
        CheckConstraint("minimality_budget > 0", name="minimality_budget"),
        CheckConstraint("lease_seconds >= 30", name="lease_seconds"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    guidelines_md: Mapped[str] = mapped_column(Text, default="")
    tokenizer: Mapped[str] = mapped_column(String(500))
    annotations_per_item: Mapped[int] = mapped_column(Integer, default=1)
    minimality_budget: Mapped[float] = mapped_column(Float, default=DEFAULT_MINIMALITY_BUDGET)
    # Each project keeps its own; a new one gets the deployment's REDLINE_LEASE_SECONDS_DEFAULT.
    lease_seconds: Mapped[int] = mapped_column(Integer, default=lambda: get_settings().lease_seconds_default)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    archived: Mapped[bool] = mapped_column(Boolean, default=False)
    # A rejected edit goes back to its annotator to revise (or give back), instead of the item to the queue.
    return_rejected: Mapped[bool] = mapped_column(Boolean, default=False)
    # Whether a model editor's edits count toward N (`counted_kinds`), or come on top of N people's edits.
    model_edits_count: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())


class ProjectMember(Base):
    __tablename__ = "project_members"

    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    added_at: Mapped[datetime] = mapped_column(default=utcnow)


class ImportBatch(Base):
    __tablename__ = "import_batches"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(500))
    format: Mapped[str] = mapped_column(String(16))
    mapping: Mapped[dict[str, Any]] = mapped_column(default=dict)
    rows_imported: Mapped[int] = mapped_column(Integer, default=0)
    rows_duplicate: Mapped[int] = mapped_column(Integer, default=0)
    file_sha256: Mapped[str] = mapped_column(String(64))
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (
        UniqueConstraint("project_id", "content_hash", name="uq_items_project_content"),
        CheckConstraint(f"status IN ({_values(ItemStatus)})", name="status"),
        CheckConstraint("completed_count >= 0", name="completed_count"),
        # The queue scans open items of a project in id order.
        Index("ix_items_queue", "project_id", "status", "id"),
        # The dashboard's progress per project, from the index alone (migration 0010).
        Index("ix_items_progress", "project_id", "status", "completed_count"),
        # ix_items_search, the item browser's full-text index, exists on Postgres only (migration 0008):
        # an expression index that autogenerate cannot compare, so it is not declared here.
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    import_batch_id: Mapped[int | None] = mapped_column(
        ForeignKey("import_batches.id", ondelete="SET NULL"), index=True
    )
    prompt: Mapped[str] = mapped_column(Text)
    original: Mapped[str] = mapped_column(Text)
    source: Mapped[dict[str, Any]] = mapped_column(default=dict)  # chosen response, model, ids, ...
    content_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=ItemStatus.OPEN)
    completed_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Lease(Base):
    """One annotator's claim on one item; at most one per (item, annotator), ever."""

    __tablename__ = "leases"
    __table_args__ = (
        UniqueConstraint("item_id", "annotator_id", name="uq_leases_item_annotator"),
        CheckConstraint(f"state IN ({_values(LeaseState)})", name="state"),
        Index("ix_leases_item_state", "item_id", "state"),
        Index("ix_leases_annotator_state", "annotator_id", "state"),
        Index("ix_leases_annotator_item", "annotator_id", "item_id"),  # "held before?" reads only one history
        Index("ix_leases_state_expires", "state", "expires_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    annotator_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(16), default=LeaseState.ACTIVE)
    leased_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]


class Edit(Base):
    __tablename__ = "edits"
    __table_args__ = (
        CheckConstraint(f"outcome IN ({_values(Outcome)})", name="outcome"),
        CheckConstraint(f"review_status IN ({_values(ReviewStatus)})", name="review_status"),
        Index("ix_edits_item", "item_id"),
        Index("ix_edits_annotator_created", "annotator_id", "created_at"),
        Index("ix_edits_review_queue", "review_status", "outcome", "id"),
        # The dashboard's outcome counts and edit-rate histogram, from the index alone (migration 0010).
        Index("ix_edits_outcome_rate", "outcome", "edit_rate"),
        # The item browser's filters by annotator (and outcome, edit rate), from the index alone (migration 0019).
        Index("ix_edits_annotator_outcome_rate", "annotator_id", "outcome", "edit_rate", "item_id"),
        # The dashboard's per-editor suggestion figures, from the edits that started from one (migration 0013;
        # SQLite's predicate is written as SQLAlchemy writes the test, so its planner matches it).
        Index("ix_edits_suggestion_used", "id", "editor_id", "human_vs_suggestion_rate", "item_id",
              postgresql_where=sql_text("suggestion_used"), sqlite_where=sql_text("suggestion_used = 1")),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    annotator_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    # One edit per lease: a double submit hits this constraint instead of creating a second edit.
    lease_id: Mapped[int | None] = mapped_column(ForeignKey("leases.id", ondelete="SET NULL"), unique=True)
    outcome: Mapped[str] = mapped_column(String(24))
    edited_text: Mapped[str] = mapped_column(Text)
    skip_reason: Mapped[str] = mapped_column(Text, default="")
    # Layers (diff, labels, statistics) are plain `json` on Postgres: written once, read whole (migration 0006).
    char_diff: Mapped[list[Any]] = mapped_column(JSON, default=list)
    token_labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    tokenizer_hash: Mapped[str] = mapped_column(String(64), default="")
    algorithm: Mapped[str] = mapped_column(String(64), default="")
    stats: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    edit_rate: Mapped[float] = mapped_column(Float, default=0.0)
    not_minimal: Mapped[bool] = mapped_column(Boolean, default=False)
    time_to_first_key_ms: Mapped[int | None] = mapped_column(Integer)
    active_ms: Mapped[int | None] = mapped_column(Integer)
    keystrokes: Mapped[int] = mapped_column(Integer, default=0)
    pastes: Mapped[int] = mapped_column(Integer, default=0)
    review_status: Mapped[str] = mapped_column(String(16), default=ReviewStatus.PENDING)
    # Provenance: which model editor (and model, prompt version) wrote it, or which suggestion a person
    # started from and how far (edit rate) they moved from it.
    editor_id: Mapped[int | None] = mapped_column(ForeignKey("model_editors.id", ondelete="SET NULL"))
    editor_model: Mapped[str] = mapped_column(String(200), default="", server_default="")
    prompt_version: Mapped[str] = mapped_column(String(16), default="", server_default="")
    suggestion_used: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    human_vs_suggestion_rate: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": version}


class Review(Base):
    """A reviewer's verdict; a fix is a new layer, the annotator's edit is never overwritten."""

    __tablename__ = "reviews"
    __table_args__ = (CheckConstraint(f"verdict IN ({_values(Verdict)})", name="verdict"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    edit_id: Mapped[int] = mapped_column(ForeignKey("edits.id", ondelete="CASCADE"), index=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    verdict: Mapped[str] = mapped_column(String(16))
    fixed_text: Mapped[str | None] = mapped_column(Text)
    char_diff: Mapped[list[Any] | None] = mapped_column(JSON)  # plain json, as the edit's layer
    token_labels: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Comment(Base):
    __tablename__ = "comments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    edit_id: Mapped[int] = mapped_column(ForeignKey("edits.id", ondelete="CASCADE"), index=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Tally(Base):
    """A ledger of counts over items and edits, so the dashboard reads a few rows instead of counting a million.

    Database triggers (migration 0018) append each change's deltas per project: `items`, `complete`, `open`,
    `annotations` (sum of completed_count), `outcome:<outcome>` and `rate:<bin>` (edited edits by
    app.services.dashboard.RATE_BINS). Appending never waits on another writer; app.services.tallies folds the
    rows into one per count from time to time.
    """

    __tablename__ = "tallies"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    project_id: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(40))
    n: Mapped[int] = mapped_column(BigInteger)


# --- model editors -------------------------------------------------------------------------------


class ModelEditor(Base):
    """A named connection to an OpenAI-compatible chat endpoint, with its prompt and its limits."""

    __tablename__ = "model_editors"
    __table_args__ = (
        CheckConstraint(f"prompt_kind IN ({_values(PromptKind)})", name="prompt_kind"),
        CheckConstraint("max_tokens >= 1", name="max_tokens"),
        CheckConstraint("max_concurrency >= 1", name="max_concurrency"),
        CheckConstraint("timeout_s > 0", name="timeout_s"),
        CheckConstraint("requests_per_minute >= 0", name="requests_per_minute"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    base_url: Mapped[str] = mapped_column(String(1000))
    model: Mapped[str] = mapped_column(String(200))
    # Fernet-encrypted with a key derived from the app's secret; never shown, logged or exported.
    api_key_encrypted: Mapped[str] = mapped_column(Text, default="")
    temperature: Mapped[float] = mapped_column(Float, default=0.0)
    max_tokens: Mapped[int] = mapped_column(Integer, default=512)
    timeout_s: Mapped[float] = mapped_column(Float, default=60.0)
    max_concurrency: Mapped[int] = mapped_column(Integer, default=4)
    requests_per_minute: Mapped[int] = mapped_column(Integer, default=0)  # 0: no limit
    prompt_kind: Mapped[str] = mapped_column(String(16), default=PromptKind.ONE_STAGE)
    custom_template: Mapped[str] = mapped_column(Text, default="")
    # The annotator account (kind model) its edits are written by.
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), unique=True)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EditorJobItem(Base):
    """One item's fate in an editor job: done (with its edit) or failed (with the reason), and tries."""

    __tablename__ = "editor_job_items"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))  # done | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    edit_id: Mapped[int | None] = mapped_column(ForeignKey("edits.id", ondelete="SET NULL"))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Suggestion(Base):
    """An editor's precomputed edit of an item, offered to the people who annotate it."""

    __tablename__ = "suggestions"
    __table_args__ = (
        UniqueConstraint("item_id", "editor_id", name="uq_suggestions_item_editor"),
        # An imported source (no editor) suggests once per item too (app.services.edit_import).
        Index("uq_suggestions_item_source", "item_id", "source", unique=True,
              postgresql_where=sql_text("editor_id IS NULL"), sqlite_where=sql_text("editor_id IS NULL")),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    editor_id: Mapped[int | None] = mapped_column(ForeignKey("model_editors.id", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(200), default="")  # an import's named source, if imported
    text: Mapped[str] = mapped_column(Text)
    editor_model: Mapped[str] = mapped_column(String(200), default="")
    prompt_version: Mapped[str] = mapped_column(String(16), default="")
    edit_rate: Mapped[float] = mapped_column(Float, default=0.0)
    not_minimal: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- datasets ------------------------------------------------------------------------------------


class DatasetVersion(Base):
    """An immutable snapshot: the filter, and the frozen rows it selected (DatasetRow), filled by a freeze job."""

    __tablename__ = "dataset_versions"
    __table_args__ = (CheckConstraint(f"state IN ({_values(DatasetState)})", name="state"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id", ondelete="SET NULL"), index=True)
    filter: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[str] = mapped_column(String(16), default=DatasetState.FREEZING)
    error: Mapped[str] = mapped_column(Text, default="")
    # The job that freezes it (jobs also point at the version they train on: the constraint is added last).
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL", use_alter=True))
    row_count: Mapped[int] = mapped_column(Integer, default=0)
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    # How content_hash is computed (app.services.freeze.content_hash): 1, over the pairs-jsonl file (versions
    # frozen before freezing moved into the database); 2, over the SHA-256 of each row.
    hash_format: Mapped[int] = mapped_column(SmallInteger, default=2)
    # {"outcomes": {outcome: rows}, "reviewed": rows}, counted while freezing (the dataset card); None until ready.
    summary: Mapped[dict[str, Any] | None] = mapped_column(Json)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DatasetRow(Base):
    """One frozen export row of a version, so later edits and reviews never change a snapshot."""

    __tablename__ = "dataset_rows"

    # No foreign keys (migration 0017): rows are written only by the freeze, in bulk, for a version it made and
    # deletes them with (app/services/freeze.py). Keys cost a trigger per row, the version's locked its row once
    # per row from every writing connection, and edit_id's made deleting an edit scan all frozen rows.
    dataset_version_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    edit_id: Mapped[int | None] = mapped_column(BigId)  # the edit it was frozen from (it may be gone since)
    # The row's JSON text exactly as exported (one pairs-jsonl line), as `text`: it is built by Postgres
    # itself when freezing (app/services/freeze.py), so `json`'s parse on the way in would only re-check it.
    # On Postgres the column is lz4-compressed and kept in the table's own pages (STORAGE MAIN, migration 0017).
    data: Mapped[str] = mapped_column(Text)


# --- jobs ----------------------------------------------------------------------------------------


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"status IN ({_values(JobStatus)})", name="status"),
        CheckConstraint(f"backend IN ({', '.join(map(repr, BACKENDS))})", name="backend"),
        Index("ix_jobs_status_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(200), default="")
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    dataset_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("dataset_versions.id", ondelete="SET NULL"), index=True
    )
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id", ondelete="SET NULL"))
    base_model: Mapped[str] = mapped_column(String(500), default="")
    num_processes: Mapped[int] = mapped_column(Integer, default=1)
    # Where it runs (app/services/cluster.py BACKENDS); a worker claims only jobs of its backends.
    backend: Mapped[str] = mapped_column(String(16), default=LOCAL, server_default=LOCAL)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    worker_id: Mapped[str | None] = mapped_column(String(128))
    pid: Mapped[int | None] = mapped_column(Integer)
    external_id: Mapped[str | None] = mapped_column(String(64))  # the Slurm job id of a Slurm job
    heartbeat_at: Mapped[datetime | None]
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    output_dir: Mapped[str] = mapped_column(String(1000), default="")
    log_path: Mapped[str] = mapped_column(String(1000), default="")
    # Bytes of the log file stored so far: where a worker that adopts the job goes on reading.
    log_offset: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    artifacts: Mapped[list[Any]] = mapped_column(default=list)
    eval: Mapped[dict[str, Any] | None] = mapped_column(Json)
    error: Mapped[str] = mapped_column(Text, default="")
    # A job that runs as a chain (app/services/pipeline.py): each stage's name, status, detail and data.
    stages: Mapped[list[Any]] = mapped_column(default=list, server_default="[]")


class JobMetric(Base):
    __tablename__ = "job_metrics"
    __table_args__ = (
        UniqueConstraint("job_id", "name", "step", name="uq_job_metrics_job_name_step"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(128))
    value: Mapped[float] = mapped_column(Float)


class JobLogChunk(Base):
    """The job's log as it grows, in order, so the dashboard can tail it without the worker's disk."""

    __tablename__ = "job_log_chunks"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    text: Mapped[str] = mapped_column(Text)


# --- integrations and audit ----------------------------------------------------------------------


class Webhook(Base):
    __tablename__ = "webhooks"

    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(String(1000))
    secret: Mapped[str] = mapped_column(String(128))
    events: Mapped[list[Any]] = mapped_column(default=list)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    action: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(64))
    object_id: Mapped[str] = mapped_column(String(64), default="")
    before: Mapped[dict[str, Any] | None] = mapped_column(Json)
    after: Mapped[dict[str, Any] | None] = mapped_column(Json)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
