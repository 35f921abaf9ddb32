"""Database tables (SQLAlchemy 2 declarative). Timestamps are unix seconds (ints), as on the wire.

Every table has an integer primary key (`pk`, or `seq` for events) that gives insertion order for
stable cursor pagination, and a public string `id` in OpenAI's shape. Only store/ modules read and write
these tables (the worker through store/queue.py); columns mean what store/wire.py makes of them on the
wire (docs/architecture.md).
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL wants BIGINT identity.
PK = BigInteger().with_variant(Integer(), "sqlite")

# Job statuses (the SDK's Literal plus "paused").
VALIDATING_FILES = "validating_files"
QUEUED = "queued"
RUNNING = "running"
PAUSED = "paused"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
TERMINAL_STATUSES = (SUCCEEDED, FAILED, CANCELLED)
ACTIVE_STATUSES = (VALIDATING_FILES, QUEUED, RUNNING, PAUSED)


class Base(DeclarativeBase):
    pass


class Organization(Base):
    __tablename__ = "organizations"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    """org-…; what jobs report as organization_id."""
    name: Mapped[str] = mapped_column(String(64), unique=True)
    """Human name ("personal"); appears in fine-tuned model names ft:<base>:<name>:…"""
    created_at: Mapped[int] = mapped_column(BigInteger)


class ApiKey(Base):
    __tablename__ = "api_keys"

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    org_id: Mapped[str] = mapped_column(String(64), ForeignKey("organizations.id"), index=True)
    name: Mapped[str | None] = mapped_column(String(128))
    prefix: Mapped[str] = mapped_column(String(32))
    """The first characters of the key, shown by `tunery keys list` (the key itself is never stored)."""
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    """sha256 hex of the full key."""
    created_at: Mapped[int] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger)


class File(Base):
    __tablename__ = "files"
    __table_args__ = (Index("ix_files_org_pk", "org_id", "pk"),)

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    org_id: Mapped[str] = mapped_column(String(64), ForeignKey("organizations.id"))
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    """uploaded | processed | error"""
    status_details: Mapped[str | None] = mapped_column(Text)
    path: Mapped[str] = mapped_column(Text)
    """Blob location (absolute); named by the file id, never by the user's filename."""
    validation: Mapped[dict | None] = mapped_column(JSON)
    """The data toolkit's ValidationReport.to_dict() for purpose fine-tune (format, counts, problems)."""


class FineTuningJob(Base):
    __tablename__ = "fine_tuning_jobs"
    __table_args__ = (Index("ix_jobs_org_pk", "org_id", "pk"), Index("ix_jobs_status", "status"))

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    org_id: Mapped[str] = mapped_column(String(64), ForeignKey("organizations.id"))
    model: Mapped[str] = mapped_column(String(1024))
    """The model as requested (may be an alias such as gpt-4o-mini)."""
    base_model: Mapped[str] = mapped_column(String(1024))
    """The resolved registry name (tunery.models.resolve(model).name) the trainer loads."""
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64))
    suffix: Mapped[str | None] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(BigInteger)
    hyperparameters: Mapped[dict] = mapped_column(JSON)
    """Requested: {n_epochs, batch_size, learning_rate_multiplier[, beta]}, each "auto" or a number."""
    resolved_hyperparameters: Mapped[dict | None] = mapped_column(JSON)
    """Numbers once the trainer resolved "auto" (written by the worker)."""
    method: Mapped[dict] = mapped_column(JSON)
    """{"type": "supervised"|"dpo", "<type>": {"hyperparameters": {...}}} as requested."""
    metadata_: Mapped[dict | None] = mapped_column("metadata", JSON)
    integrations: Mapped[list | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(32))
    error: Mapped[dict | None] = mapped_column(JSON)
    """{code, message, param} when failed."""
    fine_tuned_model: Mapped[str | None] = mapped_column(String(1200))
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger)
    estimated_finish: Mapped[int | None] = mapped_column(BigInteger)
    result_files: Mapped[list] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(BigInteger)
    started_at: Mapped[int | None] = mapped_column(BigInteger)
    finished_at: Mapped[int | None] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(256))
    lease_expires_at: Mapped[int | None] = mapped_column(BigInteger)
    output_dir: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[int | None] = mapped_column(BigInteger)


class FineTuningJobEvent(Base):
    __tablename__ = "fine_tuning_job_events"
    __table_args__ = (Index("ix_events_job_seq", "job_id", "seq"),)

    seq: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    """Monotonic; events list newest first by seq."""
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(String(64), ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"))
    created_at: Mapped[int] = mapped_column(BigInteger)
    level: Mapped[str] = mapped_column(String(8))
    """info | warn | error"""
    message: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(16))
    """message | metrics"""
    data: Mapped[dict | None] = mapped_column(JSON)


class FineTuningJobCheckpoint(Base):
    __tablename__ = "fine_tuning_job_checkpoints"
    __table_args__ = (Index("ix_ckpt_job_pk", "job_id", "pk"),)

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(String(64), ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"))
    created_at: Mapped[int] = mapped_column(BigInteger)
    step_number: Mapped[int] = mapped_column(Integer)
    fine_tuned_model_checkpoint: Mapped[str] = mapped_column(String(1300), index=True)
    metrics: Mapped[dict] = mapped_column(JSON)
    path: Mapped[str] = mapped_column(Text)


class Model(Base):
    __tablename__ = "models"
    __table_args__ = (Index("ix_models_org_pk", "org_id", "pk"),)

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(1200), unique=True)
    """ft:<base>:<org>:<suffix>:<uid>"""
    org_id: Mapped[str] = mapped_column(String(64), ForeignKey("organizations.id"))
    created_at: Mapped[int] = mapped_column(BigInteger)
    base_model: Mapped[str] = mapped_column(String(1024))
    job_id: Mapped[str | None] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)


class Guard(Base):
    """A chat model bound to a topic classifier (issue #15): requests below the threshold get the refusal."""

    __tablename__ = "guards"
    __table_args__ = (UniqueConstraint("org_id", "model", name="uq_guards_org_model"),)

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(String(64), ForeignKey("organizations.id"))
    model: Mapped[str] = mapped_column(String(1200))
    """The guarded chat model, as requests name it."""
    classifier: Mapped[str] = mapped_column(String(1200))
    """A completions model answering " yes"/" no" (a discriminator fine-tune)."""
    threshold: Mapped[float] = mapped_column(Float)
    """P(positive label) below this → the refusal."""
    refusal: Mapped[str] = mapped_column(Text)
    separator: Mapped[str] = mapped_column(Text)
    prompt_template: Mapped[str] = mapped_column(Text)
    """Contains {question}; the classifier prompt is the filled template + separator."""
    positive_label: Mapped[str] = mapped_column(String(64))
    check_answer: Mapped[bool] = mapped_column(Boolean, default=False)
    answer_template: Mapped[str] = mapped_column(Text)
    """Contains {answer} (and may contain {question}); used when check_answer is on."""
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class GuardDecision(Base):
    """One classifier verdict on a guarded request (the question, or the produced answer)."""

    __tablename__ = "guard_decisions"
    __table_args__ = (Index("ix_guard_decisions_org_model", "org_id", "model", "pk"),)

    pk: Mapped[int] = mapped_column(PK, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(String(64), ForeignKey("organizations.id"))
    model: Mapped[str] = mapped_column(String(1200))
    created_at: Mapped[int] = mapped_column(BigInteger)
    stage: Mapped[str] = mapped_column(String(16))
    """question | answer"""
    score: Mapped[float] = mapped_column(Float)
    """P(positive label) read from the classifier's logprobs."""
    allowed: Mapped[bool] = mapped_column(Boolean)
    text: Mapped[str] = mapped_column(Text)
    """The classified text, cut to 500 characters (for reviewing declines)."""
